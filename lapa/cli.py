"""`lapa`: one command line for simulation, training, export, serving and benchmarks.

Each subsystem registers its own subcommands; heavy imports happen only when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from lapa.errors import UserError

# (command, module that defines `register(subparsers)`)
SUBSYSTEMS: list[tuple[str, str]] = [
    ("sim", "lapa.sim.cli"),
    ("laq", "lapa.laq.cli"),
    ("bench", "bench"),
    ("export", "export.cli"),
    ("demo", "lapa_ros.demo"),
    ("say", "lapa_ros.say"),
    ("bringup", "lapa_ros.bringup"),
    ("console", "lapa_ros.console.cli"),
    ("train", "lapa.policy.cli"),
    ("eval", "lapa.eval.cli"),
    ("ablation", "lapa.eval.ablation"),
    ("experiment", "lapa.experiment"),
    ("calibration", "calibration.cli"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lapa",
        description="LAPA: latent action pretraining from videos, served to a Franka at control rate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, module_name in SUBSYSTEMS:
        importlib.import_module(module_name).register(sub)
    # `lapa eval --backend`: the training layer evaluates a serving backend it may not import itself
    parser.set_defaults(load_policy=serving_policy)
    return parser


def serving_policy(backend: str, model_dir, threads: int | None = None):
    """A policy server backend (policy_server/backends.py) for `model_dir`."""
    from policy_server.backends import load_backend

    return load_backend(backend, model_dir, threads)


def _interrupt_on_sigterm() -> None:
    """`kill PID` ends a command as Ctrl-C does, so its `with` blocks and finally clauses stop what it
    started (a bench's ROS stack and policy server) instead of leaving those processes orphaned."""
    def interrupt(_signum, _frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:  # the command line, not a caller in this process
        _interrupt_on_sigterm()
    try:
        result = args.func(args)
    except UserError as err:
        print(f"lapa: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lapa: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
