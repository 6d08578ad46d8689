"""Shared stand-ins for VLA tests: a deterministic text encoder and tiny random action checkpoints.

Imported by the test modules as `vla_fakes` (like `policy_fakes`); the `torch_one_thread` fixture
they use lives in conftest.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.policy.action_tokenizer import ActionTokenizer
from lapa.policy.checkpoint_io import save_vla
from lapa.policy.config import VLAConfig
from lapa.policy.model import VLA


class FakeEncoder:
    """Deterministic 384-d unit vectors per string (stands in for MiniLM; no model load); counts the strings it
    encodes."""

    embedding_dim = 384
    name = "fake"

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts):
        self.encoded.extend(texts)
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=384)
            rows.append(v / np.linalg.norm(v))
        return torch.tensor(np.array(rows), dtype=torch.float32)


def fit_tokenizer(samples: int = 300, num_bins: int = 256) -> ActionTokenizer:
    """An ActionTokenizer fitted on `samples` small random actions (seed 0), half of them with the gripper closed."""
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.01, (samples, 7))
    a[:, 6] = rng.random(samples) < 0.5
    return ActionTokenizer.fit_new(a, num_bins=num_bins)


def save_random_action_vla(path: Path, *, preset: str = "tiny", extra: dict[str, Any] | None = None,
                           **config: Any) -> Path:
    """A random (torch seed 0) action VLA of a VLAConfig preset (`tiny`; `tabletop`: conv encoder, proprio
    state, l1 head) with `config` overrides and its tokenizer, saved at path."""
    vla_config = VLAConfig.preset(preset, **config)
    tok = fit_tokenizer(num_bins=vla_config.num_bins)
    torch.manual_seed(0)
    model = VLA(vla_config).replace_head_for_actions(tok)
    save_vla(path, model.eval(), model.config, tok, extra)
    return path


def export_random_policy(root: Path, preset: str, seed: int = 0, parity_samples: int | None = None,
                         **config: Any) -> Path:
    """A random checkpoint of `preset` (+ `config`) and a small random MiniLM under `root`, exported with
    the legacy exporter (seconds, not tens of seconds); returns the export directory."""
    from bench.random_models import random_checkpoint, random_text_encoder
    from export.onnx_export import export_onnx

    ckpt = random_checkpoint(root / "ckpt", preset=preset, seed=seed, **config)
    text = random_text_encoder(root / "text_encoder", hidden=32)
    extra = {} if parity_samples is None else {"parity_samples": parity_samples}
    export_onnx(ckpt, root / "export", text_encoder_dir=text, exporter="legacy", log=lambda _m: None, **extra)
    return root / "export"
