"""The one training loop of every stage (LAQ, the VLA, the IDM): progress, metrics, checkpoints, resume.

A stage supplies its batches, its optimizer step and what a checkpoint holds (`Stage`); `train`
runs it to a global step count. With a `TrainingRun` the loop writes, under the run directory:

    checkpoints/step_00001000/   the stage's model files, then optimizer.safetensors, training_state.json
    checkpoints/LATEST           name of the newest complete checkpoint (written last)
    metrics.jsonl                one JSON line per log window (the stage's own keys)
    loss.png, ...                the stage's curves, redrawn at every checkpoint

and `resume` continues exactly: model, optimizer, step and RNG come back from the newest
checkpoint and metrics logged after it are dropped. Only the newest `keep_last` step directories
are kept. Without a run (the IDM: short, never resumed) the loop only steps and shows progress.

Under torchrun (lapa/distributed.py) every rank runs the loop on its shard of the data; a stage
steps through a `ParallelModel` (lapa/parallel.py: DDP or FSDP2) with `accumulate_step`. Only
rank 0 writes checkpoints and metrics and shows progress; checkpoints keep the single-process
layout, so a run resumes under any world size. The logged loss and means are averaged over ranks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from lapa.checkpoint import (
    TRAINING_STATE_FILE,
    CheckpointError,
    capture_rng_state,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from lapa.distributed import DistEnv, all_reduce_mean, barrier, broadcast_json
from lapa.errors import UserError
from lapa.parallel import OptimizerView, ParallelModel, full_state_view

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------- checkpoints


def step_dir(root: Path, step: int) -> Path:
    """The checkpoint directory of a global step under a run's checkpoints/ folder."""
    return root / f"step_{step:08d}"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint under out_dir/checkpoints, or None."""
    root = Path(out_dir) / CHECKPOINTS
    pointer = root / "LATEST"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / TRAINING_STATE_FILE).is_file():
            return candidate
    complete = sorted(d for d in root.glob("step_*") if (d / TRAINING_STATE_FILE).is_file())
    return complete[-1] if complete else None


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


def restore_parallel(directory: Path, parallel: ParallelModel, optimizer: torch.optim.Optimizer) -> int:
    """Load a checkpoint's optimizer and RNG state through `parallel` (the model is loaded before
    wrapping, see `load_state_strict`); returns its global step."""
    ts = load_training_state(directory, OptimizerView(optimizer, parallel))  # type: ignore[arg-type]
    if ts.rng_state is not None:
        restore_rng_state(ts.rng_state)
    return ts.step


def check_same_config(directory: Path, saved: Any, requested: Any) -> None:
    """Refuse to resume a run whose checkpoint was made with another config (both dataclasses of one type)."""
    if saved != requested:
        diff = {k: (v, getattr(requested, k)) for k, v in saved.to_dict().items() if getattr(requested, k) != v}
        raise CheckpointError(f"{directory}: checkpoint config differs from the requested one "
                              f"(key: (checkpoint, requested)) {diff}")


# ----------------------------------------------------------------------------- metrics


def json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no NaN / inf


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(path: Path, max_step: int) -> None:
    """Drop lines logged after the checkpoint we resume from, so history has no duplicates."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= max_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line from a crash
    path.write_text("".join(f"{line}\n" for line in keep))


@dataclass
class StepResult:
    """What one optimizer step reports."""

    loss: float
    batch_size: int  # samples (frame pairs) in the batch: the throughput counts these
    grad_norm: float = math.nan
    means: dict[str, float] = field(default_factory=dict)  # averaged over a log window, like the loss
    totals: dict[str, Any] = field(default_factory=dict)  # summed over a log window (counts, usage tensors)


