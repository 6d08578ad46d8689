"""`lapa bench latency`: its statistics, a quick run on a small random model (in-process stages, the
markdown table and the PNG), the int8 model's agreement with fp32, and the server's transport rows.

No timing assertions: the numbers live in the JSON and BENCHMARKS.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.latency import GROUPS, INT8_BIN_AGREEMENT_MIN, NO_GPU_REASON, int8_agreement, stage_stats
from lapa.cli import build_parser

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("torch_one_thread")]

IN_PROCESS = {"capture", "transport", "decode", "preprocess", "model", "postprocess", "safety", "command",
              "end-to-end", "model under load"}


def test_stage_stats_from_known_values():
    seconds = np.arange(1, 101) / 1000.0  # 1 .. 100 ms
    s = stage_stats(seconds)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["max_ms"] == pytest.approx(100.0)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["runs"] == 100
    assert stage_stats([0.002])["p99_ms"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        stage_stats([])


def _ckpt(tmp_path, preset):
    from bench.random_models import random_checkpoint

    return random_checkpoint(tmp_path / "ckpt", preset=preset, text_dim=32)


def _run(tmp_path, ckpt, *extra):
    out = tmp_path / "latency.json"
    args = build_parser().parse_args(["bench", "latency", "--ckpt", str(ckpt), "--quick", "--tiny-text-encoder",
                                      "--exporter", "legacy", "--threads", "1", "--json", str(out), *extra])
    assert args.func(args) == 0
    return out, json.loads(out.read_text())


def test_quick_run_without_server_has_every_in_process_stage(tmp_path):
    out, r = _run(tmp_path, _ckpt(tmp_path, "tabletop"), "--no-server")
    groups = {row["group"] for row in r["stages"]}
    assert groups == IN_PROCESS
    assert [GROUPS.index(row["group"]) for row in r["stages"]] == sorted(GROUPS.index(row["group"])
                                                                           for row in r["stages"])
    names = {row["stage"] for row in r["stages"]}
    for wanted in ("render 128 px", "encode raw", "encode JPEG", "torch eager", "ONNX Runtime fp32",
                   "ONNX Runtime int8", "in-process", "ChunkExecutor ensemble", "SafetyFilter", "franky velocity"):
        assert any(wanted in n for n in names), wanted
    for row in r["stages"]:
        if "skipped" in row:
            assert row["group"] == "model" and row["skipped"] == NO_GPU_REASON  # only the CUDA/TensorRT rows
            continue
        assert row["runs"] == 6 and row["threads"] >= 1 and row["backend"]
        assert 0 <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert not any(row["group"] == "transport" and "HTTP" in row["stage"] for row in r["stages"])
    assert r["server"] == {"skipped": "--no-server"}
    assert r["summary"]["ort_over_eager"] > 0 and "server_overhead_p50_ms" not in r["summary"]
    assert r["int8"]["default"] is True and "closed-loop" in r["int8"]["note"]
    assert r["int8"]["quantization"]["graph"] == "policy_int8.onnx"
    assert 0 <= r["int8"]["bin_agreement"] <= 1
    for b in ("1", "8", "32"):
        for engine in ("torch", "ort"):
            assert r["throughput"][b][engine]["samples_per_s"] > 0
    assert r["throughput"]["matmul_peak_gflop_per_s"] > 0
    assert r["under_load"]["loaded_p50_ms"] > 0
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| ") >= len(r["stages"]) and "| capture |" in md and "| command |" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _int8_sessions(tmp_path, preset, seed):
    """fp32 and the served static int8 graph (calibrated on the random model's own rollouts)."""
    from vla_fakes import export_random_policy

    from export.ort_policy import OrtPolicy
    from export.quantize import quantize_from_rollouts
    from lapa.policy.checkpoint_io import read_vla_config

    export = export_random_policy(tmp_path, preset, seed=seed, text_dim=32)
    quantize_from_rollouts(export, episodes=1, progress=False, log=lambda _m: None)
    fp32 = OrtPolicy(export, threads=1).session
    int8 = OrtPolicy(export, threads=1, precision="int8").session
    _, config, _ = read_vla_config(tmp_path / "ckpt")
    return fp32, int8, config


def test_int8_bins_agree_with_fp32_on_a_bins_model(tmp_path):
    """A random tiny bins-head model, the static int8 graph calibrated on its own rollouts: 92-95% of
    the bins agreed on random inputs (64, seeds 0 and 1)."""
    from lapa.action import fake_state

    fp32, int8, config = _int8_sessions(tmp_path, "tiny", seed=0)
    agreement = int8_agreement(fp32, int8, config, 64, fake_state)
    assert agreement["bin_agreement"] >= INT8_BIN_AGREEMENT_MIN  # measured 0.945
    assert agreement["samples"] == 64


def test_int8_actions_agree_with_fp32_on_an_l1_model(tmp_path):
    """A random tabletop (l1 head, proprio state) model: actions within 0.007-0.022 of fp32 on random
    inputs (64, seeds 0 and 1; the random model's actions have a std of about 0.01; random images lie
    outside the calibration's rollout frames), so within 0.05 here; its bins (fitted on actions of
    std 0.01) are fine enough that within-one-bin agreement was 0.70-0.74."""
    from lapa.action import fake_state

    fp32, int8, config = _int8_sessions(tmp_path, "tabletop", seed=0)
    agreement = int8_agreement(fp32, int8, config, 64, fake_state)
    assert agreement["action_abs_diff_max"] <= 0.05
    assert agreement["bin_within_one"] >= 0.6


@pytest.mark.timeout(180)
def test_quick_run_with_the_server_has_the_transport_rows(tmp_path):
    _, r = _run(tmp_path, _ckpt(tmp_path, "tiny"))
    transport = [row for row in r["stages"] if row["group"] == "transport"]
    names = " ".join(row["stage"] for row in transport)
    for wanted in ("in-process", "HTTP msgpack, raw image", "HTTP msgpack, JPEG image", "WebSocket msgpack, raw image",
                   "WebSocket msgpack, JPEG image"):
        assert wanted in names, wanted
    assert "OpenVLA JSON /act (round trip - model_ms)" in names  # a model without a state: answered 200
    assert r["server"]["openvla"]["statuses"] == [200]
    for key in ("http", "ws", "http_jpeg", "ws_jpeg", "openvla"):
        assert r["server"][key]["overhead_p50_ms"] >= 0
    assert set(r["summary"]["server_overhead_p50_ms"]) == {"http", "ws", "http_jpeg", "ws_jpeg", "openvla"}
