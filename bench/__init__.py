"""`lapa bench ...`: the benchmarks whose numbers BENCHMARKS.md reports, with their JSON and PNG
results beside them in this folder.

Each benchmark is a module with `add_arguments(parser)` and `run(args) -> dict`; they drive every
layer (simulator, LAQ, the exported model, the policy server, the ROS loop) from outside, so no
deployment package carries benchmark code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

# (subcommand, module defining `add_arguments(parser)` and `run(args) -> dict`, help)
BENCHMARKS: list[tuple[str, str, str]] = [
    ("sim", "bench.sim", "simulator speed, scripted-expert success, recording throughput"),
    ("laq", "bench.laq", "LAQ training throughput (frame pairs/s) and held-out quality of a checkpoint"),
    ("server", "bench.server", "policy server overhead (HTTP, WebSocket) and throughput under concurrency"),
    ("model", "bench.model", "VLA step latency: torch eager vs ONNX Runtime, parallel vs autoregressive, FLOPs"),
    ("latency", "bench.latency", "camera -> command: every stage side by side (capture, transport, decode, "
     "model per backend, postprocessing, safety, command), batch throughput, the model under load"),
    ("loop", "bench.loop", "ROS control loop: period jitter, camera-to-command latency, demo success"),
    ("train-throughput", "bench.train_throughput", "training throughput (samples/s) of LAQ and the VLA at 1 and "
     "N processes (torchrun, DDP / FSDP2)"),
    ("faults", "bench.faults", "fault injection on the whole stack: time to rest, travel, largest step, latched "
     "state and recovery per fault kind"),
    ("soak", "bench.soak", "the loop for a long time: RSS per process, latency per minute, stalls, success"),
    ("speech", "bench.speech", "spoken commands: true commands accepted, near misses and other speech rejected"),
]


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (results as JSON, see BENCHMARKS.md)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name, module_name, help_text in BENCHMARKS:
        p = bench_sub.add_parser(name, help=help_text)
        p.add_argument("--json", type=Path, help="write the results to this JSON file")
        p.set_defaults(func=_runner(module_name), bench_name=name)
        importlib.import_module(module_name).add_arguments(p)


def machine_info() -> dict:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _runner(module_name: str):
    def run(args: argparse.Namespace) -> int:
        results = importlib.import_module(module_name).run(args)
        results = {"benchmark": args.bench_name, "command": "lapa " + " ".join(sys.argv[1:]),
                   "machine": machine_info(), **results}
        text = json.dumps(results, indent=2)
        print(text)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text + "\n")
        return 0

    return run
