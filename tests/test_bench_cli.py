"""`lapa bench ...`: every benchmark of bench/ registers its subcommand and options."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from bench import BENCHMARKS
from lapa.cli import build_parser


@pytest.mark.parametrize("name", [name for name, _, _ in BENCHMARKS])
def test_every_benchmark_parses_its_defaults(name, tmp_path):
    args = build_parser().parse_args(["bench", name, "--json", str(tmp_path / f"{name}.json")])
    assert args.bench_name == name and callable(args.func)


def test_the_benchmarks_live_in_bench():
    assert {module.split(".")[0] for _, module, _ in BENCHMARKS} == {"bench"}


def test_sigterm_interrupts_a_command_so_its_cleanup_runs():
    """A bench killed with `kill` stops the stack it started (its finally clauses run)."""
    code = ("import time\nfrom lapa import cli\ncli._interrupt_on_sigterm()\nprint('ready', flush=True)\n"
            "try:\n    time.sleep(30)\nfinally:\n    print('cleaned up', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert "cleaned up" in out and "KeyboardInterrupt" in err
