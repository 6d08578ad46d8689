"""`lapa laq train/label/inspect/eval` end to end on a tiny simulator dataset."""

import json

import numpy as np
import pytest

from lapa.cli import main as lapa_main
from lapa.laq.labels import LabelFileError, read_labels
from lapa.sim.record import record_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("laq")
    videos = root / "videos"
    robot = root / "robot"
    record_dataset("default", 4, videos, seed=1, no_actions=True, image_size=64, progress=False)
    record_dataset("default", 4, robot, seed=500, image_size=64, progress=False)
    return videos, robot


@pytest.fixture(scope="module")
def trained_run(datasets, tmp_path_factory):
    videos, robot = datasets
    run = tmp_path_factory.mktemp("run") / "laq"
    base = ["laq", "train", "--data", str(videos), str(robot), "--preset", "tiny", "--out", str(run),
            "--batch-size", "4", "--workers", "0", "--ckpt-every", "2"]
    assert lapa_main(base + ["--steps", "2"]) == 0
    assert lapa_main(base + ["--steps", "4", "--resume"]) == 0
    return run


def test_train_then_resume_continues_the_step_count(trained_run):
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert max(m["step"] for m in metrics) == 4
    assert (trained_run / "checkpoints" / "step_00000004").is_dir() or any(
        p.name.endswith("4") for p in (trained_run / "checkpoints").iterdir())
    assert list(trained_run.glob("*.png")), "training curves are plotted"


def test_train_refuses_an_existing_run_without_resume(trained_run, datasets, capsys):
    videos, _ = datasets
    code = lapa_main(["laq", "train", "--data", str(videos), "--out", str(trained_run), "--steps", "1",
                      "--workers", "0"])
    assert code == 2 and "resume" in capsys.readouterr().err


def test_label_file_format(trained_run, datasets, tmp_path):
    videos, robot = datasets
    out = tmp_path / "labels.parquet"
    assert lapa_main(["laq", "label", "--ckpt", str(trained_run), "--data", str(videos), "--out", str(out)]) == 0
    labels = read_labels(out)
    assert labels.codes.shape[1] == 4 and labels.codes.dtype == np.int64
    assert labels.codes.min() >= 0 and labels.codes.max() < 8
    assert len(labels) == len(labels.instructions) == len(labels.frame_index) > 0
    assert all(labels.gap == 6)  # 0.6 s at 10 fps
    assert labels.meta["codebook_size"] == 8 and len(labels.meta["laq_sha256"]) == 64
    assert all(isinstance(s, str) and s for s in labels.instructions)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(LabelFileError):
        read_labels(bad)


def test_eval_reports_the_issue_keys(trained_run, datasets, tmp_path):
    _, robot = datasets
    out = tmp_path / "eval.json"
    assert lapa_main(["laq", "eval", "--ckpt", str(trained_run), "--data", str(robot), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("psnr", "psnr_copy_baseline", "perplexity", "probe_accuracy", "chance_accuracy"):
        assert key in result
    assert len(result["perplexity"]) == 4 and all(1.0 <= p <= 8.0 + 1e-6 for p in result["perplexity"])
    assert 0.0 <= result["probe_accuracy"] <= 1.0 and 0.0 <= result["chance_accuracy"] <= 1.0


def test_inspect_writes_grid_rollout_and_histograms(trained_run, datasets, tmp_path):
    _, robot = datasets
    out = tmp_path / "inspect"
    assert lapa_main(["laq", "inspect", "--ckpt", str(trained_run), "--data", str(robot), "--out", str(out)]) == 0
    for name in ("code_grid.png", "rollout.mp4", "code_usage.png"):
        assert (out / name).stat().st_size > 1000


def test_not_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert lapa_main(["laq", "eval", "--ckpt", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "neither a checkpoint" in capsys.readouterr().err
