"""The experiment's configuration: methods, conditions, stages, sizes and budgets (`ExperimentConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lapa.errors import UserError

METHODS = ("scratch", "lapa", "actionvla", "vpt")
CONDITIONS = ("seen", "unseen")
STAGES = ("record", "laq", "label", "pretrain", "action-pretrain", "vpt", "finetune", "offline", "eval", "report")
GAP_TARGET = 0.75  # LAPA should recover this share of the Scratch -> ActionVLA gap (seen instructions)


@dataclass(frozen=True)
class ExperimentConfig:
    suite: str = "reach"  # see experiments/results/README.md for why not the four-task suite
    image_size: int = 64  # recorded frames and model input
    pretrain_episodes: int = 480  # the "action-free" videos
    finetune_episodes: int = 24  # the small labelled set (5%)
    pretrain_seed: int = 0  # recorder seeds base + index (+ 1_000_003 per retry)
    finetune_seed: int = 200_000
    heldout_seed: int = 300_000  # offline metrics; as many episodes as the finetuning set
    # stage 1
    laq_preset: str = "tiny"
    laq_steps: int = 1000
    laq_batch_size: int = 32
    laq_lr: float = 3e-4
    gap_s: float = 0.6
    codebook_size: int | None = None  # None: the preset's (8)
    # VLA
    vla_preset: str = "tiny"
    patch_size: int = 16  # 4x4 patches of 64x64 frames: as good per step as 8x8 here and 3x cheaper
    chunk_size: int = 2
    num_bins: int = 64
    batch_size: int = 16
    lr: float = 1e-3
    pretrain_steps: int = 6000  # the same for LAPA, ActionVLA and VPT
    finetune_steps: int = 2000  # the same for all four methods
    augment: bool = False
    idm_steps: int = 800
    # evaluation
    eval_episodes: int = 30  # per task family and instruction condition
    execute: str = "first"
    # machine
    threads: int = 2
    data_workers: int = 1
    progress: bool = True

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ExperimentConfig:
        if name not in PRESETS:
            raise UserError(f"unknown experiment preset {name!r}; choose from {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, ExperimentConfig] = {
    "default": ExperimentConfig(),
    # seconds, for tests: every stage runs, nothing learns
    "smoke": ExperimentConfig(suite="reach", pretrain_episodes=2, finetune_episodes=2, laq_steps=2, laq_batch_size=4,
                              pretrain_steps=2, finetune_steps=2, batch_size=4, idm_steps=2, eval_episodes=1,
                              threads=1, data_workers=0, progress=False),
}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings -> typed ExperimentConfig overrides."""
    fields = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise UserError(f"bad override {item!r}: use KEY=VALUE with KEY one of {sorted(fields)}")
        default = getattr(PRESETS["default"], key)
        if raw.lower() == "none":
            out[key] = None
        elif isinstance(default, bool):
            out[key] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int) or key == "codebook_size":
            out[key] = int(raw)
        elif isinstance(default, float):
            out[key] = float(raw)
        else:
            out[key] = raw
    return out
