"""A policy server backend that misbehaves on demand: the scripted expert, or a checkpoint, whose
replies a mode file turns into NaN, huge, wrong-shaped or late actions (`lapa bench faults`).

Loaded by the real policy server: `python -m policy_server.app --backend bench.fault_policy:make_policy`
with `LAPA_FAULT_MODE_FILE` naming a small text file that the benchmark rewrites between runs
(read on every call, so a mode takes effect at the next request):

  ""           the wrapped policy's actions, untouched
  nan          the first action's x is NaN
  huge         every action scaled by 1000 (finite: the safety filter must clamp it)
  shape:K,D    actions of shape (K, D), e.g. shape:1,6 or shape:0,7
  late:S       the reply comes S seconds late

`LAPA_FAULT_MODEL` (optional) is a checkpoint directory served by the onnxruntime backend instead
of the expert.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

MODE_FILE_ENV = "LAPA_FAULT_MODE_FILE"
MODEL_ENV = "LAPA_FAULT_MODEL"


def parse_mode(text: str) -> tuple[str, Any]:
    """`(kind, argument)` of a mode string; ValueError for an unknown one."""
    text = text.strip()
    if not text:
        return "", None
    kind, _, arg = text.partition(":")
    if kind in ("nan", "huge"):
        return kind, None
    if kind == "late":
        return kind, float(arg)
    if kind == "shape":
        k, d = (int(x) for x in arg.split(","))
        return kind, (k, d)
    raise ValueError(f"unknown fault mode {text!r}")


def corrupt(actions: np.ndarray, kind: str, arg: Any) -> np.ndarray:
    """The reply's actions under a fault mode (not "late", which only delays)."""
    actions = np.array(actions, np.float32, copy=True)  # (K, 7)
    if kind == "nan":
        actions[0, 0] = np.nan
    elif kind == "huge":
        actions *= 1000.0
    elif kind == "shape":
        k, d = arg
        actions = np.resize(actions, (k, d)).astype(np.float32)
    return actions


class FaultyPolicy:
    """Wraps a Policy; `infer` applies the mode file's fault to each reply."""

    def __init__(self, inner: Any, mode_file: Path | None) -> None:
        self.inner = inner
        self.mode_file = mode_file
        self.backend = f"faulty({getattr(inner, 'backend', type(inner).__name__)})"

    @property
    def metadata(self) -> dict[str, Any]:
        return {**self.inner.metadata, "backend": self.backend}

    def mode(self) -> tuple[str, Any]:
        if self.mode_file is None:
            return "", None
        try:
            return parse_mode(self.mode_file.read_text())
        except FileNotFoundError:
            return "", None

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        kind, arg = self.mode()
        reply = dict(self.inner.infer(obs))
        if kind == "late":
            time.sleep(arg)
        elif kind:
            reply["actions"] = corrupt(reply["actions"], kind, arg)
        return reply

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def make_policy(model_dir: str | None = None, threads: int | None = None) -> FaultyPolicy:
    """The server-side factory: the expert (default) or `LAPA_FAULT_MODEL` through onnxruntime."""
    model = os.environ.get(MODEL_ENV)
    if model:
        from policy_server.backends import load_backend

        inner = load_backend("onnxruntime", model, threads)
    else:
        from lapa_ros.expert_policy import make_policy as make_expert

        inner = make_expert()
    mode_file = os.environ.get(MODE_FILE_ENV)
    return FaultyPolicy(inner, Path(mode_file) if mode_file else None)
