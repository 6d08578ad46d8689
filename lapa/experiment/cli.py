"""`lapa experiment run`: the command line."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lapa.experiment.config import PRESETS, STAGES, ExperimentConfig, parse_overrides
from lapa.experiment.stages import Experiment


def register(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("experiment", help="the paper's comparison: Scratch, LAPA, ActionVLA, VPT on the simulator")
    exp_sub = exp.add_subparsers(dest="experiment_command", metavar="EXPERIMENT_COMMAND", required=True)
    run = exp_sub.add_parser("run", help="record, train, finetune, evaluate and tabulate (each stage resumable)")
    run.add_argument("--out", type=Path, required=True, help="run directory (data, checkpoints, evaluations)")
    run.add_argument("--results", type=Path, default=Path("experiments/results"),
                     help="where the table and plot go (default: %(default)s)")
    run.add_argument("--stage", nargs="+", default=["all"], help=f"stages to run: {', '.join(STAGES)} or all")
    run.add_argument("--preset", default="default", choices=sorted(PRESETS))
    run.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override ExperimentConfig fields")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = ExperimentConfig.preset(args.preset, **parse_overrides(args.set))
    command = (f"lapa experiment run --out {args.out} --results {args.results} --preset {args.preset} "
               f"--stage {' '.join(args.stage)}" + (f" --set {' '.join(args.set)}" if args.set else ""))
    t0 = time.perf_counter()
    Experiment(config, args.out, args.results, command=command).run(args.stage)
    print(f"experiment: {time.perf_counter() - t0:.0f} s")
    return 0
