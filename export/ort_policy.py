"""The ONNX Runtime backend of the Policy protocol, over an export directory (export/metadata.py).

No torch anywhere: numpy, onnxruntime and `tokenizers` only, so a policy server built on it
installs without the training stack. Per call only the image (and, for a model with a proprio
input, the observation's `state`) runs through policy.onnx; the instruction embedding comes from an
LRU cache filled by text_encoder.onnx (once per new string). A state model needs the state: an
observation without one is refused with PolicyInputError (the server's 422), as in the torch backend.

Execution providers: `providers=None` takes what the installed onnxruntime offers, in the order
TensorRT, CUDA, CPU. The CPU package (`onnxruntime`) offers only the CPU provider; the GPU ones come
with `onnxruntime-gpu` (`pip install -e .[gpu]`), which replaces it in an environment (the two
packages cannot be installed side by side). The TensorRT provider builds fp32 engines and caches
them in `<export dir>/trt_cache`; fp16 through ONNX Runtime is left off on purpose: use
`lapa export tensorrt --fp16`, which keeps the attention softmax in fp32.

Threads: `threads` sets intra_op_num_threads (None: ONNX Runtime's default, one per core). Intra-op
spinning is off by default: on a shared 2-core machine spinning threads fight the other processes
and the tail latency suffers (see bench/model.py's ort_variants).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import (
    ACTIONS_OUTPUT,
    ATTENTION_MASK,
    BATCH_DIM,
    BINS_OUTPUT,
    IMAGE_INPUT,
    INPUT_IDS,
    INT8_ONNX,
    POLICY_ONNX,
    STATE_INPUT,
    TEXT_EMB_INPUT,
    TEXT_EMB_OUTPUT,
    TEXT_ONNX,
    TOKENIZER_FILE,
    WRIST_IMAGE_INPUT,
    ExportError,
    ExportMetadata,
    check_io,
    read_metadata,
)
from lapa.action import fake_state
from lapa.lru_cache import CachedLookup, LruCache
from lapa.policy_protocol import (
    REPLY_ACTIONS,
    REPLY_MODEL_MS,
    STATE_REQUIRED,
    PolicyInputError,
    camera_images,
    check_observation,
    require_state,
)

REPLY_BINS = "bins"  # int64 (K, 7), as the torch backend
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
PRECISION_GRAPHS = {"fp32": POLICY_ONNX, "int8": INT8_ONNX}  # int8: export/quantize.py, CPU provider only


def _ort():
    try:
        import onnxruntime
    except ModuleNotFoundError as err:
        raise ExportError("onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu") from err
    return onnxruntime


def choose_providers(requested: Sequence[str] | None, export_dir: Path | None = None) -> list[Any]:
    """Requested provider names (short names "tensorrt", "cuda", "cpu" accepted) or all available ones."""
    ort = _ort()
    available = ort.get_available_providers()
    short = {"tensorrt": PROVIDER_ORDER[0], "cuda": PROVIDER_ORDER[1], "cpu": PROVIDER_ORDER[2]}
    if requested is None:
        names = [p for p in PROVIDER_ORDER if p in available]
    else:
        names = [short.get(p.lower(), p) for p in requested]
        missing = [p for p in names if p not in available]
        if missing:
            raise ExportError(f"execution providers {missing} are not available in this onnxruntime "
                              f"(it offers {available}); GPU providers need onnxruntime-gpu instead of onnxruntime")
    providers: list[Any] = []
    for name in names:
        if name == "TensorrtExecutionProvider" and export_dir is not None:
            providers.append((name, {"trt_engine_cache_enable": True,
                                     "trt_engine_cache_path": str(export_dir / "trt_cache"),
                                     "trt_fp16_enable": False}))
        else:
            providers.append(name)
    return providers or ["CPUExecutionProvider"]


def session_options(threads: int | None = None, spinning: bool = False, optimization: str = "all"):
    ort = _ort()
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {OPTIMIZATION_LEVELS}, got {optimization!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


def open_session(path: Path, options: Any, providers: list[Any]):
    """An InferenceSession, or ExportError naming the file (corrupt, truncated, not ONNX)."""
    ort = _ort()
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail / InvalidProtobuf / ... types
        raise ExportError(f"{path}: ONNX Runtime cannot load it ({type(err).__name__}: {err}); "
                          "re-export with `lapa export onnx`") from err


def session_io(session: Any) -> tuple[dict[str, list], dict[str, list]]:
    return ({i.name: list(i.shape) for i in session.get_inputs()},
            {o.name: list(o.shape) for o in session.get_outputs()})


def image_feeds(meta: ExportMetadata, images: np.ndarray) -> dict[str, np.ndarray]:
    """{"image": uint8 (B, H, W, 3)} or, for cameras [scene, wrist], images (B, 2, H, W, 3) split into
    {"image", "wrist_image"}; ValueError when the camera axis does not match the model's."""
    images = np.asarray(images)
    cameras = len(meta.cameras)
    if cameras == 1:
        return {IMAGE_INPUT: np.ascontiguousarray(images, dtype=np.uint8)}
    if images.ndim != 5 or images.shape[1] != cameras:
        raise ValueError(f"images must be (B, {cameras}, H, W, 3) for cameras {list(meta.cameras)}, "
                         f"got {tuple(images.shape)}")
    return {IMAGE_INPUT: np.ascontiguousarray(images[:, 0], dtype=np.uint8),
            WRIST_IMAGE_INPUT: np.ascontiguousarray(images[:, 1], dtype=np.uint8)}


