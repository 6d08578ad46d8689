"""Static int8 quantisation (export/quantize.py), its calibration rollouts (export/calibration.py) and
the `onnxruntime-int8` backend: a verified graph beside policy.onnx, close to fp32, refused when changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from vla_fakes import export_random_policy

from export.calibration import CALIBRATION_SEED_BASE, FeedTap, calibration_feeds
from export.metadata import INT8_ONNX, METADATA_FILE, ExportError, read_metadata
from export.ort_policy import OrtInt8Policy, OrtPolicy
from export.quantize import MIN_SAMPLES, quantize_export
from lapa.action import fake_state
from lapa.file_hash import file_sha256
from policy_server.backends import load_backend

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("torch_one_thread")]

# the shipped model's architecture (conv stem, FiLM, word tokens, state history, l1 head), smaller
SMALL = dict(image_size=32, dim=64, depth=2, heads=2, text_dim=32)


@pytest.fixture(scope="module")
def export_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    export_random_policy(root, "tabletop", seed=0, parity_samples=8, **SMALL)
    return root


def _copy(export_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_root / "export", tmp_path / "export"))


def _random_feeds(export_dir: Path, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    meta = read_metadata(export_dir)
    rng = np.random.default_rng(seed)
    text_dim = meta.raw["graphs"]["policy.onnx"]["inputs"]["text_emb"]["shape"][1]
    feeds = []
    for i in range(n):
        text = rng.normal(size=(1, text_dim)).astype(np.float32)
        feeds.append({"image": rng.integers(0, 256, (1, *meta.image_size, 3), dtype=np.uint8),
                      "text_emb": text / np.linalg.norm(text),
                      "state": fake_state(1, seed=seed + i, dim=meta.state_dim)})
    return feeds


def test_quantize_export_writes_a_verified_int8_graph_close_to_fp32(export_root, tmp_path):
    export_dir = _copy(export_root, tmp_path)
    section = quantize_export(export_dir, _random_feeds(export_dir, 40), {"source": "random"}, log=lambda _m: None)
    meta = read_metadata(export_dir)  # verifies every listed file's sha256, the int8 graph's too
    assert meta.files[INT8_ONNX] == file_sha256(export_dir / INT8_ONNX)
    doc = json.loads((export_dir / METADATA_FILE).read_text())
    assert doc["int8"] == section and section["calibration"]["used"] == 32 and section["calibration"]["held_out"] == 8
    agree = section["agreement_with_fp32"]
    # measured on random models of this size (seeds 0 and 1): mean difference 0.0025-0.0031, max 0.013
    assert agree["samples"] == 8 and agree["score_abs_diff_mean"] <= 0.02
    assert agree["gripper_agreement"] >= 0.9
    assert not list(export_dir.glob(".int8-*"))  # the temporary directory is gone
    # attention products (scores, weights x values) stay float32; the weight products are quantised
    kept = section["float32_nodes"]
    for block in range(SMALL["depth"]):
        assert sum(f"blocks.{block}/attn/MatMul" in name for name in kept) == 2, kept
    assert not any("qkv" in name or "mlp" in name or "convs" in name for name in kept)
    fp32, int8 = OrtPolicy(export_dir, threads=1), OrtPolicy(export_dir, threads=1, precision="int8")
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "instruction": "push the red block",
           "state": fake_state(1, seed=5, dim=meta.state_dim)[0]}
    a, b = fp32.infer(obs), int8.infer(obs)
    assert b["actions"].shape == a["actions"].shape == (4, 7) and b["actions"].dtype == np.float32
    assert np.abs(a["actions"] - b["actions"]).max() < 0.05
    assert int8.metadata["precision"] == "int8" and int8.metadata["providers"] == ["CPUExecutionProvider"]
    assert fp32.metadata["precision"] == "fp32"


def test_an_int8_graph_changed_after_quantisation_is_refused(export_root, tmp_path):
    export_dir = _copy(export_root, tmp_path)
    quantize_export(export_dir, _random_feeds(export_dir, 12), {"source": "random"}, log=lambda _m: None)
    with open(export_dir / INT8_ONNX, "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ExportError, match="sha256 differs"):
        OrtPolicy(export_dir, precision="int8")


def test_int8_without_the_graph_says_how_to_build_it(export_root):
    with pytest.raises(ExportError, match="lapa export int8"):
        OrtPolicy(export_root / "export", precision="int8")
    with pytest.raises(ExportError, match="precision must be one of"):
        OrtPolicy(export_root / "export", precision="int4")


def test_too_few_calibration_observations_are_refused(export_root, tmp_path):
    export_dir = _copy(export_root, tmp_path)
    with pytest.raises(ExportError, match=f"at least {MIN_SAMPLES}"):
        quantize_export(export_dir, _random_feeds(export_dir, MIN_SAMPLES - 1), {}, log=lambda _m: None)
    assert INT8_ONNX not in read_metadata(export_dir).files and not (export_dir / INT8_ONNX).exists()


def test_a_metadata_file_name_outside_the_export_directory_is_refused(export_root, tmp_path):
    export_dir = _copy(export_root, tmp_path)
    doc = json.loads((export_dir / METADATA_FILE).read_text())
    doc["files"]["../escape.onnx"] = "0" * 64
    (export_dir / METADATA_FILE).write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="not a plain name"):
        read_metadata(export_dir)


def test_feed_tap_keeps_every_nth_call_and_passes_results_through():
    class Session:
        def run(self, names, feeds):
            return [feeds["x"] * 2]

    tap = FeedTap(Session(), every=3)
    outs = [tap.run(["y"], {"x": np.array([i])})[0][0] for i in range(7)]
    assert outs == [0, 2, 4, 6, 8, 10, 12]
    assert tap.calls == 7 and [int(f["x"][0]) for f in tap.feeds] == [2, 5]
    with pytest.raises(ValueError):
        FeedTap(Session(), every=0)


def test_calibration_rollouts_record_what_the_policy_is_fed(export_root):
    feeds, info = calibration_feeds(export_root / "export", suite="reach", episodes=1, every=2, progress=False)
    meta = read_metadata(export_root / "export")
    assert info["seed_base"] == CALIBRATION_SEED_BASE and info["samples"] == len(feeds) == info["model_calls"] // 2
    assert len(feeds) >= 5
    for f in feeds:
        assert f["image"].shape == (1, 32, 32, 3) and f["image"].dtype == np.uint8
        assert f["state"].shape == (1, meta.state_dim)
    # the camera moves and the arm moves: not one frame or one state repeated
    assert len({f["image"].tobytes() for f in feeds}) > 1 and len({f["state"].tobytes() for f in feeds}) > 1


def test_the_int8_backend_builds_its_graph_once_and_serves_it(export_root, tmp_path):
    export_dir = _copy(export_root, tmp_path)
    policy = load_backend("onnxruntime-int8", export_dir, threads=1)
    assert isinstance(policy, OrtInt8Policy) and policy.metadata["backend"] == "onnxruntime-int8"
    built = read_metadata(export_dir).files[INT8_ONNX]
    section = json.loads((export_dir / METADATA_FILE).read_text())["int8"]
    assert section["calibration"]["suite"] == "default" and section["calibration"]["seed_base"] == CALIBRATION_SEED_BASE
    again = load_backend("onnxruntime-int8", export_dir, threads=1)  # reused, not rebuilt
    assert read_metadata(export_dir).files[INT8_ONNX] == built and again.metadata["precision"] == "int8"
    reply = policy.infer({"image": np.zeros((32, 32, 3), np.uint8), "instruction": "go",
                          "state": fake_state(1, dim=policy.state_dim)[0]})
    assert reply["actions"].shape == (4, 7) and np.isfinite(reply["actions"]).all()


def test_evaluation_through_onnxruntime_matches_torch_episode_for_episode(export_root):
    """`lapa eval --backend onnxruntime` runs the export in closed loop: the same outcomes, steps and
    final gripper positions as the checkpoint in torch (the export is at parity)."""
    from lapa.eval.closed_loop import evaluate_checkpoint
    from lapa.policy.text_encoder import TextEncoder

    kwargs = dict(suite="reach", episodes=2, chunk_mode="ensemble", render_size=64, progress=False)
    torch_run = evaluate_checkpoint(export_root / "ckpt", text_encoder=TextEncoder.load(export_root / "text_encoder"),
                                    **kwargs)
    ort_run = evaluate_checkpoint(export_root / "ckpt", policy=OrtPolicy(export_root / "export", threads=1), **kwargs)
    assert torch_run["backend"] == "torch" and ort_run["backend"] == "onnxruntime"
    for a, b in zip(torch_run["episodes"], ort_run["episodes"], strict=True):
        assert (a["seed"], a["success"], a["steps"]) == (b["seed"], b["success"], b["steps"])
        assert a["target_xy_m"] == pytest.approx(b["target_xy_m"], abs=1e-3)


def test_requantising_replaces_the_graph_and_its_listed_hash(export_root, tmp_path):
    export_dir = _copy(export_root, tmp_path)
    quantize_export(export_dir, _random_feeds(export_dir, 12, seed=0), {"source": "first"}, log=lambda _m: None)
    first = read_metadata(export_dir).files[INT8_ONNX]
    section = quantize_export(export_dir, _random_feeds(export_dir, 12, seed=1), {"source": "second"},
                              log=lambda _m: None)
    meta = read_metadata(export_dir)  # hashes verified
    assert section["calibration"]["source"] == "second" and meta.files[INT8_ONNX] != first
