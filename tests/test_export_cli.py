"""`lapa export onnx|tensorrt` and `lapa bench model` from the command line; clear errors, lazy TensorRT."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.random_models import random_checkpoint, random_text_encoder
from lapa.cli import main

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("torch_one_thread")]

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=3, text_dim=32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return (random_checkpoint(root / "ckpt", preset="tiny", **SMALL),
            random_text_encoder(root / "text_encoder", hidden=32))


def test_export_onnx(inputs, tmp_path, capsys):
    ckpt, text = inputs
    out = tmp_path / "export"
    rc = main(["export", "onnx", "--ckpt", str(ckpt), "--out", str(out), "--exporter", "legacy",
               "--text-encoder", str(text), "--parity-samples", "16", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["parity"] == {"policy": True, "text_encoder": True} and summary["softmax_fp32"]
    assert {p.name for p in out.iterdir()} >= {"policy.onnx", "text_encoder.onnx", "tokenizer.json", "metadata.json"}
    # a second export replaces the first in place
    assert main(["export", "onnx", "--ckpt", str(ckpt), "--out", str(out), "--exporter", "legacy",
                 "--text-encoder", str(text), "--parity-samples", "4", "--no-fold"]) == 0


def test_export_onnx_errors_are_one_line(inputs, tmp_path, capsys):
    _ckpt, text = inputs
    rc = main(["export", "onnx", "--ckpt", str(text), "--out", str(tmp_path / "x"), "--text-encoder", str(text)])
    err = capsys.readouterr().err
    assert rc == 2 and "not a VLA checkpoint" in err and "Traceback" not in err


def test_tensorrt_without_tensorrt_says_what_to_install(tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    rc = main(["export", "tensorrt", "--onnx", str(tmp_path), "--out", str(tmp_path / "policy.plan"), "--fp16"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install tensorrt" in err and "NVIDIA GPU" in err


def test_tensorrt_modules_import_without_tensorrt_or_torch():
    code = ("import sys\n"
            "import export.tensorrt_build, export.trt_policy, export.cli\n"
            "assert 'tensorrt' not in sys.modules and 'torch' not in sys.modules\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_bench_model(tmp_path, capsys):
    out = tmp_path / "bench" / "model.json"
    rc = main(["bench", "model", "--json", str(out), "--runs", "5", "--warmup", "1", "--decoder-runs", "1",
               "--spaced-calls", "2", "--threads", "1", "--exporter", "legacy", "--tiny-text-encoder", "--no-variants"])
    assert rc == 0
    capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["benchmark"] == "model" and result["model"]["random_init"] is True
    assert result["eager_ms"] > 0 and result["ort_ms"] > 0
    assert result["ort_over_eager"] == pytest.approx(result["ort_ms"] / result["eager_ms"], rel=1e-3)
    assert result["flops"]["forward_flops"] > 0 and result["flops"]["matmul_peak_gflop_per_s"] > 0
    assert 0 < result["flops"]["ort"]["percent_of_matmul_peak"]
    assert result["served_graph"] == "ort_int8" and result["target_ort_over_eager"] == 0.4
    assert result["served_over_eager"] == pytest.approx(result["ort_int8_over_eager"], rel=1e-3)
    assert result["meets_target"] == (result["served_over_eager"] <= 0.4)
    assert set(result["at_10hz"]) == {"eager", "ort", "ort_int8"} and result["at_10hz"]["ort"]["runs"] == 2
    int8 = result["int8"]  # the static int8 graph, timed beside fp32
    ratio = int8["ort_int8_ms"] / result["eager_ms"]
    assert int8["ort_int8_over_eager"] == result["ort_int8_over_eager"] == pytest.approx(ratio, rel=1e-3)
    assert int8["ort_int8_ms"] == result["latency"]["ort_int8"]["median_ms"] > 0
    assert int8["quantization"]["calibration"]["samples"] >= 10 and int8["quantization"]["graph"] == "policy_int8.onnx"
    decoders = result["decoders"]
    assert decoders["passes_per_chunk"] == {"parallel": 1, "autoregressive": 28}
    assert decoders["autoregressive"]["per_action_ms"] > decoders["parallel"]["per_action_ms"]
    assert Path(result["histogram_png"]) == out.with_suffix(".png") and out.with_suffix(".png").stat().st_size > 0