def state_feed(state_dim: int, state: np.ndarray | None, batch: int) -> dict[str, np.ndarray]:
    """{"state": float32 (B, 8)} for a graph with a state input, {} for one without; PolicyInputError when a
    state model gets none, ValueError for a state given to a model without state input or misshapen."""
    if not state_dim:
        if state is not None:
            raise ValueError("this policy graph has no state input (state_dim 0): pass state=None")
        return {}
    if state is None:
        raise PolicyInputError(STATE_REQUIRED)
    state = np.ascontiguousarray(state, dtype=np.float32)
    if state.shape != (batch, state_dim):
        raise ValueError(f"state must be float32 ({batch}, {state_dim}), got {tuple(state.shape)}")
    return {STATE_INPUT: state}


class OnnxTextEncoder(CachedLookup):
    """tokenizer.json + text_encoder.onnx -> float32 unit embeddings (or flattened token features, in
    the token form), with an LRU cache per instruction."""

    def __init__(self, export_dir: Path, meta: ExportMetadata, options: Any, providers: list[Any],
                 cache_size: int = 256) -> None:
        from tokenizers import Tokenizer

        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        try:
            self.tokenizer = Tokenizer.from_file(str(export_dir / TOKENIZER_FILE))
        except Exception as err:
            raise ExportError(f"{export_dir / TOKENIZER_FILE}: cannot read the tokenizer ({err})") from err
        text = meta.raw["text_encoder"]
        self.tokenizer.enable_truncation(max_length=meta.max_seq_length)
        fixed = int(text.get("tokens", 0)) or None  # the token form: exactly N tokens
        self.tokenizer.enable_padding(pad_id=int(text.get("pad_id", 0)), pad_token=str(text.get("pad_token", "[PAD]")),
                                      length=fixed)
        # a TensorRT provider would build an engine per sequence length: the text encoder runs rarely, skip it
        providers = [p for p in providers if (p[0] if isinstance(p, tuple) else p) != PROVIDER_ORDER[0]]
        self.session = open_session(export_dir / TEXT_ONNX, options, providers or ["CPUExecutionProvider"])
        check_io(meta, TEXT_ONNX, *session_io(self.session))
        self.embedding_dim = meta.text_dim
        self._cache: LruCache[str, np.ndarray] = LruCache(cache_size)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)  # (B, T)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)  # (B, T)
        return ids, mask

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (B, D) unit vectors, no cache."""
        ids, mask = self.tokenize(texts)
        return self.session.run([TEXT_EMB_OUTPUT], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0].astype(np.float32)

    def get(self, text: str) -> np.ndarray:
        """float32 (D,) embedding of one instruction, from the cache when seen before (read-only)."""
        return self._cache.get(text, self._encode_one)

    def _encode_one(self, text: str) -> np.ndarray:
        emb = self.encode([text])[0]
        emb.setflags(write=False)
        return emb


class OrtPolicy:
    """`infer(obs) -> {"actions": float32 (K, 7), "model_ms": float, "bins": int64 (K, 7)}` on ONNX Runtime.

    model_dir: an export directory (`lapa export onnx`). threads: intra-op threads (None: ORT's
    default). providers: None = every available one (TensorRT, CUDA, CPU order), or a list of names.
    precision: "fp32" (policy.onnx) or "int8" (policy_int8.onnx, `lapa export int8`; CPU provider).
    batch: fix the policy graph's batch dimension (None: any batch). The server answers one
    observation per call (`from_dir`: 1); with the batch known, ONNX Runtime folds the graph's shape
    arithmetic away (a fifth of its nodes, ~5% of a call here). `run` then takes that batch only.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        cache_size: int = 256,
        spinning: bool = False,
        optimization: str = "all",
        precision: str = "fp32",
        batch: int | None = None,
    ) -> None:
        self.export_dir = Path(model_dir)
        self.meta = read_metadata(self.export_dir)
        graph = PRECISION_GRAPHS.get(precision)
        if graph is None:
            raise ExportError(f"precision must be one of {', '.join(PRECISION_GRAPHS)}, got {precision!r}")
        if graph not in self.meta.files:
            raise ExportError(f"{self.export_dir} has no {graph}: build it with `lapa export int8 --export "
                              f"{self.export_dir}`")
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be >= 1 or None, got {batch}")
        options = session_options(threads, spinning, optimization)
        policy_options = session_options(threads, spinning, optimization)
        if batch is not None:
            policy_options.add_free_dimension_override_by_name(BATCH_DIM, batch)
        chosen = choose_providers(providers, self.export_dir)
        # QDQ int8 is a CPU-provider graph; a GPU runs fp32 (or TensorRT's own fp16)
        policy_providers = ["CPUExecutionProvider"] if precision == "int8" else chosen
        self.session = open_session(self.export_dir / graph, policy_options, policy_providers)
        check_io(self.meta, POLICY_ONNX, *session_io(self.session))
        self.precision = precision
        self.state_dim = self.meta.state_dim
        self.instructions = OnnxTextEncoder(self.export_dir, self.meta, options, chosen, cache_size)
        self._outputs = [ACTIONS_OUTPUT, BINS_OUTPUT]
        self._metadata = {**self.meta.runtime_metadata(self.backend),
                          "providers": self.session.get_providers(), "num_threads": threads, "precision": precision,
                          "batch": batch}

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, threads: int | None = None) -> OrtPolicy:
        """The server's constructor: an export directory, or a finetuned checkpoint, exported once
        and cached (export/cache.py), so `--backend onnxruntime` serves a shipped model as it is.
        One observation per call: batch 1."""
        from export.cache import ensure_export

        return cls(ensure_export(model_dir), threads=threads, batch=1)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def run(self, images: np.ndarray, text_emb: np.ndarray, state: np.ndarray | None = None,
            logits: bool = False) -> dict[str, np.ndarray]:
        """Batched step: uint8 (B, H, W, 3) ((B, 2, H, W, 3) for cameras [scene, wrist]) + float32 (B, D)
        [+ float32 (B, 8) state, a state model's and only its] -> actions, bins (and with `logits` the
        third output: logits, or an l1 model's normalized_actions) by output name."""
        names = [*self._outputs, self.meta.score_output] if logits else self._outputs
        feeds = {**image_feeds(self.meta, images), TEXT_EMB_INPUT: np.ascontiguousarray(text_emb, dtype=np.float32)}
        feeds.update(state_feed(self.state_dim, state, len(feeds[IMAGE_INPUT])))
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Validate (PolicyInputError on a malformed observation), encode (cached), decode one chunk."""
        image, instruction, state = check_observation(obs, self.meta.image_size)
        state = require_state(state, self.state_dim)  # PolicyInputError when the model needs it
        image = camera_images(obs, image, self.meta.cameras)  # (H, W, 3), (2, H, W, 3) with a wrist camera
        start = time.perf_counter()
        text = self.instructions.get(instruction)[None]  # (1, D)
        out = self.run(image[None], text, None if state is None else state[None])
        model_ms = (time.perf_counter() - start) * 1000.0
        return {REPLY_ACTIONS: out[ACTIONS_OUTPUT][0].astype(np.float32, copy=False), REPLY_MODEL_MS: model_ms,
                REPLY_BINS: out[BINS_OUTPUT][0].astype(np.int64, copy=False)}

    def warmup(self, steps: int = 2) -> None:
        """A few calls on random inputs so the first real call is not the slow one."""
        rng = np.random.default_rng(0)
        H, W = self.meta.image_size
        text = rng.normal(size=(1, self.meta.text_dim)).astype(np.float32)
        text /= np.linalg.norm(text)
        state = fake_state(1, dim=self.state_dim) if self.state_dim else None
        cameras = (len(self.meta.cameras),) if len(self.meta.cameras) > 1 else ()
        for _ in range(steps):
            self.run(rng.integers(0, 256, (1, *cameras, H, W, 3), dtype=np.uint8), text, state)

    def reset(self) -> None:
        """Nothing to clear: stateless between calls (the instruction cache is kept)."""


class OrtInt8Policy(OrtPolicy):
    """The `onnxruntime-int8` backend: OrtPolicy on the static int8 graph (export/quantize.py), built
    on first use from a checkpoint or an export directory that lacks it, and kept beside policy.onnx."""

    backend = "onnxruntime-int8"

    def __init__(self, model_dir: str | os.PathLike, threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(model_dir, threads=threads, precision="int8", **kwargs)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike, threads: int | None = None) -> OrtInt8Policy:
        from export.cache import ensure_export, ensure_int8

        return cls(ensure_int8(ensure_export(model_dir)), threads=threads, batch=1)