class MetricsWindow:
    """The steps since the last metrics line: step count, samples, sums and totals, start time."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.n = 0
        self.samples = 0
        self.sums: dict[str, float] = {}
        self.totals: dict[str, Any] = {}
        self.t0 = now
        self.grad_norm = math.nan  # of the window's last step

    def add(self, result: StepResult) -> None:
        self.n += 1
        self.samples += result.batch_size
        self.grad_norm = result.grad_norm
        for k, v in {"loss": result.loss, **result.means}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        for k, v in result.totals.items():
            self.totals[k] = self.totals[k] + v if k in self.totals else v

    def mean(self, key: str) -> float:
        return self.sums.get(key, math.nan) / max(self.n, 1)

    def samples_per_s(self, now: float) -> float:
        return self.samples / max(now - self.t0, 1e-9)


# ----------------------------------------------------------------------------- what a stage supplies


class Stage(Protocol):
    """One kind of training: its batches and its step; with a `TrainingRun` also its metrics line,
    its checkpoint files and its curves."""

    optimizer: torch.optim.Optimizer

    def batch(self, step: int) -> Any | None:
        """The batch of global step `step` (0-based, before the step runs); None when the data ran out."""

    def train_step(self, step: int, batch: Any) -> StepResult:
        """Forward, backward and the optimizer step on `batch` (see `optimizer_step`)."""

    def metrics_row(self, step: int, window: MetricsWindow, now: float) -> dict[str, Any]:
        """The metrics.jsonl line of a window that ends at `step`."""

    def save(self, directory: Path, step: int) -> None:
        """Write the model files of a checkpoint (the loop adds optimizer and training state)."""

    def plot(self, metrics_path: Path, out_dir: Path) -> Any:
        """Draw the curves from metrics.jsonl into out_dir."""


def accumulate_step(parallel: ParallelModel, optimizer: torch.optim.Optimizer, micro_batches: list[Any],
                    grad_clip: float) -> tuple[float, float, list[Any]]:
    """One optimizer step over this rank's micro-batches: each loss scaled by 1/len, the gradient
    all-reduce only on the last, global-norm clipping, step.

    Returns (this rank's mean loss, the gradient norm before clipping, each micro-batch's extras).
    """
    optimizer.zero_grad(set_to_none=True)
    n, total, extras = len(micro_batches), 0.0, []
    for i, micro in enumerate(micro_batches):
        with parallel.accumulating(i < n - 1):
            loss, extra = parallel.forward(micro)
            (loss / n).backward()
        total += float(loss.detach())
        extras.append(extra)
    parallel.sync_replicated_grads()
    grad_norm = parallel.clip_grad_norm(grad_clip)
    optimizer.step()
    return total / n, grad_norm, extras


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   grad_clip: float) -> float:
    """Backward, clip the gradient norm to `grad_clip`, step; returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    return grad_norm


def scale_info(env: DistEnv, per_device_batch: int, grad_accum: int, parallel: str) -> dict[str, Any]:
    """How a run is spread: stated in the log at start and in every checkpoint's config.json."""
    if grad_accum < 1 or per_device_batch < 1:
        raise UserError(f"--batch-size and --grad-accum must be >= 1, got {per_device_batch}, {grad_accum}")
    info = {"world_size": env.world_size, "per_device_batch": per_device_batch, "grad_accum": grad_accum,
            "global_batch": per_device_batch * env.world_size * grad_accum, "parallel": parallel,
            "device": env.device.type, "precision": env.precision}
    if env.is_main:
        tqdm.write(f"global batch {info['global_batch']} = {per_device_batch} per device x {env.world_size} "
                   f"process(es) x {grad_accum} accumulation step(s) ({parallel}, {env.device.type}, "
                   f"{env.precision})", file=sys.stderr)
    return info


# ----------------------------------------------------------------------------- the run directory


class TrainingRun:
    """A run directory: refuses to start over a run with checkpoints unless resuming.

    Rank 0 decides (and tells the others) which checkpoint to resume from and is the only writer;
    the other ranks read that checkpoint, so a resumed multi-node run needs a shared filesystem.
    """

    def __init__(self, out_dir: str | os.PathLike, resume: bool, how_to_resume: str,
                 env: DistEnv | None = None) -> None:
        self.env = env or DistEnv()
        self.out_dir = Path(out_dir)
        self.checkpoints = self.out_dir / CHECKPOINTS
        self.metrics_path = self.out_dir / METRICS_FILE
        found = None
        if self.env.is_main:
            previous = latest_checkpoint(self.out_dir)
            found = (str(previous) if previous is not None else None,
                     f"{self.out_dir} already holds checkpoints ({previous.name}); {how_to_resume}"
                     if previous is not None and not resume else None)
            if found[1] is None:
                self.checkpoints.mkdir(parents=True, exist_ok=True)
        previous_name, refusal = broadcast_json(self.env, found)
        if refusal is not None:
            raise UserError(refusal)
        self.resume_from: Path | None = Path(previous_name) if resume and previous_name else None

    def start_at(self, step: int) -> None:
        """The run continues from `step`: forget metrics logged after it."""
        if self.env.is_main:
            truncate_metrics(self.metrics_path, step)

    def log(self, row: dict[str, Any]) -> None:
        if self.env.is_main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def checkpoint(self, stage: Stage, step: int, keep_last: int) -> Path:
        """Gather the model and optimizer (a collective under FSDP), write them on rank 0, wait for it."""
        directory = step_dir(self.checkpoints, step)
        parallel = getattr(stage, "parallel", None)
        if parallel is None:
            if self.env.is_main:
                stage.save(directory, step)
                commit_checkpoint(self.checkpoints, directory, stage.optimizer, step, keep_last)
        else:
            sharded = parallel.kind == "fsdp"  # gathering full tensors is a collective: every rank joins
            model_state = parallel.full_state_dict() if sharded else None
            optimizer_state = parallel.optimizer_state_dict(stage.optimizer) if sharded else None
            if self.env.is_main:
                if model_state is not None:
                    with full_state_view(parallel.model, model_state):
                        stage.save(directory, step)
                else:
                    stage.save(directory, step)
                view = OptimizerView(stage.optimizer, parallel, optimizer_state)
                commit_checkpoint(self.checkpoints, directory, view, step, keep_last)  # type: ignore[arg-type]
        if self.env.is_main:
            stage.plot(self.metrics_path, self.out_dir)
        barrier(self.env)
        return directory


