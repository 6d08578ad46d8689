"""Static int8 quantisation of an export's policy.onnx: policy_int8.onnx beside it.

ONNX Runtime's QDQ format: QuantizeLinear / DequantizeLinear pairs that its CPU provider fuses into
QLinearMatMul, QLinearConv and QGemm kernels (VNNI where the CPU has it). Weights are int8 per
output channel; activations uint8, with ranges calibrated (min-max) on observations the fp32 policy
meets in closed loop (export/calibration.py). Only the arithmetic-heavy operators are quantised
(QUANTIZED_OPS) with a constant operand, the weights; products of two activations (attention,
word pooling, keypoints), norms, softmax, GELU and the action decoding stay float32.

Why static: dynamic quantisation measures every activation's range at every call, and on this
model's small matrices that costs more than the int8 arithmetic saves (bench/latency.py's int8 row
is slower than fp32). Static ranges are fixed here, once.

A fifth of the calibration observations is held out to measure the agreement with fp32 (normalised
actions, gripper command, bins), recorded in metadata.json under `int8`. Whether the int8 graph is
good enough is decided in closed loop (`lapa eval --backend onnxruntime-int8`), not by this number.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import (
    ACTIONS_OUTPUT,
    BINS_OUTPUT,
    INT8_ONNX,
    METADATA_FILE,
    POLICY_ONNX,
    ExportError,
    read_metadata,
    write_metadata,
)
from lapa.file_hash import file_sha256

QUANTIZED_OPS = ("MatMul", "Conv", "Gemm")
HOLDOUT_EVERY = 5  # every fifth calibration observation measures the agreement instead
MIN_SAMPLES = 10
GRIPPER_OPEN = 0.5  # actions[..., 6] >= 0.5: open (export/metadata.py's action_decoding)


class _FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feeds = self.get_next()
        if feeds is None:
            raise StopIteration
        return feeds


def agreement(fp32: Any, int8: Any, feeds: Sequence[dict[str, np.ndarray]], score_output: str) -> dict[str, Any]:
    """Two sessions' outputs on the same feeds: how far the int8 graph is from fp32."""
    names = [ACTIONS_OUTPUT, BINS_OUTPUT, score_output]
    score_diff, gripper_same, bins_same, action_diff = [], [], [], []
    for f in feeds:
        a32, b32, s32 = fp32.run(names, f)
        a8, b8, s8 = int8.run(names, f)
        score_diff.append(np.abs(s32 - s8).ravel())
        action_diff.append(np.abs(a32[..., :6] - a8[..., :6]).ravel())
        gripper_same.append(((a32[..., 6] >= GRIPPER_OPEN) == (a8[..., 6] >= GRIPPER_OPEN)).ravel())
        bins_same.append((b32 == b8).ravel())
    score = np.concatenate(score_diff)
    return {"samples": len(feeds), "score_output": score_output,
            "score_abs_diff_mean": round(float(score.mean()), 5),
            "score_abs_diff_p99": round(float(np.percentile(score, 99)), 5),
            "score_abs_diff_max": round(float(score.max()), 5),
            "motion_abs_diff_mean": round(float(np.concatenate(action_diff).mean()), 6),
            "gripper_agreement": round(float(np.concatenate(gripper_same).mean()), 4),
            "bin_agreement": round(float(np.concatenate(bins_same).mean()), 4)}


