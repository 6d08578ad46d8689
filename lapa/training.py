"""Checkpoint plumbing shared by the training loops (lapa/laq/train.py and lapa/policy/train.py).

A run keeps `checkpoints/step_NNNNNNNN/` directories and a `checkpoints/LATEST` pointer that names
the newest complete one; only the newest `keep_last` directories are kept.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lapa.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_state_strict,
    load_training_state,
    restore_rng_state,
    save_training_state,
)


def step_dir(root: Path, step: int) -> Path:
    """The checkpoint directory of a global step under a run's checkpoints/ folder."""
    return root / f"step_{step:08d}"


def commit_checkpoint(root: Path, directory: Path, optimizer: torch.optim.Optimizer, step: int,
                      keep_last: int) -> Path:
    """Finish a checkpoint whose model is saved in `directory`: add the optimizer, step and RNG state, point
    LATEST at it, then delete all but the newest `keep_last` step directories."""
    save_training_state(directory, optimizer, step, capture_rng_state())
    tmp = root / ".LATEST.tmp"
    tmp.write_text(directory.name)
    os.replace(tmp, root / "LATEST")  # only now is it the checkpoint to resume from
    for old in sorted(root.glob("step_*"))[:-keep_last]:
        if old != directory:
            shutil.rmtree(old, ignore_errors=True)
    return directory


def check_same_config(directory: Path, saved: Any, requested: Any) -> None:
    """Refuse to resume a run whose checkpoint was made with another config (both dataclasses of one type)."""
    if saved != requested:
        diff = {k: (v, getattr(requested, k)) for k, v in saved.to_dict().items() if getattr(requested, k) != v}
        raise CheckpointError(f"{directory}: checkpoint config differs from the requested one "
                              f"(key: (checkpoint, requested)) {diff}")


def restore_training(directory: Path, model: torch.nn.Module, state: dict[str, torch.Tensor],
                     optimizer: torch.optim.Optimizer) -> int:
    """Load the model tensors, optimizer and RNG state of a checkpoint; returns its global step."""
    load_state_strict(model, state, source=str(directory))
    ts = load_training_state(directory, optimizer)
    if ts.rng_state is not None:
        restore_rng_state(ts.rng_state)
    return ts.step


def json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no NaN / inf
