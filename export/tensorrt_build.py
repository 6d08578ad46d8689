"""`lapa export tensorrt`: policy.onnx -> a TensorRT engine (policy.plan) for the GPU it is built on.

TensorRT 10 Python API: Builder -> network (explicit batch is the only mode in 10.x) -> OnnxParser
-> builder config (workspace pool limit, optional FP16, one optimisation profile for the batch
dimension min/opt/max of every input: image, text_emb and, for a model with a proprio input,
state; a timing cache loaded from and saved to `--timing-cache`) -> `build_serialized_network`.
A sidecar `policy.plan.json` records what the engine is tied to (TensorRT version, GPU name and
compute capability, precision, profile, the ONNX file's sha256): engines do not move between GPUs
or TensorRT versions, and the runtime refuses a mismatch.

FP16: the pitfall reported for transformer policies is NaN/inf from attention scores in fp16.
The exported attention computes its scores and softmax in float32 (export/graph_check.py checks
the ONNX graph); with `--fp16` this builder also pins every Softmax layer and the layers between
it and its score MatMul (scale, mask, the MatMul itself) to float32 with
OBEY_PRECISION_CONSTRAINTS, so TensorRT may run everything else in fp16 but never the scores.

After the build, the engine is checked against ONNX Runtime (CPU) on random inputs at the profile's
batch sizes (random states for a state model): the decoded bins must agree (>= 99.9% fp32, >= 99%
fp16; for an l1 model away from bin boundaries) and the cosine of the logits (l1: of the normalised
predictions) be >= 0.999.

TensorRT is imported only inside these functions: the module imports on machines without it,
and using it there fails with an ExportError that says what to install.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.metadata import (
    ENGINE_FILE,
    IMAGE_INPUT,
    POLICY_ONNX,
    STATE_INPUT,
    TEXT_EMB_INPUT,
    WRIST_IMAGE_INPUT,
    ExportError,
    file_sha256,
    read_metadata,
)

INSTALL_HINT = ("TensorRT 10 is needed: on a machine with an NVIDIA GPU and its driver, `pip install tensorrt` "
                "(NVIDIA's wheels, which the PyPI package fetches from NVIDIA's own index), then rerun")
SIDECAR_SUFFIX = ".json"


def import_tensorrt():
    """The tensorrt module (>= 10), or ExportError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise ExportError(f"TensorRT is not available here ({err}). {INSTALL_HINT}") from err
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ExportError(f"TensorRT {trt.__version__} is too old: this code uses the TensorRT 10 tensor API. "
                          f"{INSTALL_HINT}")
    return trt


