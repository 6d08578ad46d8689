"""`lapa bench ...`: every benchmark of bench/ registers its subcommand and options."""

from __future__ import annotations

import pytest

from bench import BENCHMARKS
from lapa.cli import build_parser


@pytest.mark.parametrize("name", [name for name, _, _ in BENCHMARKS])
def test_every_benchmark_parses_its_defaults(name, tmp_path):
    args = build_parser().parse_args(["bench", name, "--json", str(tmp_path / f"{name}.json")])
    assert args.bench_name == name and callable(args.func)


def test_the_benchmarks_live_in_bench():
    assert {module.split(".")[0] for _, module, _ in BENCHMARKS} == {"bench"}
