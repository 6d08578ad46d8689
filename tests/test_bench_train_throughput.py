"""`lapa bench train-throughput` plumbing: one fresh process per setting, each precision reported."""

from __future__ import annotations

import argparse

from bench.train_throughput import add_arguments, run


def test_each_precision_runs_in_its_own_process_and_is_reported():
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--models", "vla", "--procs", "1", "--steps", "1", "--warmup", "0", "--batch-size", "2",
                         "--precisions", "fp32", "bf16", "--timeout-s", "120"])
    result = run(args)
    runs = result["runs"]
    assert [r["precision"] for r in runs] == ["fp32", "bf16"]
    assert all(r["processes"] == 1 and r["samples_per_s"] > 0 for r in runs)
    assert runs[0]["speedup_vs_first"] == 1.0
