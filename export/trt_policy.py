"""The TensorRT backend of the Policy protocol: a policy.plan engine + the export directory's text encoder.

TensorRT 10 tensor API: deserialize the engine, one execution context, then per call
`set_input_shape` / `set_tensor_address` for every I/O tensor and `execute_async_v3` on a CUDA
stream. Buffers are torch CUDA tensors (torch is on every GPU machine this runs on, and it gives
allocation, host<->device copies and streams without another CUDA binding); they are allocated
once for the profile's maximum batch and reused, a call of batch B using their first B rows.

The instruction embedding comes from text_encoder.onnx through ONNX Runtime (once per new
instruction, LRU-cached), exactly as in the ONNX Runtime backend. An engine built from a graph with
a proprio input has a third input tensor `state` (B, 8) with the same dynamic batch; it is fed
like the others (shape, address), and an observation without state is refused with
PolicyInputError, as in the other backends.

Engines are tied to the GPU and the TensorRT version they were built with: the sidecar
`policy.plan.json` written by `lapa export tensorrt` records both and a mismatch is refused with
the command that rebuilds the engine. Nothing here imports tensorrt or torch at module import time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import (
    ACTIONS_OUTPUT,
    BINS_OUTPUT,
    ENGINE_FILE,
    IMAGE_INPUT,
    STATE_INPUT,
    TEXT_EMB_INPUT,
    WRIST_IMAGE_INPUT,
    ExportError,
    read_metadata,
)
from export.ort_policy import (
    REPLY_BINS,
    OnnxTextEncoder,
    choose_providers,
    image_feeds,
    session_options,
    state_feed,
)
from export.tensorrt_build import gpu_identity, import_tensorrt, require_cuda, sidecar_path
from lapa.policy_protocol import REPLY_ACTIONS, REPLY_MODEL_MS, camera_images, check_observation, require_state


def _torch_dtype(trt: Any, torch: Any, dtype: Any) -> Any:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.uint8: torch.uint8, trt.int8: torch.int8, trt.bool: torch.bool}
    if dtype not in table:
        raise ExportError(f"engine tensor type {dtype} has no torch equivalent here")
    return table[dtype]


def read_sidecar(engine: Path) -> dict[str, Any]:
    path = sidecar_path(engine)
    if not path.is_file():
        raise ExportError(f"{path}: missing; rebuild the engine with `lapa export tensorrt` (it records the GPU "
                          "and TensorRT version the engine belongs to)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: cannot read ({err})") from err


class TrtRunner:
    """One engine, one context, one stream; `run(images, text_emb[, state]) -> {actions, bins, logits or
    normalized_actions}` as numpy (every output of the engine, by name)."""

    def __init__(self, engine_path: str | os.PathLike) -> None:
        trt = import_tensorrt()
        torch = require_cuda()
        self.trt, self.torch = trt, torch
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise ExportError(f"{self.engine_path}: engine not found; build it with "
                              "`lapa export tensorrt --onnx DIR --out DIR/policy.plan`")
        self.sidecar = read_sidecar(self.engine_path)
        here = {"tensorrt": trt.__version__, "gpu": gpu_identity(torch)["name"]}
        built = {"tensorrt": self.sidecar.get("tensorrt"), "gpu": self.sidecar.get("gpu", {}).get("name")}
        if here != built:
            raise ExportError(f"{self.engine_path} was built for {built}, this machine has {here}: engines are "
                              "specific to the GPU and TensorRT version; rebuild with `lapa export tensorrt`")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"{self.engine_path}: TensorRT cannot deserialize it (corrupt, or built by another "
                              "TensorRT version); rebuild with `lapa export tensorrt`")
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.has_wrist_camera = WRIST_IMAGE_INPUT in self.inputs
        expected = ([IMAGE_INPUT] + ([WRIST_IMAGE_INPUT] if self.has_wrist_camera else []) + [TEXT_EMB_INPUT]
                    + ([STATE_INPUT] if STATE_INPUT in self.inputs else []))
        if sorted(self.inputs) != sorted(expected):
            raise ExportError(f"{self.engine_path}: inputs {self.inputs}, expected {expected} "
                              f"(+ {STATE_INPUT!r} for a model with a proprio input)")
        # 8 for an engine with a state input (B, 8), else 0
        self.state_dim = int(self.engine.get_tensor_shape(STATE_INPUT)[1]) if STATE_INPUT in self.inputs else 0
        _, _, max_shape = self.engine.get_tensor_profile_shape(IMAGE_INPUT, 0)
        min_shape = self.engine.get_tensor_profile_shape(IMAGE_INPUT, 0)[0]
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        # buffers for the largest batch, reused: a batch of B uses the first B rows (a contiguous prefix)
        self.buffers: dict[str, Any] = {}
        for name in names:
            shape = list(self.engine.get_tensor_shape(name))
            if name in self.inputs:
                shape = list(self.engine.get_tensor_profile_shape(name, 0)[2])
            shape[0] = self.max_batch
            if any(d < 0 for d in shape):
                raise ExportError(f"{self.engine_path}: tensor {name} has dynamic dims {shape} besides the batch")
            dtype = _torch_dtype(trt, torch, self.engine.get_tensor_dtype(name))
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)

    def run(self, images: np.ndarray | dict[str, np.ndarray], text_emb: np.ndarray,
            state: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """images uint8 (B, H, W, 3) (or {image, wrist_image: (B, H, W, 3)} for an engine with a wrist
        camera, see ort_policy.image_feeds), text_emb float32 (B, D), state float32 (B, 8) for an engine
        with a state input (PolicyInputError without one), None otherwise."""
        torch = self.torch
        by_name = images if isinstance(images, dict) else {IMAGE_INPUT: images}
        if set(by_name) != {IMAGE_INPUT, WRIST_IMAGE_INPUT} & set(self.inputs):
            raise ExportError(f"{self.engine_path}: images {sorted(by_name)} given, the engine takes "
                              f"{sorted({IMAGE_INPUT, WRIST_IMAGE_INPUT} & set(self.inputs))}")
        B = by_name[IMAGE_INPUT].shape[0]
        if not self.min_batch <= B <= self.max_batch:
            raise ExportError(f"batch {B} is outside the engine's profile [{self.min_batch}, {self.max_batch}]")
        feeds = {name: np.require(array, np.uint8, ["C", "W"])  # writable: torch.from_numpy
                 for name, array in by_name.items()}
        feeds[TEXT_EMB_INPUT] = np.require(text_emb, np.float32, ["C", "W"])
        feeds.update({name: np.require(array, np.float32, ["C", "W"])
                      for name, array in state_feed(self.state_dim, state, B).items()})
        with torch.cuda.stream(self.stream):
            for name, array in feeds.items():
                self.buffers[name][:B].copy_(torch.from_numpy(array), non_blocking=False)
                self.context.set_input_shape(name, tuple(array.shape))
                self.context.set_tensor_address(name, self.buffers[name].data_ptr())
            for name in self.outputs:
                self.context.set_tensor_address(name, self.buffers[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ExportError(f"{self.engine_path}: execute_async_v3 failed (see the TensorRT log)")
            self.stream.synchronize()
            return {name: self.buffers[name][:B].cpu().numpy() for name in self.outputs}


class TrtPolicy:
    """`infer(obs) -> {"actions": float32 (K, 7), "model_ms": float, "bins": int64 (K, 7)}` on TensorRT.

    model_dir: the export directory (metadata.json, text_encoder.onnx, tokenizer.json) holding
    policy.plan, or pass `engine` elsewhere. threads: ONNX Runtime threads of the text encoder.
    """

    backend = "tensorrt"

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None,
                 engine: str | os.PathLike | None = None, cache_size: int = 256) -> None:
        self.export_dir = Path(model_dir)
        self.meta = read_metadata(self.export_dir)
        engine_path = Path(engine) if engine is not None else self.export_dir / ENGINE_FILE
        self.runner = TrtRunner(engine_path)
        if self.runner.sidecar.get("model_hash") != self.meta.model_hash:
            raise ExportError(f"{engine_path} was built from another checkpoint than {self.export_dir}'s "
                              "metadata.json describes; rebuild it from this export directory")
        shapes = {n: tuple(self.runner.engine.get_tensor_shape(n)) for n in self.runner.outputs}
        K, A = self.meta.chunk_size, self.meta.action_dim
        if shapes.get(ACTIONS_OUTPUT, ())[1:] != (K, A):
            raise ExportError(f"{engine_path}: actions {shapes.get(ACTIONS_OUTPUT)}, metadata says (N, {K}, {A})")
        if self.runner.state_dim != self.meta.state_dim:
            raise ExportError(f"{engine_path}: the engine's state input has {self.runner.state_dim} values, "
                              f"metadata.json says state_dim {self.meta.state_dim}; rebuild it from this export "
                              "directory")
        if self.runner.has_wrist_camera != self.meta.has_wrist_camera:
            raise ExportError(f"{engine_path}: the engine {'takes' if self.runner.has_wrist_camera else 'lacks'} "
                              f"{WRIST_IMAGE_INPUT!r}, metadata.json says cameras {list(self.meta.cameras)}; rebuild "
                              "it from this export directory")
        if self.meta.score_output not in self.runner.outputs:
            raise ExportError(f"{engine_path}: outputs {self.runner.outputs} lack {self.meta.score_output!r} "
                              f"(action_output {self.meta.action_output!r}); rebuild it from this export directory")
        self.state_dim = self.meta.state_dim
        ort_providers = [p for p in choose_providers(None, None) if p != "TensorrtExecutionProvider"]
        self.instructions = OnnxTextEncoder(self.export_dir, self.meta, session_options(threads), ort_providers,
                                            cache_size)
        self._metadata = {**self.meta.runtime_metadata(self.backend),
                          "engine": str(engine_path), "precision": self.runner.sidecar.get("precision"),
                          "tensorrt": self.runner.sidecar.get("tensorrt"), "gpu": self.runner.sidecar.get("gpu")}

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        image, instruction, state = check_observation(obs, self.meta.image_size)
        state = require_state(state, self.state_dim)  # PolicyInputError when the model needs it
        image = camera_images(obs, image, self.meta.cameras)  # (H, W, 3), (2, H, W, 3) with a wrist camera
        start = time.perf_counter()
        text = self.instructions.get(instruction)[None]  # (1, D)
        out = self.runner.run(image_feeds(self.meta, image[None]), text, None if state is None else state[None])
        model_ms = (time.perf_counter() - start) * 1000.0
        return {REPLY_ACTIONS: out[ACTIONS_OUTPUT][0].astype(np.float32), REPLY_MODEL_MS: model_ms,
                REPLY_BINS: out[BINS_OUTPUT][0].astype(np.int64)}

    def run(self, images: np.ndarray, text_emb: np.ndarray, state: np.ndarray | None = None,
            logits: bool = False) -> dict[str, np.ndarray]:
        """As OrtPolicy.run: actions, bins, and with `logits` the third output (logits / normalized_actions)."""
        out = self.runner.run(image_feeds(self.meta, images), text_emb, state)
        return out if logits else {k: v for k, v in out.items() if k in (ACTIONS_OUTPUT, BINS_OUTPUT)}

    def reset(self) -> None:
        """Nothing to clear: stateless between calls (the instruction cache is kept)."""
