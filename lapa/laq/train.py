"""Stage 1 training: LAQ on frame pairs, run by the shared loop (lapa/training.py).

Layout of `out_dir`:
    checkpoints/step_00001000/   model.safetensors, config.json, optimizer.safetensors, training_state.json
    checkpoints/LATEST           name of the newest complete checkpoint
    metrics.jsonl                one JSON line per log window (loss, per-position usage and perplexity)
    loss.png, code_usage.png     plots of metrics.jsonl
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import lapa
from lapa.checkpoint import CheckpointError, load_checkpoint, load_state_strict
from lapa.distributed import DistEnv, all_reduce_sum_, broadcast_, check_same_everywhere
from lapa.laq.config import LAQConfig
from lapa.laq.metrics import perplexity_from_counts
from lapa.laq.model import LAQ
from lapa.laq.nsvq import dead_code_schedule
from lapa.parallel import ParallelModel, choose_parallel
from lapa.training import (
    LoopOptions,
    MetricsWindow,
    StepResult,
    TrainingRun,
    accumulate_step,
    check_same_config,
    json_float,
    read_metrics,
    restore_parallel,
    scale_info,
    train,
)

log = logging.getLogger(__name__)

COLLAPSE_GRACE_STEPS = 100  # the collapse guard stays quiet while dead-code replacement settles


@dataclass
class LAQTrainResult:
    final_loss: float  # mean loss of the last log window
    steps: int  # global step reached
    start_step: int  # global step this call started from (> 0 after a resume)
    pairs_per_s: float  # training throughput of this call, checkpoint time excluded
    checkpoint_dir: Path | None
    metrics_path: Path


# ----------------------------------------------------------------------------- checkpoints


def _load_for_resume(directory: Path, config: LAQConfig, model: LAQ) -> None:
    """Check the checkpoint's config and load its model tensors (before the model is wrapped)."""
    doc, state = load_checkpoint(directory)
    try:
        saved = LAQConfig.from_dict(doc["laq"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}/config.json: no valid LAQ config ({err})") from err
    check_same_config(directory, saved, config)
    load_state_strict(model, state, source=str(directory))


# ----------------------------------------------------------------------------- metrics and plots


def plot_metrics(metrics_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write loss.png and code_usage.png from metrics.jsonl (matplotlib Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    if not rows:
        return []
    out_dir = Path(out_dir)
    steps = [r["step"] for r in rows]

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, [float("nan") if r["loss"] is None else r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="pixel MSE", yscale="log", title="LAQ reconstruction loss")
    ax.grid(alpha=0.3)
    loss_png = out_dir / "loss.png"
    fig.savefig(loss_png, dpi=100)

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    perplexity = list(zip(*[r["perplexity"] for r in rows], strict=True))  # L series
    for pos, series in enumerate(perplexity):
        ax1.plot(steps, series, label=f"token {pos}")
    k = len(rows[-1]["usage"][0])
    ax1.axhline(k, color="grey", ls="--", lw=1, label=f"all {k} codes")
    ax1.set(xlabel="step", ylabel="perplexity", title="codebook perplexity per position", ylim=(0, k + 0.5))
    ax1.legend(fontsize=8)
    usage = torch.tensor(rows[-1]["usage"], dtype=torch.float64)  # (L, K) last window
    frac = usage / usage.sum(-1, keepdim=True).clamp_min(1)
    im = ax2.imshow(frac.numpy(), vmin=0, aspect="auto", cmap="viridis")
    ax2.set(xlabel="code", ylabel="token position", title=f"code usage, steps up to {steps[-1]}")
    fig.colorbar(im, ax=ax2, label="fraction")
    fig.tight_layout()
    usage_png = out_dir / "code_usage.png"
    fig.savefig(usage_png, dpi=100)
    return [loss_png, usage_png]


# ----------------------------------------------------------------------------- the stage


def _laq_loss(model: LAQ, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(batch)
    return out.loss, out.usage.detach()  # (L, K) code counts of this micro-batch


class _LAQStage:
    """LAQ's batches, step, metrics line and checkpoint for the shared loop."""

    def __init__(self, parallel: ParallelModel, optimizer: torch.optim.Optimizer, batches: Iterable[torch.Tensor],
                 lr: float, grad_clip: float, grad_accum: int, provenance: dict[str, Any]) -> None:
        self.parallel, self.model, self.env = parallel, parallel.model, parallel.env
        self.optimizer, self.lr, self.grad_clip, self.grad_accum = optimizer, lr, grad_clip, grad_accum
        self.provenance = provenance
        self.data: Iterator[torch.Tensor] = iter(batches)
        self.batch_size = 1  # global samples of the newest step: the collapse guard counts samples with it

    def batch(self, step: int) -> list[torch.Tensor] | None:
        """This rank's `grad_accum` micro-batches of the step (its own shard of the stream)."""
        micro = []
        for _ in range(self.grad_accum):
            b = next(self.data, None)
            if b is None:
                return None
            micro.append(b.to(self.env.device, non_blocking=True))
        return micro

    def train_step(self, step: int, batch: list[torch.Tensor]) -> StepResult:
        env = self.env
        if "scale" not in self.provenance:  # the per-device batch is known once the first batch is here
            self.provenance["scale"] = scale_info(env, len(batch[0]), self.grad_accum, self.parallel.kind)
        loss, grad_norm, usages = accumulate_step(self.parallel, self.optimizer, batch, self.grad_clip)
        usage = torch.stack(usages).sum(0).cpu()  # (L, K) this rank
        local = usage.sum(0)  # (K,) what this rank's forward passes added to the usage window
        all_reduce_sum_(env, usage)  # (L, K) the global batch
        nsvq = self.model.nsvq
        if env.distributed:  # every rank's window counts the global batch, so all decide alike
            nsvq.usage_since_reset += (usage.sum(0) - local).to(nsvq.usage_since_reset)
        samples = torch.tensor([sum(len(b) for b in batch)], dtype=torch.int64)
        self.batch_size = B = int(all_reduce_sum_(env, samples)[0])  # the global batch
        replaced = 0
        if dead_code_schedule(step + 1):
            replaced = int(nsvq.replace_dead_codes(B).numel())
            if env.distributed:  # the new codes come from rank 0's recent latents
                with torch.no_grad():
                    broadcast_(env, nsvq.codebook.data)
        return StepResult(loss, B, grad_norm, totals={"codes_replaced": replaced, "usage": usage})

    def metrics_row(self, step: int, window: MetricsWindow, now: float) -> dict[str, Any]:
        """One metrics line for the steps since the last one; runs the collapse guard."""
        usage = window.totals["usage"]  # (L, K)
        seen = self.batch_size * window.n
        alive = int(self.model.nsvq.alive_mask(seen, usage.sum(0)).sum())
        if step >= COLLAPSE_GRACE_STEPS:
            self.model.nsvq.check_collapse(seen, usage.sum(0))
        return {
            "step": step,
            "loss": json_float(window.mean("loss")),
            "grad_norm": json_float(window.grad_norm),
            "lr": self.lr,
            "pairs_per_s": window.samples_per_s(now),
            "perplexity": [round(float(p), 4) for p in perplexity_from_counts(usage)],
            "usage": usage.tolist(),
            "alive_codes": alive,
            "codes_replaced": window.totals["codes_replaced"],
        }

    def save(self, directory: Path, step: int) -> None:
        self.model.save(directory, extra={"step": step, "provenance": self.provenance})

    def plot(self, metrics_path: Path, out_dir: Path) -> list[Path]:
        return plot_metrics(metrics_path, out_dir)


def train_laq(
    config: LAQConfig,
    batches: Iterable[torch.Tensor],
    steps: int,
    out_dir: str | os.PathLike,
    *,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    grad_clip: float = 0.5,
    ckpt_every: int = 1000,
    keep_last: int = 2,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 10,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    env: DistEnv | None = None,
    grad_accum: int = 1,
    parallel: str = "auto",
    preset: str | None = None,
    consistency: dict[str, Any] | None = None,
) -> LAQTrainResult:
    """Train LAQ until global step `steps` on `batches` of uint8 frame pairs (B, 2, H, W, 3).

    With `resume=True` training continues from the newest checkpoint in `out_dir` (model,
    optimizer, step, RNG and code-usage window restored; metrics after that step dropped) or
    starts fresh if there is none. `batches` is consumed from its start either way: give it the
    data for the steps still to run. `on_step(step, info)` is called after every optimizer step.

    Under torchrun (`env` from lapa.distributed.init) `batches` is this rank's shard, B the per-device
    batch; each step takes `grad_accum` of them, so the global batch is B x world size x grad_accum.
    `consistency` (e.g. the data index) joins the config in the check that all ranks agree.
    """
    env = env or DistEnv(device=torch.device(device or "cpu"))
    kind = choose_parallel(parallel, preset, env)
    options = LoopOptions(steps, ckpt_every=ckpt_every, log_every=log_every, keep_last=keep_last,
                          progress=progress, desc="LAQ", env=env)
    check_same_everywhere(env, {"laq config": config.to_dict(), "options": [lr, list(betas), grad_clip, steps, seed,
                                                                            grad_accum, kind],
                                **(consistency or {})})
    run = TrainingRun(out_dir, resume, "pass resume=True or pick a new out_dir", env)
    torch.manual_seed(seed)
    model = LAQ(config)
    if run.resume_from is not None:
        _load_for_resume(run.resume_from, config, model)
    wrapped = ParallelModel(model, _laq_loss, env, kind, replicated=[model.nsvq.codebook])
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=lr, betas=betas)
    start = 0
    if run.resume_from is not None:
        start = restore_parallel(run.resume_from, wrapped, optimizer)
        log.info("resuming LAQ training from %s (step %d)", run.resume_from, start)
    run.start_at(start)
    provenance = {
        "stage": "laq", "lapa_version": lapa.__version__, "torch_version": torch.__version__, "seed": seed,
        "lr": lr, "betas": list(betas), "grad_clip": grad_clip,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    stage = _LAQStage(wrapped, optimizer, batches, lr, grad_clip, grad_accum, provenance)
    report = None
    if on_step is not None:
        def report(step: int, r: StepResult) -> None:
            on_step(step, {"loss": r.loss, "grad_norm": r.grad_norm,
                           "codes_replaced": float(r.totals["codes_replaced"])})
    model.train()
    result = train(stage, options, run, start, on_step=report)
    return LAQTrainResult(
        final_loss=result.final_loss, steps=result.steps, start_step=start, pairs_per_s=result.samples_per_s,
        checkpoint_dir=result.checkpoint, metrics_path=run.metrics_path,
    )
