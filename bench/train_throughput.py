"""`lapa bench train-throughput`: LAQ and VLA training throughput (samples/s) at 1 and N processes.

Each setting runs in fresh processes: one plain process for a world of one (exactly the path of
`lapa laq train` / `lapa train ...` without torchrun), `torchrun --nproc_per_node N` (gloo on CPUs,
nccl on GPUs, 127.0.0.1) otherwise. Every process builds the model of `--laq-preset` /
`--vla-preset`, wraps it as training does (lapa/parallel.py: DDP or FSDP2), and times optimizer
steps on fixed random inputs at `--batch-size` per device, so the numbers are the training step
itself (forward, backward, gradient all-reduce, clip, AdamW), without data loading. Rank 0 reports
the global samples/s (per-device batch x processes / median step time). The VLA is the stage-2
model (latent head); the stage-3 action head costs about the same.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from lapa.config_checks import PRECISIONS

REPO = Path(__file__).resolve().parents[1]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=["laq", "vla"], choices=("laq", "vla"))
    p.add_argument("--laq-preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--vla-preset", default="tiny", choices=("tiny", "base", "tabletop"))
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    p.add_argument("--batch-size", type=int, default=8, help="per-device batch")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--parallel", default="ddp", choices=("ddp", "fsdp", "auto"))
    p.add_argument("--precisions", nargs="+", default=["auto"], choices=PRECISIONS,
                   help="training precisions to measure (--precision of lapa train), e.g. fp32 bf16")
    p.add_argument("--timeout-s", type=float, default=600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(model: str, preset: str, procs: int, args: argparse.Namespace, precision: str = "auto") -> dict:
    worker = ["-m", "bench.train_worker", "--model", model, "--preset", preset, "--batch-size", str(args.batch_size),
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
              "--device", args.device, "--parallel", args.parallel, "--precision", precision]
    if procs == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("{"))
    return json.loads(line)


def run(args: argparse.Namespace) -> dict:
    presets = {"laq": args.laq_preset, "vla": args.vla_preset}
    results: dict = {"per_device_batch": args.batch_size, "threads_per_process": args.threads,
                     "device": args.device, "timed_steps": args.steps, "runs": []}
    for model in args.models:
        base = None
        for precision in args.precisions:
            for procs in args.procs:
                r = measure(model, presets[model], procs, args, precision)
                base = base or r["samples_per_s"]  # the first precision and process count listed
                r["speedup_vs_first"] = r["samples_per_s"] / base
                results["runs"].append(r)
                print(f"{model} {presets[model]} {r['precision']} x{procs}: {r['samples_per_s']:.1f} samples/s",
                      file=sys.stderr)
    return results
