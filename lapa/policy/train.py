"""Stages 2 and 3: one VLA training loop for latent pretraining, action pretraining and finetuning.

- `pretrain_latent`   (LAPA stage 2): predict the LAQ codes of (x_t, x_{t+H}) from x_t + instruction.
- `pretrain_actions`  (the ActionVLA baseline, and VPT on pseudo-labels): the action head on
                       (true or inferred) actions of the pretraining episodes.
- `finetune_actions`  (stage 3): from "scratch", a latent checkpoint (latent head dropped, a fresh
                       action head added) or an action checkpoint (trunk kept; see below).

The shared loop (lapa/training.py) runs it: AdamW at a constant learning rate (as the reference),
grad clipping, tqdm progress, `metrics.jsonl` + `loss.png`, checkpoints under `checkpoints/step_N/`
(save_vla + optimizer + step) with a `LATEST` pointer, and `resume=True` continuing exactly: the
batch of step s is drawn from `default_rng([seed, s])`, so no data-loader state needs saving.

Finetuning an action-pretrained checkpoint: the trunk is kept and the tokenizer is re-fitted on
the finetuning actions. If chunk size, bin count and decoder match, the pretrained action head is
kept too (its bins are quantiles of the same action distribution, so token i keeps nearly the same
meaning: a better start than a random head); otherwise a fresh head replaces it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

import lapa
from lapa.checkpoint import TRAINING_STATE_FILE, CheckpointError, load_checkpoint, load_state_strict
from lapa.data.frame_pairs import dataset_image_size
from lapa.data.lazy_frames import LazyClipFrames
from lapa.distributed import DistEnv, check_same_everywhere, resolve_device
from lapa.errors import UserError
from lapa.parallel import ParallelModel, choose_parallel
from lapa.policy.action_tokenizer import ActionTokenizer
from lapa.policy.checkpoint_io import checkpoint_extra, load_vla, read_vla_config, save_vla
from lapa.policy.config import VLAConfig
from lapa.policy.datasets import ActionSet, Batch, LatentSet
from lapa.policy.model import VLA, RegressionHead, action_loss, goal_features, l1_action_loss, latent_loss
from lapa.policy.streaming import StepLoader, streaming_action_set, streaming_latent_set
from lapa.policy.text_encoder import instruction_encoder
from lapa.training import (
    LoopOptions,
    MetricsWindow,
    StepResult,
    TrainingRun,
    accumulate_step,
    check_same_config,
    json_float,
    latest_checkpoint,
    read_metrics,
    restore_parallel,
    scale_info,
    train,
)

log = logging.getLogger(__name__)

SCRATCH = "scratch"
LR_SCHEDULES = ("constant", "cosine")
MIN_LR_FRACTION = 0.1  # cosine: the last step's learning rate, as a fraction of lr
GOAL_LOSS_WEIGHT = 1.0  # goal_aux: L1 on the scaled final EE xyz, beside the action L1
GOAL_SCALE_MM = 150.0  # goal_features divides metres by 0.15: back to millimetres for the log


@dataclass
class TrainOptions:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4  # the reference's 2e-5 is for a 7B model, far too slow for a 1M one
    # "constant", or "cosine": lr decays along a half cosine to MIN_LR_FRACTION x lr at `steps`, so the
    # last checkpoint is not one random point of a noisy plateau (closed-loop success swings there)
    lr_schedule: str = "constant"
    # cosine: the step the decay starts at; the rate holds at lr before it. A run trained at a constant
    # rate can be resumed with a short decay phase (warmup-stable-decay), at the cost of that phase only
    lr_decay_start: int = 0
    weight_decay: float = 0.01  # on matrices only (not norms, biases)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    augment: bool | str = False  # True/"crop": resized crop + jitter; "shift": DrQ random shift (datasets)
    # instruction augmentation: any training wording of each sample's task; "broad" adds the broad set
    paraphrase: bool | str = False
    word_dropout: float = 0.0  # token form: each word row becomes padding with this probability (drop_words)
    word_noise: float = 0.0  # token form: Gaussian noise of this size relative to each word row's norm (jitter_words)
    sentence_noise: float = 0.0  # noise of this size relative to the sentence vector's norm (VLA._noisy_sentence)
    ckpt_every: int = 500
    log_every: int = 25
    keep_last: int = 2
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None leaves the process setting
    progress: bool = True
    grad_accum: int = 1  # micro-batches per optimizer step: global batch = batch_size x world size x grad_accum
    parallel: str = "auto"  # ddp | fsdp | auto (fsdp for the base preset) under torchrun
    device: str = "cpu"  # cpu | cuda | auto (the DistEnv passed to train_vla takes precedence)
    workers: int = 0  # DataLoader processes preparing batches ahead (0: in the training process)
    stream: bool = False  # frames stay in the videos, decoded when a batch draws them (lapa/policy/streaming.py)

    def __post_init__(self) -> None:
        if (self.steps < 0 or self.batch_size < 1 or self.ckpt_every < 1 or self.log_every < 1 or self.keep_last < 1
                or self.grad_accum < 1 or self.workers < 0):
            raise ValueError("steps >= 0 and batch_size, ckpt_every, log_every, keep_last, grad_accum >= 1 "
                             "are required")
        if not self.lr > 0 or self.grad_clip <= 0:
            raise ValueError(f"lr and grad_clip must be > 0, got {self.lr}, {self.grad_clip}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {self.word_dropout}")
        if not (self.word_noise >= 0.0 and self.sentence_noise >= 0.0):
            raise ValueError(f"word_noise and sentence_noise must be >= 0, got {self.word_noise}, "
                             f"{self.sentence_noise}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.lr_decay_start < max(self.steps, 1):
            raise ValueError(f"lr_decay_start must be in [0, steps), got {self.lr_decay_start} with steps {self.steps}")

    def lr_at(self, step: int) -> float:
        """The learning rate of the optimizer step taken after `step` steps (0 .. steps - 1); it
        depends on the step only, so a resumed run continues the same schedule."""
        if self.lr_schedule == "constant" or self.steps - self.lr_decay_start <= 1:
            return self.lr
        span = self.steps - 1 - self.lr_decay_start
        progress = min(1.0, max(0.0, (step - self.lr_decay_start) / span))
        low = MIN_LR_FRACTION * self.lr
        return low + 0.5 * (self.lr - low) * (1.0 + math.cos(math.pi * progress))


@dataclass
class VLATrainResult:
    checkpoint: Path | None  # newest checkpoint directory
    steps: int  # global step reached
    start_step: int  # step this call started from (> 0 after a resume)
    final_loss: float  # mean loss of the last log window (nan if nothing ran)
    samples_per_s: float
    seconds: float
    metrics_path: Path


class TrainingSet(Protocol):
    sources: list[str]

    def __len__(self) -> int: ...
    def sample(self, rng: np.random.Generator, batch_size: int, augment: bool = False) -> Batch: ...


# ----------------------------------------------------------------------------- checkpoints


def resolve_vla_checkpoint(path: str | os.PathLike) -> Path:
    """A VLA checkpoint directory, or a training run directory (its newest checkpoint)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise UserError(f"{path} is neither a VLA checkpoint (config.json + model.safetensors) nor a training run")
    return latest


