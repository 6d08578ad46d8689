"""Checkpoint I/O shared by every model: safetensors for tensors, JSON for everything else.

A model checkpoint is a directory holding `model.safetensors` and `config.json`. Training state
for resume (optimizer, step, RNG) lives next to it in `optimizer.safetensors` +
`training_state.json`. Nothing is ever pickled.

Writes are atomic: `save_checkpoint` fills a temporary sibling directory and swaps it in, and
single files go through a temporary file plus `os.replace`, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lapa.errors import UserError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_STATE_FILE = "training_state.json"

_TIED_KEY = "lapa.tied"  # safetensors metadata: JSON {alias: canonical name}
_MAX_NAMES = 8  # names listed per category in an error message


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


# ----------------------------------------------------------------------------- small helpers


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of one safetensors file, or CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from err
    return tensors, metadata


def _write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """save_file, with tied/aliased tensors stored once and re-expanded by `_read_safetensors` users."""
    unique: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}  # (data_ptr, shape, stride, dtype) -> canonical name
    storages: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() > 0 and key in seen:  # an exact alias (tied weights): store once
            tied[name] = seen[key]
            continue
        ptr = t.untyped_storage().data_ptr() if t.numel() > 0 else None
        if ptr is not None and ptr in storages or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)  # a view into shared memory
        elif ptr is not None:
            storages.add(ptr)
            seen[key] = name
        unique[name] = t.contiguous()
    meta = dict(metadata)
    if tied:
        meta[_TIED_KEY] = json.dumps(tied, sort_keys=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(unique, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files; checkpoints are meant to be shared
    os.replace(tmp, path)


def _expand_tied(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    if _TIED_KEY not in metadata:
        return
    try:
        tied = json.loads(metadata[_TIED_KEY])
        for alias, canonical in tied.items():
            tensors[alias] = tensors[canonical]
    except (json.JSONDecodeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{path}: bad tied-tensor table in the header ({err})") from err


# ----------------------------------------------------------------------------- model checkpoints


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model.safetensors` + `config.json` (`config` merged with `extra`) atomically.

    An existing checkpoint directory is replaced as a whole; other files in it (e.g. the training
    state) are dropped, so write those afterwards with `save_training_state`.
    """
    directory = Path(directory)
    doc = dict(config)
    for key, value in (extra or {}).items():
        if key in doc:
            raise ValueError(f"extra key {key!r} collides with a config key")
        doc[key] = value
    text = json.dumps(doc, indent=2, sort_keys=True)  # fail before touching the disk

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _write_safetensors(tmp / MODEL_FILE, model.state_dict(), {"format": "pt"})
        (tmp / CONFIG_FILE).write_text(text)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old)  # onto an empty directory: allowed
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json as a dict, state dict) of a checkpoint directory. Tensors land on the CPU."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    config = _read_json(directory / CONFIG_FILE)
    path = directory / MODEL_FILE
    state, metadata = _read_safetensors(path)
    _expand_tied(state, metadata, path)
    return config, state


def load_state_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """load_state_dict(strict) with a CheckpointError that names every mismatching tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if names:
            shown = ", ".join(names[:_MAX_NAMES]) + (f", ... (+{len(names) - _MAX_NAMES})" if len(
                names) > _MAX_NAMES else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=True)


# ----------------------------------------------------------------------------- training state


@dataclass
class TrainingState:
    step: int
    rng_state: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> dict[str, Any]:
    """Global torch / numpy / python RNG states in a form `save_training_state` can store."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what code seeds
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8))
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].numpy().astype(np.uint32)
        np.random.set_state((s["name"], keys, s["pos"], s["has_gauss"], s["cached"]))  # noqa: NPY002
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of `obj`; tensors go to `tensors[path]`, tuples are tagged to survive JSON."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, Mapping):
        if not all(isinstance(k, str | int) for k in obj):
            raise TypeError(f"{path}: only str/int keys can be stored")
        if any(isinstance(k, int) for k in obj):
            return {"__intdict__": [[k, _flatten(v, f"{path}.{k}", tensors)] for k, v in obj.items()]}
        return {k: _flatten(v, f"{path}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{path}: cannot store a {type(obj).__name__} without pickling")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__intdict__" in obj:
            return {int(k): _unflatten(v, tensors) for k, v in obj["__intdict__"]}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_training_state(
    directory: str | os.PathLike,
    optimizer: torch.optim.Optimizer,
    step: int,
    rng_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Optimizer tensors -> `optimizer.safetensors`, the rest (step, RNG, extra) -> JSON."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    doc = {
        "step": int(step),
        "optimizer": _flatten(optimizer.state_dict(), "optimizer", tensors),
        "rng": _flatten(dict(rng_state), "rng", tensors) if rng_state is not None else None,
        "extra": _flatten(dict(extra or {}), "extra", tensors),
    }
    _write_safetensors(directory / OPTIMIZER_FILE, tensors, {"format": "pt"})
    # the JSON goes last: its presence marks the training state as complete
    _atomic_write_text(directory / TRAINING_STATE_FILE, json.dumps(doc, indent=1))


def load_training_state(
    directory: str | os.PathLike, optimizer: torch.optim.Optimizer | None = None
) -> TrainingState:
    """Read the training state; if `optimizer` is given, load its state (CheckpointError on mismatch)."""
    directory = Path(directory)
    doc = _read_json(directory / TRAINING_STATE_FILE)
    path = directory / OPTIMIZER_FILE
    tensors, metadata = _read_safetensors(path)
    _expand_tied(tensors, metadata, path)
    try:
        opt_state = _unflatten(doc["optimizer"], tensors)
        rng = _unflatten(doc["rng"], tensors) if doc.get("rng") is not None else None
        extra = _unflatten(doc.get("extra", {}), tensors)
        step = int(doc["step"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / TRAINING_STATE_FILE}: malformed training state ({err})") from err
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: optimizer state does not fit this optimizer ({err})") from err
    return TrainingState(step=step, rng_state=rng, extra=extra)
