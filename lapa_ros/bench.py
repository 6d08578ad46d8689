"""`lapa bench loop`: the ROS control loop's numbers (filled in below)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of control per rate")


def run(args: argparse.Namespace) -> dict:
    raise NotImplementedError
