"""Backend loading: a name (or `module:factory`) and a model directory -> a Policy.

Each backend's module is imported only when chosen, so the server never imports torch unless
`--backend torch` asks for it.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from lapa.policy_protocol import Policy

# name -> (module, class, what to install or build when it is missing)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("lapa.policy.torch_policy", "TorchPolicy", "the lapa PyTorch policy (lapa/policy/torch_policy.py)"),
    "onnxruntime": ("export.ort_policy", "OrtPolicy", "`pip install onnxruntime` and export/ort_policy.py"),
    "onnxruntime-int8": ("export.ort_policy", "OrtInt8Policy",
                         "`pip install onnxruntime` and export/ort_policy.py (int8 graph: export/quantize.py)"),
    "tensorrt": ("export.trt_policy", "TrtPolicy", "TensorRT on an NVIDIA GPU and export/trt_policy.py"),
}
_CONSTRUCTORS = ("from_checkpoint", "from_dir", "load")


class BackendError(RuntimeError):
    """The backend cannot be used (unknown name, missing module, missing model)."""


def check_backend(name: str, model_dir: str | Path | None) -> None:
    """Cheap checks before the server starts: a known backend name and an existing model directory."""
    if name not in BACKENDS and ":" not in name:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)} or MODULE:FACTORY")
    if name in BACKENDS:
        if model_dir is None:
            raise BackendError(f"--backend {name} needs --model DIR")
        if not Path(model_dir).is_dir():
            raise BackendError(f"model directory {model_dir} does not exist")


def _import(module_name: str, what: str, name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise BackendError(f"backend {name!r} is not available: {module_name} is missing (needs {what})") from err
        raise BackendError(f"backend {name!r} is not available: {err} (needs {what})") from err


def load_backend(name: str, model_dir: str | Path | None, threads: int | None = None) -> Policy:
    """Build the named backend's Policy for `model_dir`; BackendError with a clear message otherwise."""
    check_backend(name, model_dir)
    if name in BACKENDS:
        module_name, class_name, what = BACKENDS[name]
        cls = getattr(_import(module_name, what, name), class_name, None)
        if cls is None:
            raise BackendError(f"backend {name!r}: {module_name} defines no {class_name}")
        factory = next((getattr(cls, c) for c in _CONSTRUCTORS if callable(getattr(cls, c, None))), cls)
    else:
        module_name, _, attr = name.partition(":")
        factory = getattr(_import(module_name, module_name, name), attr, None)
        if not callable(factory):
            raise BackendError(f"backend {name!r}: {module_name} has no callable {attr!r}")
    policy = _call(factory, model_dir, threads)
    missing = [m for m in ("infer", "reset", "metadata") if not hasattr(policy, m)]
    if missing:
        raise BackendError(f"backend {name!r} built a {type(policy).__name__} without {', '.join(missing)}")
    return policy


def _call(factory: Any, model_dir: str | Path | None, threads: int | None) -> Any:
    """Pass the thread count under the name the factory takes (`threads` or `num_threads`), if any."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if threads is not None:
        for name in ("threads", "num_threads"):
            if name in params:
                return factory(model_dir, **{name: threads})
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return factory(model_dir, threads=threads)
    return factory(model_dir)
