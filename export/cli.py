"""`lapa export onnx|int8|tensorrt`: checkpoint -> ONNX export directory -> static int8 graph, TensorRT engine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a finetuned VLA to ONNX and TensorRT")
    export_sub = export.add_subparsers(dest="export_command", metavar="FORMAT", required=True)

    onnx = export_sub.add_parser("onnx", help="checkpoint -> policy.onnx + text_encoder.onnx + metadata.json, "
                                              "checked for parity and TensorRT readiness")
    onnx.add_argument("--ckpt", type=Path, required=True, help="finetuned VLA checkpoint directory")
    onnx.add_argument("--out", type=Path, required=True, help="export directory (created or replaced)")
    onnx.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                      help="torch.export-based (default) or the legacy TorchScript exporter (much faster to run)")
    onnx.add_argument("--opset", type=int, default=19, help="ONNX opset (default: %(default)s)")
    onnx.add_argument("--text-encoder", type=Path, default=None,
                      help="text encoder model directory (default: the bundled all-MiniLM-L6-v2)")
    onnx.add_argument("--parity-samples", type=int, default=64, help="random observations for the parity check")
    onnx.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads during export")
    onnx.add_argument("--no-fold", action="store_true", help="skip polygraphy constant folding")
    onnx.set_defaults(func=_onnx)

    int8 = export_sub.add_parser("int8", help="export directory or checkpoint -> static int8 policy_int8.onnx, "
                                              "calibrated on closed-loop rollouts of the fp32 policy")
    int8.add_argument("--export", type=Path, required=True,
                      help="export directory (`lapa export onnx`), or a checkpoint (exported and cached first)")
    int8.add_argument("--suite", default="default",
                      help="task suite of the calibration rollouts (default: %(default)s)")
    int8.add_argument("--episodes", type=int, default=2,
                      help="calibration rollouts per task family (default: %(default)s)")
    int8.add_argument("--every", type=int, default=3, help="keep every n-th model call's inputs (default: %(default)s)")
    int8.set_defaults(func=_int8)

    trt = export_sub.add_parser("tensorrt", help="export directory -> TensorRT engine (on the target GPU)")
    trt.add_argument("--onnx", type=Path, required=True, help="export directory from `lapa export onnx`")
    trt.add_argument("--out", type=Path, default=None, help="engine file (default: ONNX_DIR/policy.plan)")
    trt.add_argument("--fp16", action="store_true", help="allow fp16 kernels (attention softmax stays fp32)")
    trt.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to load and update")
    trt.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit (MiB)")
    trt.add_argument("--min-batch", type=int, default=1)
    trt.add_argument("--opt-batch", type=int, default=1)
    trt.add_argument("--max-batch", type=int, default=8)
    trt.add_argument("--parity-samples", type=int, default=64)
    trt.set_defaults(func=_tensorrt)


def _onnx(args: argparse.Namespace) -> int:
    from export.metadata import ExportError
    from export.onnx_export import export_onnx

    if args.parity_samples < 1:
        raise ExportError("--parity-samples must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ExportError("--threads must be >= 1")
    doc = export_onnx(args.ckpt, args.out, text_encoder_dir=args.text_encoder, exporter=args.exporter,
                      opset=args.opset, parity_samples=args.parity_samples, threads=args.threads,
                      sanitize=not args.no_fold)
    print(json.dumps({"out": str(args.out), "exporter": doc["exporter"], "opset": doc["opset"],
                      "parity": {k: v["passed"] for k, v in doc["parity"].items()},
                      "softmax_fp32": all(c["softmax_fp32"] for c in doc["graph_check"].values()),
                      "export_seconds": doc["export_seconds"]}, indent=2))
    return 0


def _int8(args: argparse.Namespace) -> int:
    from export.cache import ensure_export
    from export.metadata import ExportError
    from export.quantize import quantize_from_rollouts

    if args.episodes < 1 or args.every < 1:
        raise ExportError("--episodes and --every must be >= 1")
    export_dir = ensure_export(args.export)
    section = quantize_from_rollouts(export_dir, args.suite, args.episodes, args.every)
    print(json.dumps({"export": str(export_dir), **section}, indent=2))
    return 0


def _tensorrt(args: argparse.Namespace) -> int:
    from export.tensorrt_build import BuildOptions, build_engine

    options = BuildOptions(fp16=args.fp16, min_batch=args.min_batch, opt_batch=args.opt_batch,
                           max_batch=args.max_batch, workspace_mb=args.workspace_mb, timing_cache=args.timing_cache,
                           parity_samples=args.parity_samples)
    sidecar = build_engine(args.onnx, args.out, options)
    print(json.dumps(sidecar, indent=2))
    return 0
