"""The VPT baseline: an inverse dynamics model (IDM) pseudo-labels action-free videos.

1. `train_idm`: a small CNN maps a frame pair (x_t, x_{t+1}) to the action a_t that led from one
   to the other, trained on the small labelled set (regression on standardised dx..dyaw, a
   logistic output for the gripper).
2. `pseudo_label`: the IDM labels every step of every pretraining clip (frames + captions only);
   the last frame of a clip gets a "hold" action (no motion, the previous gripper command), as
   the recorder writes it.
3. `lapa.policy.train.pretrain_actions` on those pseudo-actions, then the usual finetuning.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lapa
from lapa.action import ACTION_DIM
from lapa.checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from lapa.distributed import DistEnv, barrier, main_first
from lapa.errors import UserError
from lapa.policy.datasets import ClipFrames, all_clip_keys, load_clips, write_pseudo_actions
from lapa.training import LoopOptions, StepResult, optimizer_step, train

IDM_MODEL_TYPE = "idm"
GRIPPER = ACTION_DIM - 1


@dataclass(frozen=True)
class IDMConfig:
    image_size: int = 64
    width: int = 32  # channels of the first conv; doubled twice
    hidden: int = 256

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"IDM image_size must be a multiple of 16, got {self.image_size}")


class InverseDynamics(nn.Module):
    """uint8 frame pairs (B, 2, S, S, 3) -> (B, 7): standardised dx..dyaw and a gripper logit.

    Input channels: x_t, x_{t+1} and their difference (9), four stride-2 convs (S -> S/16), an MLP.
    Standardisation statistics are buffers, so a checkpoint carries them.
    """

    def __init__(self, config: IDMConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        chans = [9, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        g = config.image_size // 16
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * g * g, config.hidden), nn.GELU(),
                                 nn.Linear(config.hidden, ACTION_DIM))
        self.register_buffer("mean", torch.zeros(ACTION_DIM - 1))  # (6,) of the continuous dims
        self.register_buffer("std", torch.ones(ACTION_DIM - 1))  # (6,)

    def forward(self, pairs: Tensor) -> Tensor:
        x = pairs.float() / 255.0  # (B, 2, S, S, 3)
        a, b = x[:, 0].permute(0, 3, 1, 2), x[:, 1].permute(0, 3, 1, 2)  # (B, 3, S, S) each
        h = self.convs(torch.cat([a, b, (b - a) * 4.0], dim=1))  # (B, 4w, S/16, S/16)
        return self.mlp(h)  # (B, 7)

    def loss(self, pairs: Tensor, actions: Tensor) -> Tensor:
        out = self(pairs)  # (B, 7)
        target = (actions[:, :GRIPPER] - self.mean) / self.std  # (B, 6)
        mse = F.mse_loss(out[:, :GRIPPER], target)
        bce = F.binary_cross_entropy_with_logits(out[:, GRIPPER], (actions[:, GRIPPER] >= 0.5).float())
        return mse + bce

    @torch.no_grad()
    def predict(self, pairs: Tensor) -> Tensor:
        """(B, 2, S, S, 3) uint8 -> float32 actions (B, 7) in the action convention."""
        out = self(pairs)
        cont = out[:, :GRIPPER] * self.std + self.mean  # (B, 6)
        grip = (out[:, GRIPPER:] > 0).float()  # (B, 1)
        return torch.cat([cont, grip], dim=1)


def _pair_rows(clips: ClipFrames) -> np.ndarray:
    """Rows r of clips.frames whose successor r + 1 is in the same clip (pairs (x_t, x_{t+1}))."""
    return np.concatenate([clips.offsets[c] + np.arange(clips.length(c) - 1) for c in range(len(clips.keys))])


class _IDMStage:
    """The IDM's batches (frame pairs drawn from the step's own RNG) and step for the shared loop; no
    checkpoints while it trains (short, never resumed): `train_idm` saves the final model."""

    def __init__(self, model: InverseDynamics, optimizer: torch.optim.Optimizer, frames: np.ndarray,
                 actions: np.ndarray, rows: np.ndarray, batch_size: int, seed: int) -> None:
        self.model, self.optimizer, self.rows, self.batch_size, self.seed = model, optimizer, rows, batch_size, seed
        self.frames = torch.from_numpy(frames)  # (F, S, S, 3)
        self.actions = torch.from_numpy(actions)  # (F, 7)
        self.losses: list[float] = []

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.seed, step])
        r = torch.from_numpy(self.rows[rng.integers(0, len(self.rows), self.batch_size)])  # (B,)
        return torch.stack([self.frames[r], self.frames[r + 1]], dim=1), self.actions[r]  # (B, 2, S, S, 3), (B, 7)

    def train_step(self, step: int, batch: tuple[Tensor, Tensor]) -> StepResult:
        pairs, actions = batch
        loss = self.model.loss(pairs, actions)
        grad_norm = optimizer_step(self.model, self.optimizer, loss, 1.0)
        self.losses.append(loss.item())
        return StepResult(self.losses[-1], len(pairs), grad_norm)


@dataclass
class IDMResult:
    checkpoint: Path
    final_loss: float
    steps: int
    seconds: float
    train_metrics: dict[str, float]


def train_idm(roots: list[str | os.PathLike], out_dir: str | os.PathLike, *, image_size: int = 64,
              steps: int = 1000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
              progress: bool = True, config: IDMConfig | None = None) -> IDMResult:
    """Train the IDM on LeRobot episodes with actions; writes a checkpoint to out_dir (model + config.json).

    Short (minutes on a CPU) and not resumable: a rerun starts over.
    """
    config = config or IDMConfig(image_size=image_size)
    clips = load_clips(all_clip_keys(roots), config.image_size, progress=progress)
    if any(a is None for a in clips.actions):
        raise UserError("the IDM trains on episodes with actions (LeRobot datasets)")
    actions = np.concatenate(clips.actions)  # (F, 7) aligned with clips.frames rows
    rows = _pair_rows(clips)  # (N,)
    torch.manual_seed(seed)
    model = InverseDynamics(config)
    cont = actions[rows, :GRIPPER]
    model.mean.copy_(torch.from_numpy(cont.mean(0)))
    model.std.copy_(torch.from_numpy(np.maximum(cont.std(0), 1e-4)))  # constant dims (droll) stay finite
    stage = _IDMStage(model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4), clips.frames, actions,
                      rows, batch_size, seed)
    t0 = time.perf_counter()
    model.train()
    train(stage, LoopOptions(steps, progress=progress, desc="IDM"))
    model.eval()
    losses = stage.losses
    pred = predict_clip_actions(model, clips)  # on its own training data: a sanity figure only
    metrics = compare_actions(np.concatenate([p[:-1] for p in pred]),
                              np.concatenate([a[:-1] for a in clips.actions]))  # type: ignore[index]
    out_dir = Path(out_dir)
    doc = {"model_type": IDM_MODEL_TYPE, "idm": asdict(config)}
    extra = {"provenance": {"stage": "idm", "datasets": sorted({k[0] for k in clips.keys}), "steps": steps,
                            "batch_size": batch_size, "lr": lr, "seed": seed, "lapa_version": lapa.__version__,
                            "train_metrics": metrics,
                            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}
    save_checkpoint(out_dir, model, doc, extra)
    final = float(np.mean(losses[-50:])) if losses else math.nan
    return IDMResult(out_dir, final, steps, time.perf_counter() - t0, metrics)


def load_idm(directory: str | os.PathLike) -> InverseDynamics:
    doc, state = load_checkpoint(directory)
    if doc.get("model_type") != IDM_MODEL_TYPE:
        raise CheckpointError(f"{directory}: not an IDM checkpoint (model_type={doc.get('model_type')!r})")
    try:
        config = IDMConfig(**doc["idm"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}/config.json: bad IDM config ({err})") from err
    model = InverseDynamics(config)
    load_state_strict(model, state, source=str(directory))
    return model.eval()


@torch.no_grad()
def predict_clip_actions(model: InverseDynamics, clips: ClipFrames, batch_size: int = 256) -> list[np.ndarray]:
    """Per clip (T, 7) float32: a_t from (x_t, x_{t+1}); the last step holds still."""
    frames = torch.from_numpy(clips.frames)
    out = []
    for c in range(len(clips.keys)):
        start, T = int(clips.offsets[c]), clips.length(c)
        preds = [np.zeros((0, ACTION_DIM), np.float32)]
        for s in range(0, T - 1, batch_size):
            r = torch.arange(start + s, start + min(s + batch_size, T - 1))
            preds.append(model.predict(torch.stack([frames[r], frames[r + 1]], dim=1)).numpy())
        acts = np.concatenate(preds)  # (T - 1, 7)
        hold = np.zeros((1, ACTION_DIM), np.float32)
        hold[0, GRIPPER] = acts[-1, GRIPPER] if len(acts) else 1.0
        out.append(np.concatenate([acts, hold]).astype(np.float32))
    return out


def pseudo_label(idm_dir: str | os.PathLike, roots: list[str | os.PathLike], out: str | os.PathLike,
                 progress: bool = True) -> dict[str, Any]:
    """Label every frame of the (action-free) clips of `roots`; writes a pseudo-action parquet file.

    Only frames and captions are read: recorded actions in a LeRobot source are ignored.
    """
    model = load_idm(idm_dir)
    keys = all_clip_keys(roots)
    clips = load_clips(keys, model.config.image_size, progress=progress)
    t0 = time.perf_counter()
    actions = predict_clip_actions(model, clips)
    meta = {"idm_checkpoint": str(idm_dir), "image_size": model.config.image_size, "clips": len(keys),
            "frames": int(sum(len(a) for a in actions))}
    write_pseudo_actions(out, keys, actions, meta)
    meta["seconds"] = time.perf_counter() - t0
    return meta


def compare_actions(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """How close (pseudo-)actions (N, 7) are to true ones: translation MAE (mm), direction cosine on
    steps that move more than 5 mm, gripper agreement."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    mae_mm = float(np.abs(pred[:, :3] - true[:, :3]).mean() * 1000.0)
    norms = np.linalg.norm(pred[:, :3], axis=1) * np.linalg.norm(true[:, :3], axis=1)
    cos = np.sum(pred[:, :3] * true[:, :3], axis=1) / (norms + 1e-12)
    moving = np.linalg.norm(true[:, :3], axis=1) > 0.005
    return {"translation_mae_mm": mae_mm,
            "direction_cosine": float(cos[moving].mean()) if moving.any() else math.nan,
            "gripper_accuracy": float(np.mean((pred[:, GRIPPER] >= 0.5) == (true[:, GRIPPER] >= 0.5)))}