# ----------------------------------------------------------------------------- the loop


@dataclass
class LoopOptions:
    steps: int  # the global step to train to
    ckpt_every: int = 1000
    log_every: int = 10
    keep_last: int = 2
    progress: bool = True
    desc: str = "train"  # progress bar label
    env: DistEnv = field(default_factory=DistEnv)  # this process's rank (progress and metrics on rank 0 only)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.ckpt_every < 1 or self.log_every < 1 or self.keep_last < 1:
            raise ValueError("steps must be >= 0 and ckpt_every, log_every, keep_last >= 1")


@dataclass
class LoopResult:
    steps: int  # global step reached
    start_step: int  # global step this call started from (> 0 after a resume)
    final_loss: float  # mean loss of the last log window (nan if none was logged)
    samples_per_s: float  # training throughput: time in `train_step` only (no data loading, no checkpoints)
    checkpoint: Path | None  # newest checkpoint directory
    seconds: float  # wall time of the loop


def train(stage: Stage, options: LoopOptions, run: TrainingRun | None = None, start: int = 0,
          on_step: Callable[[int, StepResult], None] | None = None) -> LoopResult:
    """Run `stage` from global step `start` to `options.steps`; log and checkpoint into `run` if given.

    A metrics line every `log_every` steps and at the end, a checkpoint (with a metrics line for any
    steps not yet logged) every `ckpt_every` steps and at the end; when the data runs out early the
    steps done are logged and checkpointed all the same. `on_step(step, result)` follows every step.
    """
    window = MetricsWindow()
    step, last_loss, train_time, samples = start, math.nan, 0.0, 0
    checkpoint = run.resume_from if run is not None else None

    def log_window() -> float:
        now = time.perf_counter()
        run.log(stage.metrics_row(step, window, now))
        loss = window.mean("loss")
        window.reset(now)
        return loss

    env = options.env
    bar = tqdm(total=options.steps, initial=start, disable=not (options.progress and env.is_main),
               desc=options.desc, unit="step", dynamic_ncols=True)
    wall0 = time.perf_counter()
    try:
        while step < options.steps:
            batch = stage.batch(step)
            if env.distributed and min(all_reduce_mean(env, [float(batch is not None)])) < 1.0:
                batch = None  # one rank's data ran out: all stop together, or the others would wait forever
            if batch is None:
                log.warning("%s: the data ran out at step %d of %d", options.desc, step, options.steps)
                break
            t0 = time.perf_counter()
            result = stage.train_step(step, batch)
            if env.distributed:  # the logged loss and means describe the global batch
                keys = list(result.means)
                result.loss, *means = all_reduce_mean(env, [result.loss, *(result.means[k] for k in keys)])
                result.means = dict(zip(keys, means, strict=True))
            step += 1
            train_time += time.perf_counter() - t0
            samples += result.batch_size
            bar.update(1)
            window.add(result)
            if on_step is not None:
                on_step(step, result)
            if run is None:
                continue
            if step % options.log_every == 0 or step == options.steps:
                last_loss = log_window()
                bar.set_postfix(loss=f"{last_loss:.4f}")
            if step % options.ckpt_every == 0 or step == options.steps:
                if window.n:
                    last_loss = log_window()
                checkpoint = run.checkpoint(stage, step, options.keep_last)
    finally:
        bar.close()
    if run is not None and step > start and (checkpoint is None or checkpoint.name != step_dir(run.checkpoints,
                                                                                                 step).name):
        if window.n:  # the data ran out before the last checkpoint
            last_loss = log_window()
        checkpoint = run.checkpoint(stage, step, options.keep_last)
    return LoopResult(steps=step, start_step=start, final_loss=last_loss,
                      samples_per_s=samples / train_time if train_time > 0 else 0.0, checkpoint=checkpoint,
                      seconds=time.perf_counter() - wall0)