def run_step(out_dir: str | os.PathLike) -> int:
    """Global step of the newest complete checkpoint of a training run (0 if none)."""
    latest = latest_checkpoint(out_dir)
    if latest is None:
        return 0
    return int(json.loads((latest / TRAINING_STATE_FILE).read_text())["step"])


def _load_for_resume(directory: Path, model: VLA, tokenizer: ActionTokenizer | None) -> None:
    """Check a run's checkpoint is the same setup and load its model tensors (before wrapping)."""
    _, saved_config, saved_tok = read_vla_config(directory)
    check_same_config(directory, saved_config, model.config)
    if (saved_tok is None) != (tokenizer is None) or (tokenizer is not None and saved_tok != tokenizer):
        raise CheckpointError(f"{directory}: the action tokenizer fitted on this data differs from the "
                              "checkpoint's (did the training data change?)")
    _, state = load_checkpoint(directory)
    load_state_strict(model, state, source=str(directory))


# ----------------------------------------------------------------------------- loss


def compute_loss(model: VLA, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the head on the batch, plus token accuracy (and action errors for actions)."""
    if batch.codes is not None:
        logits = model.latent_logits(batch.images, batch.text)  # (B, L, C)
        loss = latent_loss(logits, batch.codes)
        acc = (logits.argmax(-1) == batch.codes).float().mean()
        return loss, {"accuracy": float(acc)}
    assert batch.bins is not None and batch.mask is not None
    state = batch.states if model.config.state_dim else None
    head = model.action_head
    goal_loss = None
    if isinstance(head, RegressionHead):
        assert batch.actions is not None
        if head.goal_proj is not None and batch.goals is not None:
            normalized, goal = model.action_outputs(batch.images, batch.text, state)  # (B, K, 7), (B, 3)
            goal_loss = (goal - goal_features(batch.goals)).abs().mean()
        else:
            normalized = model(batch.images, batch.text, state=state)  # (B, K, 7)
        loss = l1_action_loss(normalized, head.normalize(batch.actions), batch.mask)
        if goal_loss is not None:
            loss = loss + GOAL_LOSS_WEIGHT * goal_loss
        with torch.no_grad():
            decoded = head.to_actions(normalized)  # (B, K, 7)
            pred = head.nearest_bins(decoded)  # (B, K, 7)
    else:
        prev = batch.bins if model.config.decoder == "autoregressive" else None  # teacher forcing
        logits = model(batch.images, batch.text, prev, state=state)  # (B, K, 7, nb)
        loss = action_loss(logits, batch.bins, batch.mask)
        with torch.no_grad():
            pred = logits.argmax(-1)  # (B, K, 7)
            decoded = head.decode(pred) if head is not None else None  # (B, K, 7)
    with torch.no_grad():
        m = batch.mask.unsqueeze(-1).expand_as(pred)  # (B, K, 7)
        stats = {"accuracy": float(((pred == batch.bins) & m).sum() / m.sum().clamp(min=1))}
        if goal_loss is not None:
            stats["goal_mae_mm"] = float(goal_loss) * GOAL_SCALE_MM
        if batch.actions is not None and decoded is not None:
            valid = batch.mask.float()  # (B, K)
            err = (decoded[..., :3] - batch.actions[..., :3]).abs().mean(-1)  # (B, K) metres
            stats["translation_mae_mm"] = float((err * valid).sum() / valid.sum().clamp(min=1) * 1000.0)
            grip = ((decoded[..., 6] >= 0.5) == (batch.actions[..., 6] >= 0.5)).float()  # (B, K)
            stats["gripper_accuracy"] = float((grip * valid).sum() / valid.sum().clamp(min=1))
    return loss, stats


# ----------------------------------------------------------------------------- the loop


def _optimizer(model: VLA, opts: TrainOptions) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opts.lr, betas=opts.betas)


def slice_batch(batch: Batch, part: slice) -> Batch:
    """The samples `part` of a batch (every tensor field sliced along its first dimension)."""
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[part] for f in dataclasses.fields(batch)
                                         if getattr(batch, f.name) is not None})


def batch_to(batch: Batch, device: torch.device) -> Batch:
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device, non_blocking=True)
                                         for f in dataclasses.fields(batch) if getattr(batch, f.name) is not None})


class _VLAStage:
    """The VLA's batches (drawn from the step's own RNG), step, metrics line and checkpoint.

    Every rank draws the step's whole global batch from `default_rng([seed, step])` and keeps its
    slices, so a run's samples depend on the global batch only, never on how it is spread over
    processes and accumulation steps (one process with batch 8 sees what two with batch 4 see).
    """

    def __init__(self, parallel: ParallelModel, tokenizer: ActionTokenizer | None, optimizer: torch.optim.Optimizer,
                 data: TrainingSet, opts: TrainOptions, provenance: dict[str, Any], title: str) -> None:
        self.parallel, self.model, self.env = parallel, parallel.model, parallel.env
        self.tokenizer, self.optimizer, self.data, self.opts = tokenizer, optimizer, data, opts
        self.provenance, self.title = provenance, title
        self.loader: StepLoader | None = None  # set when DataLoader workers prepare the batches

    def cpu_batch(self, step: int) -> list[Batch]:
        """This rank's `grad_accum` micro-batches of global step `step`, on the CPU."""
        rng = np.random.default_rng([self.opts.seed, step])  # the batch of a step never depends on history
        env, per, accum = self.env, self.opts.batch_size, self.opts.grad_accum
        if env.world_size == 1:
            full = self.data.sample(rng, per * accum, augment=self.opts.augment)
            return [full] if accum == 1 else [slice_batch(full, slice(i * per, (i + 1) * per)) for i in range(accum)]
        width = per * env.world_size  # one accumulation step of the whole world
        parts = [slice(i * width + env.rank * per, i * width + (env.rank + 1) * per) for i in range(accum)]
        frames = getattr(getattr(self.data, "clips", None), "frames", None)
        with contextlib.ExitStack() as stack:
            if isinstance(frames, LazyClipFrames):  # streamed frames: decode this rank's samples only
                wanted = np.zeros(width * accum, bool)
                for part in parts:
                    wanted[part] = True
                stack.enter_context(frames.only(wanted))
            full = self.data.sample(rng, width * accum, augment=self.opts.augment)
        return [slice_batch(full, part) for part in parts]

    def batch(self, step: int) -> list[Batch]:
        micro = self.loader.get(step) if self.loader is not None else self.cpu_batch(step)
        return [batch_to(b, self.env.device) for b in micro]

    def train_step(self, step: int, batch: list[Batch]) -> StepResult:
        for group in self.optimizer.param_groups:
            group["lr"] = self.opts.lr_at(step)
        loss, grad_norm, stats = accumulate_step(self.parallel, self.optimizer, batch, self.opts.grad_clip)
        means = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        global_batch = len(batch[0]) * len(batch) * self.env.world_size
        return StepResult(loss, global_batch, grad_norm, means=means)

    def metrics_row(self, step: int, window: MetricsWindow, now: float) -> dict[str, Any]:
        means = {k: json_float(window.mean(k)) for k in window.sums}
        return {"step": step, **means, "grad_norm": json_float(window.grad_norm), "lr": self.opts.lr_at(step - 1),
                "samples_per_s": window.samples_per_s(now)}

    def save(self, directory: Path, step: int) -> None:
        save_vla(directory, self.model, tokenizer=self.tokenizer, extra={"step": step, "provenance": self.provenance})

    def plot(self, metrics_path: Path, out_dir: Path) -> Path | None:
        return plot_metrics(metrics_path, out_dir, title=self.title)


