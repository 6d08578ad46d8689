"""`lapa bench laq`: LAQ training throughput on this CPU, and (with --ckpt) its held-out quality."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.latency import time_calls


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per thread setting")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ckpt", type=Path, help="also evaluate this checkpoint on --data (lapa laq eval)")
    p.add_argument("--data", nargs="+", help="held-out data for --ckpt")
    p.add_argument("--gap-s", type=float, default=0.6)


def _throughput(preset: str, batch: int, steps: int, threads: int) -> dict:
    import torch

    from lapa.laq.config import LAQConfig
    from lapa.laq.model import LAQ

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = LAQConfig.preset(preset)
    model = LAQ(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    x = config.fake_inputs(batch)

    def step() -> None:
        out = model(x)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()

    median = float(np.median(time_calls(step, steps, warmup=3)))
    return {"threads": threads, "step_ms_median": 1e3 * median, "pairs_per_s": batch / median,
            "parameters": model.num_params()}


def run(args: argparse.Namespace) -> dict:
    results: dict = {"preset": args.preset, "batch_size": args.batch_size,
                     "throughput": [_throughput(args.preset, args.batch_size, args.steps, t) for t in args.threads]}
    results["train_pairs_per_s"] = max(r["pairs_per_s"] for r in results["throughput"])
    if args.ckpt:
        from lapa.data.frame_pairs import ClipCatalog
        from lapa.laq.evaluate import evaluate_laq, load_laq

        if not args.data:
            raise SystemExit("--ckpt needs --data (held-out videos)")
        results["eval"] = evaluate_laq(load_laq(args.ckpt), ClipCatalog(args.data), gap_s=args.gap_s)
    return results