def recorded_actions(root: str | os.PathLike) -> dict[int, np.ndarray]:
    """episode index -> (T, 7) recorded actions of a LeRobot v3 dataset, from its parquet data only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(root).glob("data/*/*.parquet"))
    if not files:
        return {}
    table = pa.concat_tables(pq.read_table(f, columns=["episode_index", "frame_index", "action"]) for f in files)
    ep = table.column("episode_index").to_numpy()
    fr = table.column("frame_index").to_numpy()
    acts = np.asarray(table.column("action").combine_chunks().flatten()).reshape(-1, ACTION_DIM)
    order = np.lexsort((fr, ep))
    ep, acts = ep[order], acts[order]
    return {int(e): acts[ep == e].astype(np.float32) for e in np.unique(ep)}


def pseudo_label_quality(pseudo_path: str | os.PathLike, lerobot_roots: list[str | os.PathLike]) -> dict[str, float]:
    """Diagnostics only: the pseudo-actions against the recorded ones (when the videos have them)."""
    from lapa.policy.datasets import read_pseudo_actions

    keys, pseudo = read_pseudo_actions(pseudo_path)
    recorded = {str(r): recorded_actions(r) for r in lerobot_roots}
    pred, true = [], []
    for (root, index), acts in zip(keys, pseudo, strict=True):
        ep_actions = recorded.get(root, {}).get(index)
        if ep_actions is not None and len(ep_actions) == len(acts):
            pred.append(acts[:-1])
            true.append(ep_actions[:-1])
    if not pred:
        return {}
    return compare_actions(np.concatenate(pred), np.concatenate(true))


def run_vpt(labelled: list[str | os.PathLike], videos: list[str | os.PathLike], out_dir: str | os.PathLike, *,
            config: Any = None, opts: Any = None, idm_steps: int = 1000, idm_batch_size: int = 64,
            resume: bool = False, encoder: Any | None = None, env: DistEnv | None = None) -> Any:
    """IDM -> pseudo-labels -> action pretraining, under out_dir/{idm, pseudo_actions.parquet, pretrain}.

    With `resume`, finished parts (the IDM checkpoint, the pseudo-label file) are reused and the
    pretraining run continues from its newest checkpoint.
    """
    import json

    from lapa.policy.config import VLAConfig
    from lapa.policy.datasets import ActionSet
    from lapa.policy.train import TrainOptions, load_text_encoder, pretrain_actions

    env = env or DistEnv()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise UserError(f"{out_dir} is not empty; pass --resume to continue it or pick a new --out")
    barrier(env)  # every rank looked before rank 0 starts writing
    config = config or VLAConfig.preset("tiny")
    opts = opts or TrainOptions()
    idm_dir, pseudo = out_dir / "idm", out_dir / "pseudo_actions.parquet"
    with main_first(env):  # the IDM and its pseudo-labels are made once, by rank 0; the others read them
        if not (idm_dir / "config.json").is_file():
            train_idm(labelled, idm_dir, image_size=config.image_size, steps=idm_steps, batch_size=idm_batch_size,
                      seed=opts.seed, progress=opts.progress)
        if not pseudo.is_file():
            meta = pseudo_label(idm_dir, videos, pseudo, progress=opts.progress)
            lerobot = [v for v in videos if (Path(v) / "meta" / "info.json").is_file()]
            quality = pseudo_label_quality(pseudo, lerobot) if lerobot else {}
            (out_dir / "pseudo_quality.json").write_text(json.dumps({**meta, "vs_recorded_actions": quality},
                                                                    indent=2))
    encoder = load_text_encoder(encoder)
    data = ActionSet.from_pseudo_labels(pseudo, config.image_size, config.chunk_size, encoder, progress=opts.progress)
    return pretrain_actions(data, out_dir / "pretrain", config=config, opts=opts, resume=resume, encoder=encoder,
                            stage="vpt_pretrain", extra_provenance={"pseudo_actions": str(pseudo),
                                                                   "idm_checkpoint": str(idm_dir)}, env=env)