def train_vla(model: VLA, tokenizer: ActionTokenizer | None, data: TrainingSet, out_dir: str | os.PathLike,
              opts: TrainOptions, *, resume: bool = False, provenance: dict[str, Any] | None = None,
              desc: str = "VLA", env: DistEnv | None = None, preset: str | None = None) -> VLATrainResult:
    """Train `model` on `data` until global step `opts.steps`; see the module docstring.

    Under torchrun pass the process's `env` (lapa.distributed.init): the model is wrapped in DDP or
    FSDP2 (`opts.parallel`; `auto` shards the `base` preset) and rank 0 alone writes the run.
    """
    if model.config.head == "action" and tokenizer is None:
        raise ValueError("an action-head model trains with its fitted ActionTokenizer")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    env = env or DistEnv(device=resolve_device(opts.device))
    kind = choose_parallel(opts.parallel, preset, env)
    options_doc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()}
    check_same_everywhere(env, {
        "model config": model.config.to_dict(), "options": {k: v for k, v in options_doc.items()
                                                            if k not in ("progress", "threads")},
        "action tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        "training data": {"sources": data.sources, "samples": len(data)},
    })
    run = TrainingRun(out_dir, resume, "pass --resume or pick a new --out", env)
    if run.resume_from is not None:
        _load_for_resume(run.resume_from, model, tokenizer)
    parallel = ParallelModel(model, compute_loss, env, kind)
    optimizer = _optimizer(model, opts)
    start = 0
    if run.resume_from is not None:
        start = restore_parallel(run.resume_from, parallel, optimizer)
        log.info("resuming %s from %s (step %d)", desc, run.resume_from, start)
    run.start_at(start)
    provenance = {
        **(provenance or {}), "options": options_doc,
        "train_samples": len(data), "recording_image_size": _recording_image_size(data.sources),
        "scale": scale_info(env, opts.batch_size, opts.grad_accum, kind),
        "lapa_version": lapa.__version__, "torch_version": torch.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    stage = _VLAStage(parallel, tokenizer, optimizer, data, opts, provenance, desc)
    if opts.workers > 0 and start < opts.steps:
        stage.loader = StepLoader(stage.cpu_batch, start, opts.steps, opts.workers)
    options = LoopOptions(opts.steps, ckpt_every=opts.ckpt_every, log_every=opts.log_every, keep_last=opts.keep_last,
                          progress=opts.progress, desc=desc, env=env)
    model.train()
    result = train(stage, options, run, start)
    model.eval()
    return VLATrainResult(
        checkpoint=result.checkpoint, steps=result.steps, start_step=start, final_loss=result.final_loss,
        samples_per_s=result.samples_per_s, seconds=result.seconds, metrics_path=run.metrics_path,
    )


def _recording_image_size(sources: list[str]) -> int | None:
    """The frame side the training data was recorded at (evaluation renders at it, then resizes as
    the data was); None when the sources disagree or do not say."""
    sizes = {dataset_image_size(s) for s in sources}
    return sizes.pop() if len(sizes) == 1 else None


def plot_metrics(metrics_path: str | os.PathLike, out_dir: str | os.PathLike, title: str = "VLA") -> Path | None:
    """loss.png: training loss and token accuracy against step (matplotlib Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(steps, [r.get("loss") or math.nan for r in rows])
    ax1.set(xlabel="step", ylabel="cross-entropy", yscale="log", title=f"{title}: training loss")
    ax1.grid(alpha=0.3)
    ax2.plot(steps, [r.get("accuracy") or math.nan for r in rows], label="token accuracy")
    if any("gripper_accuracy" in r for r in rows):
        ax2.plot(steps, [r.get("gripper_accuracy", math.nan) for r in rows], label="gripper accuracy")
    ax2.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="training accuracy")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "loss.png"
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------- the three stages


def load_text_encoder(encoder: Any | None = None) -> Any:
    if encoder is not None:
        return encoder
    from lapa.policy.text_encoder import TextEncoder

    return TextEncoder.load()


def _base_config(config: VLAConfig | None, preset: str, encoder: Any, **changes: Any) -> VLAConfig:
    config = config if config is not None else VLAConfig.preset(preset)
    return config.replace(text_dim=_token_width(encoder), **changes)


def _token_width(encoder: Any) -> int:
    """Floats per instruction token: the sentence width, whichever form the encoder is in."""
    return getattr(encoder, "token_dim", encoder.embedding_dim)


def pretrain_latent(labels: str | os.PathLike, out_dir: str | os.PathLike, *, config: VLAConfig | None = None,
                    preset: str = "tiny", opts: TrainOptions | None = None, resume: bool = False,
                    encoder: Any | None = None, env: DistEnv | None = None) -> VLATrainResult:
    """LAPA stage 2 on a label file (lapa laq label): latent head, cross-entropy on the LAQ codes."""
    opts = opts or TrainOptions()
    base = config if config is not None else VLAConfig.preset(preset)
    encoder = instruction_encoder(load_text_encoder(encoder), base.text_tokens)
    if opts.stream:
        data = streaming_latent_set(labels, base.image_size, encoder)
    else:
        data = LatentSet(labels, base.image_size, encoder, progress=opts.progress)
    config = _base_config(base, preset, encoder, head="latent", latent_seq_len=data.latent_seq_len,
                          latent_codebook_size=data.codebook_size)
    torch.manual_seed(opts.seed)
    model = VLA(config)
    provenance = {"stage": "latent_pretrain", "init": SCRATCH, "labels": str(labels), "datasets": data.sources,
                  "laq_checkpoint": data.meta.get("laq_checkpoint"), "gap_s": data.meta.get("gap_s")}
    return train_vla(model, None, data, out_dir, opts, resume=resume, provenance=provenance, desc="latent pretrain",
                     env=env, preset=preset)


def _action_data(data: ActionSet | list[str | os.PathLike], image_size: int, chunk_size: int, encoder: Any,
                 progress: bool, paraphrase: bool | str = False, stream: bool = False,
                 cameras: tuple[str, ...] = ("scene",)) -> ActionSet:
    if isinstance(data, ActionSet):
        if data.chunk_size != chunk_size or data.clips.frames.shape[1] != image_size:
            raise ValueError(f"the action set has chunk {data.chunk_size} and image size {data.clips.frames.shape[1]}, "
                             f"the model {chunk_size} and {image_size}")
        if 1 + len(data.clips.more_cameras) != len(cameras):
            raise ValueError(f"the action set has {1 + len(data.clips.more_cameras)} cameras, the model {cameras}")
        return data
    if stream:
        if len(cameras) > 1:
            raise UserError("--stream reads one camera: train a model with a wrist camera without --stream")
        return streaming_action_set(data, image_size, chunk_size, encoder, paraphrase=paraphrase)
    return ActionSet.from_lerobot(data, image_size, chunk_size, encoder, progress=progress, paraphrase=paraphrase,
                                  cameras=cameras)


def pretrain_actions(data: ActionSet | list[str | os.PathLike], out_dir: str | os.PathLike, *,
                     config: VLAConfig | None = None, preset: str = "tiny", opts: TrainOptions | None = None,
                     resume: bool = False, encoder: Any | None = None, stage: str = "action_pretrain",
                     extra_provenance: dict[str, Any] | None = None, env: DistEnv | None = None) -> VLATrainResult:
    """The ActionVLA baseline (true actions of the pretraining episodes) or VPT (an ActionSet of pseudo-labels)."""
    opts = opts or TrainOptions()
    encoder = load_text_encoder(encoder)
    config = _base_config(config, preset, encoder, head="action")
    encoder = instruction_encoder(encoder, config.text_tokens)
    data = _action_data(data, config.image_size, config.chunk_size, encoder, opts.progress, opts.paraphrase,
                        opts.stream)
    tokenizer = ActionTokenizer.fit_new(data.all_actions(), num_bins=config.num_bins)
    data.set_tokenizer(tokenizer)
    torch.manual_seed(opts.seed)
    model = VLA(config, tokenizer)
    provenance = {"stage": stage, "init": SCRATCH, "datasets": data.sources, **(extra_provenance or {})}
    return train_vla(model, tokenizer, data, out_dir, opts, resume=resume, provenance=provenance, desc=stage,
                     env=env, preset=preset)


def finetune_actions(init: str | os.PathLike, data: ActionSet | list[str | os.PathLike], out_dir: str | os.PathLike,
                     *, config: VLAConfig | None = None, preset: str = "tiny", chunk_size: int | None = None,
                     num_bins: int | None = None, decoder: str | None = None, action_output: str | None = None,
                     goal_aux: bool | None = None, state_history: tuple[int, ...] | None = None,
                     cameras: tuple[str, ...] | None = None, text_tokens: int | None = None,
                     text_pool: int | None = None, goal_target: str = "final",
                     data_weights: Sequence[float] | None = None,
                     opts: TrainOptions | None = None, resume: bool = False,
                     encoder: Any | None = None, env: DistEnv | None = None) -> VLATrainResult:
    """Stage 3 on robot episodes with actions, from `"scratch"` or a stage-2 / action-pretrained checkpoint.

    `config`/`preset` only matter from scratch; chunk_size, num_bins, decoder default to the
    init checkpoint's (or the config's) values. `state_history` (lags in ticks) gives the model a
    state history (lapa/state_history.py); None keeps the init's. `cameras` (e.g. ("scene", "wrist"))
    gives the model more cameras (VLA.with_cameras); None keeps the init's. `text_tokens` N gives the
    model the token form of the instruction (VLA.with_text_tokens), `text_pool` P its WordPool queries;
    None keeps the init's. `goal_target` "keyframe": goal_aux predicts the next gripper event's EE
    position instead of the episode's last (ActionSet.use_keyframe_goals). `data_weights`, one per
    dataset of `data`, sets each dataset's share of the batches (ActionSet.set_mixture); None: its size.
    """
    opts = opts or TrainOptions()
    if data_weights is not None and (isinstance(data, ActionSet) or len(data_weights) != len(data)):
        raise UserError(f"give one data weight per dataset: {len(data_weights)} weights for "
                        f"{'a prepared set' if isinstance(data, ActionSet) else f'{len(data)} datasets'}")
    encoder = load_text_encoder(encoder)
    torch.manual_seed(opts.seed)
    if str(init) == SCRATCH:
        base = _base_config(config, preset, encoder)
        init_label, model, head_choice = SCRATCH, None, "new"
    else:
        ckpt = resolve_vla_checkpoint(init)
        model, base, _ = load_vla(ckpt)
        _check_text_dim(ckpt, base, encoder)
        init_label = str(ckpt)
    text_tokens = base.text_tokens if text_tokens is None else text_tokens
    text_pool = base.text_pool if text_pool is None else text_pool
    encoder = instruction_encoder(encoder, text_tokens)
    head = {"chunk_size": chunk_size or base.chunk_size, "num_bins": num_bins or base.num_bins,
            "decoder": decoder or base.decoder, "action_output": action_output or base.action_output,
            "goal_aux": base.goal_aux if goal_aux is None else goal_aux}
    cameras = tuple(cameras) if cameras is not None else base.cameras
    data = _action_data(data, base.image_size, head["chunk_size"], encoder, opts.progress, opts.paraphrase,
                        opts.stream, cameras)
    tokenizer = ActionTokenizer.fit_new(data.all_actions(), num_bins=head["num_bins"])
    data.set_tokenizer(tokenizer)
    if model is None:
        model = VLA(base.replace(head="action", cameras=cameras, text_tokens=text_tokens, text_pool=text_pool, **head),
                    tokenizer)
    elif base.head == "action" and all(getattr(base, k) == v for k, v in head.items()):
        model.set_action_tokenizer(tokenizer)  # keep the pretrained action head, re-fitted bins
        head_choice = "kept (re-fitted bins)"
    else:
        model.replace_head_for_actions(tokenizer, **{k: v for k, v in head.items() if k != "num_bins"})
        head_choice = "new (latent head dropped)" if base.head == "latent" else "new (shape changed)"
    if state_history is not None and tuple(state_history) != model.config.state_history:
        model = model.with_state_history(tuple(state_history))
        model.set_action_tokenizer(tokenizer)
    if cameras != model.config.cameras:
        model = model.with_cameras(cameras)
        model.set_action_tokenizer(tokenizer)
    if (text_tokens, text_pool) != (model.config.text_tokens, model.config.text_pool):
        model = model.with_text_tokens(text_tokens, text_pool)
        model.set_action_tokenizer(tokenizer)
    data.state_lags = model.config.state_history
    if goal_target not in ("final", "keyframe"):
        raise ValueError(f"goal_target must be 'final' or 'keyframe', got {goal_target!r}")
    if goal_target == "keyframe":
        if not hasattr(data, "use_keyframe_goals"):
            raise UserError("--goal-target keyframe needs the decoded data set: train without --stream")
        data.use_keyframe_goals()
    for flag, value in (("word-dropout", opts.word_dropout), ("word-noise", opts.word_noise)):
        if not value:
            continue
        if not model.config.text_tokens:
            raise UserError(f"--{flag} acts on the words of the token form: give the model --text-tokens")
        if not hasattr(data, "word_dropout"):
            raise UserError(f"--{flag} needs the decoded data set: train without --stream")
        setattr(data, flag.replace("-", "_"), (model.config.text_tokens, value))
    model.sentence_noise = opts.sentence_noise
    if data_weights is not None:
        if not hasattr(data, "set_mixture"):
            raise UserError("--data-weights needs the decoded data set: train without --stream")
        data.set_mixture({str(root): float(w) for root, w in zip(data, data_weights, strict=True)})
    provenance = {"stage": "finetune", "init": init_label, "action_head": head_choice, "datasets": data.sources,
                  "state_history": list(model.config.state_history), "cameras": list(model.config.cameras),
                  "text_tokens": model.config.text_tokens, "text_pool": model.config.text_pool,
                  "goal_target": goal_target,
                  "data_weights": None if data_weights is None else [float(w) for w in data_weights],
                  "data_shares": ({root: round(data.share_of(root), 4) for root in data.sources}
                                  if hasattr(data, "share_of") else None)}
    return train_vla(model, tokenizer, data, out_dir, opts, resume=resume, provenance=provenance, desc="finetune",
                     env=env, preset=preset)


def train_latent_head(ckpt: str | os.PathLike, labels: str | os.PathLike, out_dir: str | os.PathLike, *,
                      latent_init: str | os.PathLike | None = None, opts: TrainOptions | None = None,
                      resume: bool = False, encoder: Any | None = None,
                      env: DistEnv | None = None) -> VLATrainResult:
    """A latent-action head beside a finetuned policy's action head, for the intent preview.

    Everything but the latent head is frozen, so the policy acts exactly as before (bit for bit):
    the head learns to read the LAQ codes of `labels` off the policy's own trunk. `latent_init`, a
    stage-2 checkpoint (typically the policy's own pretraining), gives the head its start.
    """
    opts = opts or TrainOptions()
    encoder = load_text_encoder(encoder)
    torch.manual_seed(opts.seed)
    path = resolve_vla_checkpoint(ckpt)
    policy, config, tokenizer = load_vla(path)
    if config.head != "action" or tokenizer is None:
        raise UserError(f"{path}: not a finetuned policy (an action head); the latent head goes beside one")
    encoder = instruction_encoder(encoder, config.text_tokens)
    _check_text_dim(path, config, encoder)
    data = LatentSet(labels, config.image_size, encoder, progress=opts.progress)
    if (data.latent_seq_len, data.codebook_size) != (config.latent_seq_len, config.latent_codebook_size):
        raise UserError(f"{labels}: {data.latent_seq_len} codes of {data.codebook_size}, the policy's lineage "
                        f"{config.latent_seq_len} of {config.latent_codebook_size}: labels from another LAQ")
    source = None
    if latent_init is not None and not config.latent_head:
        source, _, _ = load_vla(resolve_vla_checkpoint(latent_init))
    model = policy if config.latent_head else policy.with_latent_head(source)
    model.set_action_tokenizer(tokenizer)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("latent_head.")
    provenance = {"stage": "latent_head", "init": str(path), "latent_init": str(latent_init) if latent_init else None,
                  "labels": str(labels), "datasets": data.sources, "laq_checkpoint": data.meta.get("laq_checkpoint"),
                  "frozen": "everything but latent_head", "init_provenance": checkpoint_extra(path).get("provenance")}
    return train_vla(model, tokenizer, data, out_dir, opts, resume=resume, provenance=provenance,
                     desc="latent head", env=env)


def _check_text_dim(ckpt: str | os.PathLike, config: VLAConfig, encoder: Any) -> None:
    """The encoder's per-token width against the model's (the token form is chosen afterwards)."""
    width = _token_width(encoder)
    if config.text_dim != width:
        raise CheckpointError(f"{ckpt}: the model takes {config.text_dim}-d instruction embeddings, "
                              f"the text encoder makes {width}-d ones")


@torch.no_grad()
def evaluate_actions(ckpt: str | os.PathLike, data: list[str | os.PathLike], *, encoder: Any | None = None,
                     batch_size: int = 64) -> dict[str, float]:
    """Offline action prediction on held-out expert episodes (every step, in order, no augmentation).

    Cross-entropy and token accuracy as in training, plus the first action of each chunk decoded by
    argmax: translation MAE (mm), direction cosine on steps that move > 5 mm, gripper agreement.
    A graded signal where closed-loop success is still all-or-nothing.
    """
    from lapa.policy.vpt import compare_actions

    path = resolve_vla_checkpoint(ckpt)
    model, config, tokenizer = load_vla(path)
    if tokenizer is None:
        raise CheckpointError(f"{path}: a latent-pretraining checkpoint has no actions to evaluate")
    encoder = instruction_encoder(load_text_encoder(encoder), config.text_tokens)
    actions = ActionSet.from_lerobot(data, config.image_size, config.chunk_size, encoder, cameras=config.cameras)
    actions.set_tokenizer(tokenizer)
    actions.state_lags = config.state_history
    losses, accs, preds = [], [], []
    for start in range(0, len(actions), batch_size):
        idx = np.arange(start, min(start + batch_size, len(actions)))
        batch = actions.batch(idx)
        loss, stats = compute_loss(model, batch)
        losses.append(float(loss) * len(idx))
        accs.append(stats["accuracy"] * len(idx))
        state = batch.states if config.state_dim else None
        _, decoded = model.predict_actions(batch.images, batch.text, state=state)  # (B, K, 7)
        preds.append(decoded[:, 0].numpy())
    n = len(actions)
    first = compare_actions(np.concatenate(preds), actions.chunks[:, 0])
    return {"loss": sum(losses) / n, "accuracy": sum(accs) / n, "steps": n, **first}
