"""Closed-loop evaluation: Wilson intervals, seeds, and a real run on a tiny checkpoint (chunk execution:
test_eval_chunking.py)."""

from __future__ import annotations

import json

import pytest
from vla_fakes import FakeEncoder, save_random_action_vla

from lapa.cli import main as lapa_main
from lapa.errors import UserError
from lapa.eval.closed_loop import (
    EVAL_SEED_BASE,
    check_disjoint_seeds,
    eval_seeds,
    evaluate_checkpoint,
    wilson_interval,
)
from lapa.sim.tasks import FAMILIES

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny action model on 32x32 images (it will fail its tasks: that is fine here)."""
    return save_random_action_vla(tmp_path_factory.mktemp("eval") / "policy",
                                  extra={"provenance": {"stage": "finetune", "init": "scratch", "datasets": []}},
                                  image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=2, num_bins=16)


# ----------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                       (1, 20, 0.0089, 0.2361), (30, 40, 0.5981, 0.8582)])
def test_wilson_interval_matches_reference_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    p = k / n
    assert got[0] <= p <= got[1]


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    narrow, wide = wilson_interval(50, 100), wilson_interval(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


# ----------------------------------------------------------------------------- seeds


def test_eval_seeds_are_fixed_and_far_from_training_seeds():
    seeds = [s for f in range(4) for s in eval_seeds(f, 50)]
    assert len(set(seeds)) == 200 and min(seeds) == EVAL_SEED_BASE
    assert eval_seeds(1, 3) == eval_seeds(1, 3)


def test_overlapping_training_seeds_are_refused(tmp_path, checkpoint):
    import shutil

    data = tmp_path / "data"
    (data / "meta").mkdir(parents=True)
    (data / "meta" / "lapa_recording.json").write_text(json.dumps({"episodes_meta": [{"seed": EVAL_SEED_BASE + 1}]}))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    doc = json.loads((ckpt / "config.json").read_text())
    doc["provenance"]["datasets"] = [str(data)]
    (ckpt / "config.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="seeds"):
        check_disjoint_seeds(ckpt, 1, 5, EVAL_SEED_BASE)
    check_disjoint_seeds(ckpt, 1, 5, EVAL_SEED_BASE + 1000)


# ----------------------------------------------------------------------------- real rollouts


def test_summary_medians_each_familys_own_progress_and_the_common_keys_overall():
    from lapa.eval.closed_loop import EpisodeOutcome, summarize

    rows = [EpisodeOutcome("push", 1, "push_red_left", "x", False, 60, progress={"along_m": 0.02, "sideways_m": 0.0}),
            EpisodeOutcome("push", 2, "push_red_left", "x", False, 60, progress={"along_m": 0.04, "sideways_m": 0.01}),
            EpisodeOutcome("pick", 3, "pick_red", "x", False, 60, progress={"lift_m": 0.0}),
            EpisodeOutcome("reach", 4, "reach_red", "x", True, 10)]
    summary = summarize(rows, ("reach", "push", "pick"))
    assert summary["tasks"]["push"]["failed_median_progress"] == pytest.approx({"along_m": 0.03, "sideways_m": 0.005})
    assert summary["tasks"]["pick"]["failed_median_progress"] == {"lift_m": 0.0}
    assert summary["tasks"]["reach"]["failed_median_progress"] == {}
    assert summary["overall"]["failed_median_progress"] == {}, "push and pick share no measure"


def test_eval_runs_one_episode_per_task_and_reports(checkpoint, tmp_path):
    result = evaluate_checkpoint(checkpoint, "default", 1, text_encoder=FakeEncoder(), videos=tmp_path / "videos",
                                 max_videos_per_task=1, progress=False)
    assert {"checkpoint", "suite", "instructions", "tasks", "overall", "episodes", "seconds", "chunk_mode",
            "execute_n", "ensemble_decay", "success", "chunk_size", "render_size", "seed_base"} <= set(result)
    assert result["instructions"] == "seen" and result["render_size"] == 32
    assert (result["chunk_mode"], result["execute_n"], result["ensemble_decay"]) == ("first_n", 1, 0.5)
    assert result["success"] == {f: block["success_rate"] for f, block in result["tasks"].items()}
    assert result["policy_calls"] == sum(e["steps"] for e in result["episodes"]), "first_n 1 asks every step"
    assert set(result["tasks"]) == {"reach", "push", "pick", "put"}
    for family, block in result["tasks"].items():
        assert block["episodes"] == 1 and 0 <= block["success_rate"] <= 1
        lo, hi = block["ci95"]
        assert 0 <= lo <= block["success_rate"] <= hi <= 1
        assert block["mean_steps"] <= FAMILIES[family].max_steps
    assert result["overall"]["episodes"] == 4 and len(result["episodes"]) == 4
    templates = {f: [t.split("{")[0] for t in FAMILIES[f].train_templates] for f in FAMILIES}
    assert all(any(e["instruction"].startswith(p) for p in templates[e["family"]]) for e in result["episodes"])
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4


def test_cli_eval_held_out_writes_json(checkpoint, tmp_path, monkeypatch):
    import lapa.policy.train as train

    monkeypatch.setattr(train, "load_text_encoder", lambda encoder=None: encoder or FakeEncoder())
    out = tmp_path / "eval.json"
    assert lapa_main(["eval", "--ckpt", str(checkpoint), "--suite", "reach", "--episodes", "1", "--json", str(out),
                      "--held-out", "--execute-n", "2"]) == 0
    doc = json.loads(out.read_text())
    assert doc["instructions"] == "unseen" and doc["command"].startswith("lapa eval")
    assert (doc["chunk_mode"], doc["execute_n"], doc["ensemble_decay"]) == ("first_n", 2, 0.5)
    assert "--chunk-mode first_n --execute-n 2 --ensemble-decay 0.5" in doc["command"]
    assert set(doc["success"]) == {"reach"} and 0 <= doc["success"]["reach"] <= 1
    held_out = [t.split("{")[0] for t in FAMILIES["reach"].held_out_templates]
    assert any(doc["episodes"][0]["instruction"].startswith(p) for p in held_out)
    assert doc["policy_calls"] == -(-doc["episodes"][0]["steps"] // 2), "first_n 2 asks once per chunk of 2"


def test_eval_ensemble_asks_every_step(checkpoint):
    result = evaluate_checkpoint(checkpoint, "reach", 1, text_encoder=FakeEncoder(), chunk_mode="ensemble",
                                 ensemble_decay=0.0, progress=False)
    assert (result["chunk_mode"], result["ensemble_decay"]) == ("ensemble", 0.0)
    assert result["policy_calls"] == result["episodes"][0]["steps"]


def test_help_texts_render(capsys):
    for argv in (["--help"], ["eval", "--help"], ["train", "--help"], ["experiment", "run", "--help"]):
        with pytest.raises(SystemExit) as exc:
            lapa_main(argv)
        assert exc.value.code == 0
    assert "95% intervals" in " ".join(capsys.readouterr().out.split())


def test_eval_gets_the_serving_backends_from_the_command_line(monkeypatch, checkpoint):
    """`lapa eval --backend` loads the backend through lapa/cli.py (the serving layer sits above eval)."""
    from lapa.cli import build_parser, serving_policy

    args = build_parser().parse_args(["eval", "--ckpt", "x", "--backend", "onnxruntime-int8"])
    assert args.load_policy is serving_policy and args.backend == "onnxruntime-int8"
    seen = {}

    class Stop(Exception):
        pass

    def fake_loader(backend, model_dir, threads):
        seen.update(backend=backend, model_dir=model_dir, threads=threads)
        raise Stop

    args = build_parser().parse_args(["eval", "--ckpt", str(checkpoint), "--backend", "onnxruntime", "--threads", "1"])
    args.load_policy = fake_loader
    with pytest.raises(Stop):
        args.func(args)
    assert seen == {"backend": "onnxruntime", "model_dir": checkpoint, "threads": 1}
    del args.load_policy
    with pytest.raises(UserError, match="needs the `lapa` command line"):
        args.func(args)
