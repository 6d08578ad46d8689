"""The experiment's configuration: methods, conditions, stages, sizes and budgets (`ExperimentConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lapa.config_checks import PRECISIONS
from lapa.errors import UserError

METHODS = ("scratch", "lapa", "actionvla", "vpt")
CONDITIONS = ("seen", "unseen")
STAGES = ("record", "laq", "label", "pretrain", "action-pretrain", "vpt", "finetune", "offline", "eval", "report")
GAP_TARGET = 0.60  # LAPA should recover this share of the Scratch -> ActionVLA gap (seen instructions)
ACTIONVLA_MARGIN = 0.30  # ActionVLA must beat Scratch by this much (seen): a gap worth recovering
AUGMENTS = ("none", "crop", "shift")
PARAPHRASES = ("none", "templates", "broad")
EXECUTE_MODES = ("first", "chunk", "ensemble")


@dataclass(frozen=True)
class ExperimentConfig:
    suite: str = "reach"  # see experiments/results/README.md for why not the four-task suite
    image_size: int = 64  # model input (and recorded frames unless record_image_size)
    record_image_size: int | None = None  # recorded frames, resized to image_size for training
    pretrain_episodes: int = 480  # the "action-free" videos
    finetune_episodes: int = 24  # the small labelled set (5%)
    pretrain_seed: int = 0  # recorder seeds base + index (+ 1_000_003 per retry)
    finetune_seed: int = 200_000
    heldout_seed: int = 300_000  # offline metrics; as many episodes as the finetuning set
    # the recorded expert (lapa.sim.record.ExpertOptions; the policy recipe's data)
    expert_noise_m: float = 0.002
    dart_noise_m: float = 0.0
    until_done: bool = False
    settle_steps: int = 0
    start_jitter_m: float = 0.0
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
    augment: str = "none"  # finetuning images: none | crop | shift
    augment_pretraining: bool = False  # the same augmentation in the three pretrainings
    paraphrase: str = "none"  # finetuning instructions: none | templates | broad
    goal_aux: bool = False  # finetuning: the l1 head's goal query (VLAConfig.goal_aux)
    state_history: str = ""  # finetuning: past states as input, ticks back, e.g. "3,6,12"
    idm_steps: int = 800
    # evaluation
    eval_episodes: int = 30  # per task family and instruction condition
    execute: str = "first"  # first (one action per call) | chunk (whole chunks) | ensemble (temporal ensembling)
    ensemble_decay: float = 0.5
    bootstrap_samples: int = 2000  # resamples for the interval of the gap LAPA recovers
    # machine
    threads: int = 2
    precision: str = "auto"  # training autocast (lapa.config_checks.PRECISIONS): bf16 ~2.1x faster on AVX512-BF16
    data_workers: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("augment", AUGMENTS), ("paraphrase", PARAPHRASES), ("execute", EXECUTE_MODES),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def lags(self) -> tuple[int, ...]:
        """state_history as ticks (checked: increasing positive ints)."""
        from lapa.state_history import check_lags

        text = self.state_history.strip()
        lags = tuple(int(x) for x in text.split(",")) if text and text != "none" else ()
        try:
            check_lags(lags)
        except ValueError as err:
            raise UserError(f"state_history {self.state_history!r}: {err}") from err
        return lags

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
    # the policy recipe of experiments/policy (the shipped model's) for every method: reach and push,
    # 40 labelled episodes per family and 10x as many action-free ones, 100 evaluation episodes per
    # family and condition; sized for about 2 hours on 2 cores (experiments/results/README.md)
    "recipe": ExperimentConfig(
        suite="reach_push", image_size=64, record_image_size=128, pretrain_episodes=800, finetune_episodes=80,
        expert_noise_m=0.0, dart_noise_m=0.005, until_done=True, settle_steps=5, start_jitter_m=0.1,
        vla_preset="tabletop", patch_size=8, chunk_size=4, num_bins=64, batch_size=64, lr=3e-4,
        pretrain_steps=1500, finetune_steps=1500, augment="shift", augment_pretraining=True, paraphrase="broad",
        goal_aux=True, state_history="3,6,12", eval_episodes=100, execute="ensemble"),
}
# the recipe at the size that separates the methods (experiments/results/README.md, issue 11): 200 labelled
# episodes and 10x as many action-free ones, 6000 pretraining and 3000 finetuning steps in bf16, 50 evaluation
# episodes per family and condition (100 per method and condition); about 2.5 h of stages on 2 cores
PRESETS["comparison"] = dataclasses.replace(
    PRESETS["recipe"], pretrain_episodes=2000, finetune_episodes=200, pretrain_steps=6000, finetune_steps=3000,
    eval_episodes=50, precision="bf16")


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
        if raw.lower() == "none" and not isinstance(default, str):
            out[key] = None
        elif isinstance(default, bool):
            out[key] = raw.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int) or key in ("codebook_size", "record_image_size"):
            out[key] = int(raw)
        elif isinstance(default, float):
            out[key] = float(raw)
        else:
            out[key] = raw
    return out
