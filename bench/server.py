"""`lapa bench server`: what the serving path adds to the model, over real uvicorn on loopback.

Starts `python -m policy_server.app` in a subprocess (the given `--model`/`--backend`, or without a
model the fake numpy policy of tests/policy_fakes.py, which the JSON then says), sends 224x224
RGB images through the project's own client, and reports:
- per transport (`http`, `websocket`): round trip minus the reply's `model_ms`, p50 and p99
  (`overhead_p50_ms`, `overhead_p99_ms`; the target is p50 <= 1 ms), and the same inside the
  server (`server_ms - model_ms`);
- throughput and latency with 1, 4 and 16 concurrent clients (one thread and one connection each);
- a latency histogram PNG next to the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.figures import save_figure
from lapa.action import fake_state

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_BACKEND = "policy_fakes:make_policy"
TARGET_OVERHEAD_P50_MS = 1.0
TRANSPORTS = {"http": "http", "websocket": "ws"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint/export directory (default: the fake numpy policy, no model)")
    p.add_argument("--backend", default="torch", help="torch | onnxruntime | tensorrt (with --model)")
    p.add_argument("--requests", type=int, default=1000, help="sequential requests per transport")
    p.add_argument("--warmup", type=int, default=50, help="untimed requests per transport first")
    p.add_argument("--clients", default="1,4,16", help="concurrency levels")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per concurrency level and transport")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1, help="model threads in the server")
    p.add_argument("--plot", type=Path, help="histogram PNG (default: next to --json)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(args: argparse.Namespace, port: int, log_file: Any) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "policy_server.app", "--port", str(port), "--log-level", "warning",
           "--threads", str(args.threads)]
    if args.model:
        cmd += ["--model", str(args.model), "--backend", args.backend]
    else:
        cmd += ["--backend", FAKE_BACKEND]
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "tests"), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.pop("LAPA_API_KEY", None)
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the server was not ready after {timeout_s} s")


@contextlib.contextmanager
def serving(args: argparse.Namespace, port: int) -> Iterator[subprocess.Popen]:
    """A lapa-server subprocess on 127.0.0.1:`port`, ready; on an error its log's tail goes to stderr;
    always stopped."""
    with tempfile.TemporaryFile() as log_file:
        proc = _start_server(args, port, log_file)
        try:
            _wait_ready(proc, f"http://127.0.0.1:{port}")
            yield proc
        except Exception:
            log_file.seek(0)
            sys.stderr.write(log_file.read().decode(errors="replace")[-4000:])
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _sequential(url: str, image: np.ndarray, n: int, warmup: int, state: np.ndarray | None = None) -> dict[str, Any]:
    from policy_server.client import PolicyClient

    overhead, round_trip, model, server_overhead = [], [], [], []
    with PolicyClient(url, timeout_s=30.0) as client:
        for i in range(warmup):
            client.act(image, f"warm up {i % 2}", state)
        for i in range(n):
            reply = client.act(image, "pick up the red block" if i % 10 else "push the blue block left", state)
            round_trip.append(reply.round_trip_ms)
            model.append(reply.model_ms)
            overhead.append(reply.round_trip_ms - reply.model_ms)
            server_overhead.append(reply.server_ms - reply.model_ms)
    return {
        "overhead_p50_ms": _pct(overhead, 50), "overhead_p99_ms": _pct(overhead, 99),
        "overhead_mean_ms": float(np.mean(overhead)),
        "round_trip_p50_ms": _pct(round_trip, 50), "round_trip_p99_ms": _pct(round_trip, 99),
        "model_p50_ms": _pct(model, 50),
        "server_overhead_p50_ms": _pct(server_overhead, 50), "server_overhead_p99_ms": _pct(server_overhead, 99),
        "requests": n, "_overheads": overhead,
    }


def _concurrent(url: str, image: np.ndarray, clients: int, duration_s: float,
                state: np.ndarray | None = None) -> dict[str, Any]:
    from policy_server.client import PolicyClient

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0]
    warmed = threading.Barrier(clients + 1)
    go = threading.Event()
    stop_at = [0.0]

    def worker(i: int) -> None:
        with PolicyClient(url, timeout_s=30.0) as client:
            client.act(image, "warm up", state)
            warmed.wait()
            go.wait()
            while time.perf_counter() < stop_at[0]:
                try:
                    latencies[i].append(client.act(image, "pick up the red block", state).round_trip_ms)
                except Exception:  # noqa: BLE001 - counted, the run goes on
                    errors[0] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    warmed.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration_s
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    flat = [x for per in latencies for x in per]
    return {"clients": clients, "requests": len(flat), "errors": errors[0],
            "throughput_rps": len(flat) / elapsed, "latency_p50_ms": _pct(flat, 50),
            "latency_p99_ms": _pct(flat, 99)}


def _plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    all_values = [v for t in TRANSPORTS for v in results[t]["_overheads"]]
    hi = max(np.percentile(all_values, 99.5), 0.2)
    bins = np.linspace(0, hi, 80)
    for transport in TRANSPORTS:
        r = results[transport]
        ax.hist(np.clip(r["_overheads"], 0, hi), bins=bins, alpha=0.6,
                label=f"{transport}: p50 {r['overhead_p50_ms']:.2f} ms, p99 {r['overhead_p99_ms']:.2f} ms")
    ax.axvline(TARGET_OVERHEAD_P50_MS, color="k", linestyle="--", linewidth=1, label="p50 target 1 ms")
    ax.set_xlabel("round trip minus model_ms (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"policy server overhead, {results['image_size'][0]}x{results['image_size'][1]} image, loopback")
    ax.legend()
    save_figure(fig, path, dpi=120)


def run(args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    base = f"127.0.0.1:{port}"
    image = np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    levels = [int(c) for c in str(args.clients).split(",") if c.strip()]
    with serving(args, port):
        from policy_server.client import PolicyClient

        with PolicyClient("http://" + base) as client:
            meta = dict(client.metadata)
        # a model with a proprio input refuses requests without one: send a plausible random state
        state = fake_state(1, dim=int(meta["state_dim"]))[0] if meta.get("state_dim") else None
        results: dict[str, Any] = {
            "policy": (f"{args.backend} backend, model {args.model}" if args.model else
                       "fake numpy policy (tests/policy_fakes.py): no --model given, model_ms is near zero"),
            "backend": meta.get("backend"), "model_hash": meta.get("model_hash"),
            "model_image_size": meta.get("image_size"), "chunk_size": meta.get("chunk_size"),
            "image_size": [args.image_size, args.image_size], "server_threads": args.threads,
            "target_overhead_p50_ms": TARGET_OVERHEAD_P50_MS,
            "method": "sequential requests with policy_server.client.PolicyClient (msgpack, raw uint8 image); "
                      "overhead = client round trip - reply model_ms; concurrency: one thread and one "
                      "connection per client, client and server on the same machine",
        }
        for name, scheme in TRANSPORTS.items():
            results[name] = _sequential(f"{scheme}://{base}", image, args.requests, args.warmup, state)
        results["concurrency"] = {
            name: {str(c): _concurrent(f"{scheme}://{base}", image, c, args.duration, state) for c in levels}
            for name, scheme in TRANSPORTS.items()
        }
    results["meets_target"] = {t: results[t]["overhead_p50_ms"] <= TARGET_OVERHEAD_P50_MS for t in TRANSPORTS}
    plot = args.plot or (args.json.with_suffix(".png") if getattr(args, "json", None) else None)
    if plot:
        _plot(plot, results)
        results["histogram_png"] = str(plot)
    for t in TRANSPORTS:
        results[t].pop("_overheads")
    return results