def require_cuda() -> Any:
    """torch with a CUDA device (TrtPolicy's buffers are torch CUDA tensors), or ExportError."""
    try:
        import torch
    except ImportError as err:
        raise ExportError(f"torch is needed for the TensorRT runtime's CUDA buffers ({err})") from err
    if not torch.cuda.is_available():
        raise ExportError("no CUDA GPU is visible: TensorRT engines are built on, and only run on, an NVIDIA GPU "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    return torch


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    parity_samples: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ExportError(f"batch profile must satisfy 1 <= min <= opt <= max, got "
                              f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if self.workspace_mb < 16:
            raise ExportError(f"workspace must be >= 16 MiB, got {self.workspace_mb}")


def gpu_identity(torch: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "total_memory_mb": props.total_memory // (1 << 20)}


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    network = builder.create_network(0)  # 10.x: explicit batch always; flag 0 = weakly typed (FP16 flag allowed)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors or 'no detail'}")
    return network, parser


def pin_attention_fp32(trt: Any, network: Any) -> list[str]:
    """Pin each Softmax and the layers back to its score MatMul to float32; returns the pinned layer names."""
    producer: dict[str, Any] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
    passthrough = {trt.LayerType.ELEMENTWISE, trt.LayerType.SELECT, trt.LayerType.SHUFFLE, trt.LayerType.IDENTITY,
                   trt.LayerType.CAST, trt.LayerType.SCALE}
    pinned: list[str] = []

    def pin(layer: Any) -> None:
        if layer.type == trt.LayerType.CONSTANT:
            return
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)

    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type != trt.LayerType.SOFTMAX:
            continue
        pin(layer)
        current = producer.get(layer.get_input(0).name)
        for _ in range(12):
            if current is None:
                break
            pin(current)
            if current.type == trt.LayerType.MATRIX_MULTIPLY:
                break
            if current.type not in passthrough:
                break
            inputs = [current.get_input(k) for k in range(current.num_inputs)]
            data = [t for t in inputs if t is not None and t.name in producer
                    and producer[t.name].type != trt.LayerType.CONSTANT and t.dtype in (trt.float32, trt.float16)]
            current = producer.get(data[0].name) if data else None
    return pinned


def build_engine(onnx_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 options: BuildOptions | None = None, log=print) -> dict[str, Any]:
    """Build `out` (default DIR/policy.plan) from DIR/policy.onnx; returns the sidecar dict (with parity)."""
    options = options or BuildOptions()
    trt = import_tensorrt()
    torch = require_cuda()
    onnx_dir = Path(onnx_dir)
    meta = read_metadata(onnx_dir)
    onnx_path = onnx_dir / POLICY_ONNX
    out = Path(out) if out is not None else onnx_dir / ENGINE_FILE
    H, W = meta.image_size

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    pinned: list[str] = []
    if options.fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            log("[tensorrt] warning: this GPU has no fast fp16; building anyway")
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = pin_attention_fp32(trt, network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log(f"[tensorrt] fp16 with {len(pinned)} attention layers pinned to fp32")

    profile = builder.create_optimization_profile()
    b = (options.min_batch, options.opt_batch, options.max_batch)
    for image_input in (IMAGE_INPUT, WRIST_IMAGE_INPUT) if meta.has_wrist_camera else (IMAGE_INPUT,):
        profile.set_shape(image_input, (b[0], H, W, 3), (b[1], H, W, 3), (b[2], H, W, 3))
    profile.set_shape(TEXT_EMB_INPUT, (b[0], meta.text_dim), (b[1], meta.text_dim), (b[2], meta.text_dim))
    if meta.state_dim:
        S = meta.state_dim
        profile.set_shape(STATE_INPUT, (b[0], S), (b[1], S), (b[2], S))
    config.add_optimization_profile(profile)

    cache_bytes = b""
    if options.timing_cache is not None and Path(options.timing_cache).is_file():
        cache_bytes = Path(options.timing_cache).read_bytes()
        log(f"[tensorrt] timing cache: {options.timing_cache} ({len(cache_bytes)} bytes)")
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above); "
                          "fp16 with dynamic shapes can fail where fp32 builds: try without --fp16 or a narrower "
                          "batch profile")
    build_seconds = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(memoryview(serialized))
    os.replace(tmp, out)
    if options.timing_cache is not None:
        Path(options.timing_cache).parent.mkdir(parents=True, exist_ok=True)
        Path(options.timing_cache).write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))

    sidecar = {
        "engine": out.name,
        "onnx": str(onnx_path.resolve()),
        "onnx_sha256": file_sha256(onnx_path),
        "model_hash": meta.model_hash,
        "tensorrt": trt.__version__,
        "gpu": gpu_identity(torch),
        "precision": "fp16" if options.fp16 else "fp32",
        "fp32_pinned_layers": len(pinned),
        "profile": {"min": b[0], "opt": b[1], "max": b[2]},
        "inputs": meta.input_names,
        "workspace_mb": options.workspace_mb,
        "build_seconds": round(build_seconds, 2),
    }
    write_sidecar(out, sidecar)
    log(f"[tensorrt] built {out} in {build_seconds:.1f} s; checking parity against ONNX Runtime")
    report = engine_parity(onnx_dir, out, options)
    sidecar["parity"] = report.to_dict()
    write_sidecar(out, sidecar)
    log(f"[tensorrt] {report.summary()}")
    report.raise_if_failed()
    return sidecar


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def write_sidecar(engine: Path, doc: dict[str, Any]) -> None:
    sidecar_path(engine).write_text(json.dumps(doc, indent=2) + "\n")


def engine_parity(onnx_dir: Path, engine: Path, options: BuildOptions):
    """TensorRT engine vs ONNX Runtime (CPU, fp32) on random inputs at the profile's batch sizes."""
    import numpy as np

    from export import parity
    from export.ort_policy import OrtPolicy, image_feeds
    from export.trt_policy import TrtRunner
    from lapa.action import fake_state

    ort_policy = OrtPolicy(onnx_dir, providers=["cpu"])
    runner = TrtRunner(engine)
    meta = ort_policy.meta
    rng = np.random.default_rng(0)
    sizes = sorted({options.min_batch, options.opt_batch, options.max_batch})
    refs, gots, done = [], [], 0
    while done < options.parity_samples:
        for size in sizes:
            cameras = (len(meta.cameras),) if len(meta.cameras) > 1 else ()
            images = rng.integers(0, 256, (size, *cameras, *meta.image_size, 3), dtype=np.uint8)
            text = rng.normal(size=(size, meta.text_dim)).astype(np.float32)
            text /= np.linalg.norm(text, axis=1, keepdims=True)
            state = fake_state(size, seed=done, dim=meta.state_dim) if meta.state_dim else None
            refs.append(ort_policy.run(images, text, state, logits=True))
            gots.append(runner.run(image_feeds(meta, images), text, state))
            done += size
    ref = {k: np.concatenate([r[k] for r in refs]) for k in refs[0]}
    got = {k: np.concatenate([g[k] for g in gots]) for k in ref}
    return parity.compare_policy(f"{engine.name} vs onnxruntime", ref, got, done,
                                 min_agree=0.99 if options.fp16 else parity.MIN_BINS_AGREE, logits_atol=None,
                                 min_cosine=parity.REDUCED_PRECISION_MIN_COSINE)