def float_nodes(model_path: Path, keep_products: bool, name_parts: Sequence[str]) -> list[str]:
    """Names of the QUANTIZED_OPS nodes to keep in float32: products of two activations (attention
    scores and weights, word pooling, keypoint expectation: MatMuls without a constant operand) when
    `keep_products`, and nodes whose name contains any of `name_parts`."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    keep = []
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        product = node.op_type == "MatMul" and not any(i in constants for i in node.input)
        if (keep_products and product) or any(part in node.name for part in name_parts):
            keep.append(node.name)
    return keep


def quantize_export(export_dir: str | os.PathLike, feeds: Sequence[dict[str, np.ndarray]],
                    calibration: dict[str, Any], log=print, activation_products: bool = False,
                    keep_float: Sequence[str] = ()) -> dict[str, Any]:
    """policy.onnx + calibration feeds -> policy_int8.onnx, listed in metadata.json (its sha256 and
    an `int8` section: method, calibration, agreement with fp32). Returns that section.

    Products of two activations stay float32 unless `activation_products`: quantising the attention
    weights to 8 bits cost 20 points of success on put (experiments/int8/README.md). `keep_float`:
    parts of node names to keep in float32 as well (see float_nodes)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.ort_policy import open_session, session_options

    export_dir = Path(export_dir)
    meta = read_metadata(export_dir)
    if len(feeds) < MIN_SAMPLES:
        raise ExportError(f"int8 calibration needs at least {MIN_SAMPLES} observations, got {len(feeds)}")
    held_out = list(feeds[HOLDOUT_EVERY - 1::HOLDOUT_EVERY])
    calib = [f for i, f in enumerate(feeds) if (i + 1) % HOLDOUT_EVERY]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=export_dir, prefix=".int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / INT8_ONNX
        quant_pre_process(str(export_dir / POLICY_ONNX), str(pre), skip_symbolic_shape=True)
        excluded = float_nodes(pre, keep_products=not activation_products, name_parts=keep_float)
        quantize_static(str(pre), str(out), _FeedReader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded,
                        calibrate_method=CalibrationMethod.MinMax)
        cpu = ["CPUExecutionProvider"]
        fp32 = open_session(export_dir / POLICY_ONNX, session_options(1), cpu)
        int8 = open_session(out, session_options(1), cpu)
        agree = agreement(fp32, int8, held_out, meta.score_output)
        _list_int8(export_dir, None)  # a crash between the two writes leaves an unlisted file, never a wrong hash
        os.replace(out, export_dir / INT8_ONNX)
    section = {"graph": INT8_ONNX, "format": "QDQ (onnxruntime.quantization.quantize_static)",
               "ops": list(QUANTIZED_OPS), "weights": "int8, per output channel", "activations": "uint8, min-max",
               "float32_nodes": excluded,
               "calibration": {**calibration, "used": len(calib), "held_out": len(held_out)},
               "agreement_with_fp32": agree, "seconds": round(time.perf_counter() - start, 1)}
    _list_int8(export_dir, section)
    log(f"[export] {export_dir / INT8_ONNX}: int8 graph, agreement with fp32 on {agree['samples']} held-out "
        f"observations: normalised actions within {agree['score_abs_diff_mean']:.4f} on average, "
        f"gripper {agree['gripper_agreement']:.1%}")
    return section


def _list_int8(export_dir: Path, section: dict[str, Any] | None) -> None:
    """List the int8 graph in metadata.json with its hash and `section`, or (None) unlist it."""
    doc = json.loads((export_dir / METADATA_FILE).read_text())
    if section is None:
        doc["files"].pop(INT8_ONNX, None)
        doc.pop("int8", None)
    else:
        doc["files"][INT8_ONNX] = file_sha256(export_dir / INT8_ONNX)
        doc["int8"] = section
    write_metadata(export_dir, doc)


def quantize_from_rollouts(export_dir: str | os.PathLike, suite: str = "default", episodes: int = 2,
                           every: int = 3, progress: bool = True, log=print) -> dict[str, Any]:
    """Calibrate on closed-loop rollouts (export/calibration.py), then quantize_export."""
    from export.calibration import calibration_feeds

    log(f"[export] int8 calibration: {episodes} rollouts per task family of suite {suite!r}")
    feeds, info = calibration_feeds(export_dir, suite, episodes, every, progress=progress)
    return quantize_export(export_dir, feeds, info, log=log)
