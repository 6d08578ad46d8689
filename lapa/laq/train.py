"""Stage 1 training loop: LAQ on frame pairs, with checkpoints, exact resume, metrics and plots.

Layout of `out_dir`:
    checkpoints/step_00001000/   model.safetensors, config.json, optimizer.safetensors, training_state.json
    checkpoints/LATEST           name of the newest complete checkpoint
    metrics.jsonl                one JSON line per log window (loss, per-position usage and perplexity)
    loss.png, code_usage.png     plots of metrics.jsonl
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import lapa
from lapa.checkpoint import TRAINING_STATE_FILE, CheckpointError, load_checkpoint
from lapa.errors import UserError
from lapa.laq.config import LAQConfig
from lapa.laq.metrics import perplexity_from_counts
from lapa.laq.model import LAQ
from lapa.laq.nsvq import dead_code_schedule
from lapa.training import check_same_config, commit_checkpoint, json_float, restore_training, step_dir

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


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint under out_dir/checkpoints, or None."""
    root = Path(out_dir) / "checkpoints"
    pointer = root / "LATEST"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / TRAINING_STATE_FILE).is_file():
            return candidate
    complete = sorted(d for d in root.glob("step_*") if (d / TRAINING_STATE_FILE).is_file())
    return complete[-1] if complete else None


def _save(root: Path, step: int, model: LAQ, optimizer: torch.optim.Optimizer, provenance: dict[str, Any],
          keep_last: int) -> Path:
    directory = step_dir(root, step)
    model.save(directory, extra={"step": step, "provenance": provenance})
    return commit_checkpoint(root, directory, optimizer, step, keep_last)


def _resume(directory: Path, config: LAQConfig, model: LAQ, optimizer: torch.optim.Optimizer) -> int:
    doc, state = load_checkpoint(directory)
    try:
        saved = LAQConfig.from_dict(doc["laq"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}/config.json: no valid LAQ config ({err})") from err
    check_same_config(directory, saved, config)
    return restore_training(directory, model, state, optimizer)


# ----------------------------------------------------------------------------- metrics and plots


def _truncate_metrics(path: Path, max_step: int) -> None:
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


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


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


# ----------------------------------------------------------------------------- the loop


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
    device: str | torch.device = "cpu",
) -> LAQTrainResult:
    """Train LAQ until global step `steps` on `batches` of uint8 frame pairs (B, 2, H, W, 3).

    With `resume=True` training continues from the newest checkpoint in `out_dir` (model,
    optimizer, step, RNG and code-usage window restored; metrics after that step dropped) or
    starts fresh if there is none. `batches` is consumed from its start either way: give it the
    data for the steps still to run. `on_step(step, info)` is called after every optimizer step.
    """
    if steps < 0 or ckpt_every < 1 or log_every < 1 or keep_last < 1:
        raise ValueError("steps must be >= 0 and ckpt_every, log_every, keep_last >= 1")
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    metrics_path = out_dir / "metrics.jsonl"
    previous = latest_checkpoint(out_dir)
    if previous is not None and not resume:
        raise UserError(
            f"{out_dir} already holds checkpoints ({previous.name}); pass resume=True or pick a new out_dir"
        )
    ckpt_root.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    model = LAQ(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    start = 0
    if resume and previous is not None:
        start = _resume(previous, config, model, optimizer)
        log.info("resuming LAQ training from %s (step %d)", previous, start)
    _truncate_metrics(metrics_path, start)
    provenance = {
        "stage": "laq", "lapa_version": lapa.__version__, "torch_version": torch.__version__, "seed": seed,
        "lr": lr, "betas": list(betas), "grad_clip": grad_clip,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }

    L, K = config.latent_seq_len, config.codebook_size
    window = {"loss": 0.0, "n": 0, "pairs": 0, "replaced": 0, "usage": torch.zeros(L, K, dtype=torch.int64),
              "t0": time.perf_counter()}
    step, last_loss, train_time, pairs, B, grad_norm = start, float("nan"), 0.0, 0, 1, float("nan")
    ckpt_dir: Path | None = previous if resume else None
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="LAQ", unit="step", dynamic_ncols=True)
    data = iter(batches)
    model.train()
    try:
        while step < steps:
            try:
                batch = next(data)
            except StopIteration:
                log.warning("LAQ data ran out at step %d of %d", step, steps)
                break
            t0 = time.perf_counter()
            batch = batch.to(device, non_blocking=True)
            B = batch.shape[0]
            out = model(batch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
            optimizer.step()
            step += 1
            replaced = 0
            if dead_code_schedule(step):
                replaced = int(model.nsvq.replace_dead_codes(B).numel())
            loss = out.loss.item()
            train_time += time.perf_counter() - t0
            pairs += B
            bar.update(1)

            window["loss"] += loss
            window["n"] += 1
            window["pairs"] += B
            window["replaced"] += replaced
            window["usage"] += out.usage.cpu()
            if on_step is not None:
                on_step(step, {"loss": loss, "grad_norm": grad_norm, "codes_replaced": float(replaced)})

            if step % log_every == 0 or step == steps:
                last_loss = _log_window(metrics_path, window, step, grad_norm, lr, model, B)
                bar.set_postfix(loss=f"{last_loss:.4f}")
            if step % ckpt_every == 0 or step == steps:
                if window["n"]:
                    last_loss = _log_window(metrics_path, window, step, grad_norm, lr, model, B)
                ckpt_dir = _save(ckpt_root, step, model, optimizer, provenance, keep_last)
                plot_metrics(metrics_path, out_dir)
    finally:
        bar.close()
    if step > start and (ckpt_dir is None or ckpt_dir.name != step_dir(ckpt_root, step).name):  # data ran out early
        if window["n"]:
            last_loss = _log_window(metrics_path, window, step, grad_norm, lr, model, B)
        ckpt_dir = _save(ckpt_root, step, model, optimizer, provenance, keep_last)
        plot_metrics(metrics_path, out_dir)
    return LAQTrainResult(
        final_loss=last_loss, steps=step, start_step=start,
        pairs_per_s=pairs / train_time if train_time > 0 else 0.0,
        checkpoint_dir=ckpt_dir, metrics_path=metrics_path,
    )


def _log_window(path: Path, window: dict[str, Any], step: int, grad_norm: float, lr: float, model: LAQ,
                batch_size: int) -> float:
    """Append one metrics line for the steps since the last one, run the collapse guard, reset."""
    usage = window["usage"]  # (L, K)
    now = time.perf_counter()
    mean_loss = window["loss"] / max(window["n"], 1)
    alive = int(model.nsvq.alive_mask(batch_size * window["n"], usage.sum(0)).sum())
    if step >= COLLAPSE_GRACE_STEPS:
        model.nsvq.check_collapse(batch_size * window["n"], usage.sum(0))
    row = {
        "step": step,
        "loss": json_float(mean_loss),
        "grad_norm": json_float(grad_norm),
        "lr": lr,
        "pairs_per_s": window["pairs"] / max(now - window["t0"], 1e-9),
        "perplexity": [round(float(p), 4) for p in perplexity_from_counts(usage)],
        "usage": usage.tolist(),
        "alive_codes": alive,
        "codes_replaced": window["replaced"],
    }
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    window.update(loss=0.0, n=0, pairs=0, replaced=0, usage=torch.zeros_like(usage), t0=now)
    return mean_loss
