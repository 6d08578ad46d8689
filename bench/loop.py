"""`lapa bench loop`: the ROS control loop's numbers, measured on the real processes.

For each control rate (default 10 and 30 Hz): the policy server with the default model, lapa_sim
(franky-sim, scene camera at 30 Hz) and lapa_policy (franky backend) run an instruction for
`--duration` seconds; lapa_policy's own samples give
  - control period jitter: |interval between control ticks - period|, p50/p99/max;
  - camera-to-command latency: wall time from the camera frame's capture (its header stamp, taken
    before rendering) to the franky command computed from it, p50/p90/p99, and a histogram PNG.
Before the loop runs, the served model alone in this process (`model_alone`: the server's backend,
its thread count, back to back and once per 100 ms on an idle machine): beside the loop's own
model time, it tells what the machine's speed gives and what the loop's load adds.
Then (`--episodes N`, 0 to skip) the demo's episodes, N per task, give success rates for each of
`--success-models`: the default model on the families it was trained for (`default`: all four), and `expert`
(the scripted expert served by the policy server) on the full `default` suite.

The default model is `models/lapa_tabletop` when present. Without it, latency is measured with a
random-weight VLA of the same `tabletop` preset (same architecture, same cost per call); the JSON says
which.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.figures import save_figure
from bench.random_models import random_checkpoint
from lapa_ros.launch_plan import (
    DEFAULT_MODEL_DIR,
    DEFAULT_MODEL_SUITE,
    DEFAULT_SERVER_BACKEND,
    EXPERT_MODEL,
    SERVER_BACKENDS,
)
from lapa_ros.session import LoopSession, SessionConfig, summarize_stats

BENCH_INSTRUCTION = "pick up the red block"
ALONE_CALLS, ALONE_SPACED_CALLS = 200, 30  # model_alone: back to back, then once per control period


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rates", default="10,30", help="control rates in Hz, comma-separated (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of control per rate (default: %(default)s)")
    parser.add_argument("--episodes", type=int, default=10,
                        help="success: episodes per task of the suite (0 skips; default: %(default)s)")
    parser.add_argument("--success-models", nargs="+", default=["default", EXPERT_MODEL],
                        help="models for the success episodes: 'default' (models/lapa_tabletop), 'expert', or a "
                             "checkpoint directory (default: %(default)s)")
    parser.add_argument("--suite", help="task suite for the success episodes (default: the default model's suite, "
                                        "the full default suite otherwise)")
    parser.add_argument("--model", help="checkpoint for the latency runs (default: models/lapa_tabletop, else a "
                                        "random-weight VLA of its preset)")
    parser.add_argument("--camera-hz", type=float, default=30.0)
    parser.add_argument("--server-backend", default=DEFAULT_SERVER_BACKEND, choices=SERVER_BACKENDS,
                        help="the policy server's backend for a checkpoint (default: %(default)s)")
    parser.add_argument("--rt-priority", type=int, default=0,
                        help="SCHED_FIFO priority of the frame-to-command path: lapa_policy's control_rt_priority "
                             "(control and inference threads) and the server's --rt-priority (default: off)")
    parser.add_argument("--image-size", type=int, default=128,
                        help="scene camera side in pixels (default: %(default)s, the training recordings' size; "
                             "the server resizes to the model's input as the training data was)")
    parser.add_argument("--out", type=Path, default=Path("out/bench_loop"), help="logs and the histogram PNG")


def measure_rate(model: str, rate_hz: float, duration_s: float, out: Path, camera_hz: float,
                 image_size: int, rt_priority: int = 0,
                 server_backend: str = DEFAULT_SERVER_BACKEND) -> tuple[dict, list]:
    session = LoopSession(SessionConfig(out_dir=out, model=model, control_hz=rate_hz, camera_hz=camera_hz,
                                        image_size=image_size, record_every=10 ** 9, server_backend=server_backend,
                                        policy_params={"control_rt_priority": rt_priority},
                                        server_rt_priority=rt_priority))
    try:
        session.start()
        session.call("/lapa/home", timeout_s=60.0)
        session.call("/lapa/start")
        session.say(BENCH_INSTRUCTION)
        time.sleep(duration_s)
        session.call("/lapa/stop")
        rtf = (session.sim_status or {}).get("realtime_factor")
    finally:
        session.close()
    stats = session.policy_stats()
    if not stats:
        raise RuntimeError(f"lapa_policy wrote no statistics; see {out / 'logs'}")
    summary = summarize_stats(stats, rate_hz)
    summary["franky_sim_realtime_factor"] = rtf
    summary["startup_s"] = round(session.startup_s or 0.0, 1)
    return summary, list(stats.get("latency_ms", []))


def model_alone(model: str, server_backend: str, rate_hz: float = 10.0) -> dict:
    """The served policy in this process, nothing else running: p50 ms back to back and at `rate_hz`."""
    from policy_server.backends import load_backend

    threads = SessionConfig.server_threads  # what measure_rate's session starts the server with
    policy = load_backend(server_backend, model, threads=threads)
    h, w = (int(v) for v in policy.metadata["image_size"])
    rng = np.random.default_rng(0)
    obs = {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "instruction": BENCH_INSTRUCTION}
    if int(policy.metadata.get("state_dim") or 0):
        from lapa.action import fake_state

        obs["state"] = fake_state(1, seed=0, dim=int(policy.metadata["state_dim"]))[0]

    def timed() -> float:
        start = time.perf_counter()
        policy.infer(obs)
        return 1e3 * (time.perf_counter() - start)

    for _ in range(10):
        timed()
    back_to_back = [timed() for _ in range(ALONE_CALLS)]
    spaced = []
    for _ in range(ALONE_SPACED_CALLS):
        time.sleep(1.0 / rate_hz)
        spaced.append(timed())
    return {"backend": server_backend, "threads": threads, "calls": ALONE_CALLS, "spaced_calls": ALONE_SPACED_CALLS,
            "back_to_back_p50_ms": round(float(np.percentile(back_to_back, 50)), 3),
            f"at_{rate_hz:g}hz_p50_ms": round(float(np.percentile(spaced, 50)), 3)}


def measure_success(model: str, episodes: int, suite: str, out: Path,
                    server_backend: str = DEFAULT_SERVER_BACKEND) -> dict:
    from lapa.sim.env import episode_task
    from lapa.vocabulary import get_suite

    session = LoopSession(SessionConfig(out_dir=out, model=model, record_every=10 ** 9, server_backend=server_backend))
    per_task: dict[str, list[bool]] = {}
    errors: list[str] = []
    try:
        session.start()
        for family in get_suite(suite):
            for i in range(episodes):
                seed = 1000 + i
                _, instruction = episode_task(family, seed)
                try:
                    r = session.run_episode(instruction, seed)
                    success, note = r.success, f"{r.duration_s:.1f} s"
                except (RuntimeError, TimeoutError) as e:  # the loop broke: a failed episode, go on
                    success, note = False, f"error: {e}"
                    errors.append(f"{instruction}: {e}")
                per_task.setdefault(family, []).append(success)
                print(f"[bench loop] {family} {i + 1}/{episodes}: {instruction!r} "
                      f"{'ok' if success else 'FAIL'} ({note})", flush=True)
    finally:
        session.close()
    out: dict = {family: {"episodes": len(v), "success_rate": float(np.mean(v))} for family, v in per_task.items()}
    if errors:
        out["errors"] = errors
    return out


def save_histogram(path: Path, latencies: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = max((np.percentile(v, 99.5) for v in latencies.values() if v), default=100.0)
    bins = np.linspace(0, max(10.0, float(top)), 60)
    for label, values in latencies.items():
        if values:
            ax.hist(np.clip(values, 0, bins[-1]), bins=bins, alpha=0.6,
                    label=f"{label}: p50 {np.percentile(values, 50):.1f} ms, p99 {np.percentile(values, 99):.1f} ms")
    ax.set_xlabel("camera-to-command latency (ms)")
    ax.set_ylabel("commands")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def run(args: argparse.Namespace) -> dict:
    rates = [float(r) for r in str(args.rates).split(",") if r.strip()]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    trained = (DEFAULT_MODEL_DIR / "config.json").is_file()
    with tempfile.TemporaryDirectory(prefix="lapa-bench-loop-") as tmp:
        if args.model:
            model, model_note = args.model, f"checkpoint {args.model}"
        elif trained:
            model, model_note = str(DEFAULT_MODEL_DIR), f"the default model {DEFAULT_MODEL_DIR}"
        else:
            model = str(random_checkpoint(Path(tmp) / "random", preset="tabletop"))
            model_note = (f"random-weight VLA of the tabletop preset ({DEFAULT_MODEL_DIR} not found): "
                          "the default model's architecture and cost, not its skill")
        print("[bench loop] the served model alone ...", flush=True)
        try:
            alone = model_alone(model, args.server_backend, rates[0])
        except Exception as err:  # noqa: BLE001 - a reference number only: the loop is measured regardless
            alone = {"backend": args.server_backend, "error": f"{type(err).__name__}: {err}"}
        print(f"[bench loop]   {alone}", flush=True)
        per_rate, latencies = {}, {}
        for rate in rates:
            print(f"[bench loop] {rate:g} Hz for {args.duration:g} s ...", flush=True)
            summary, lat = measure_rate(model, rate, args.duration, out / f"rate_{rate:g}hz", args.camera_hz,
                                        args.image_size, args.rt_priority, args.server_backend)
            per_rate[f"{rate:g}"] = summary
            latencies[f"{rate:g} Hz"] = lat
            print(f"[bench loop]   {summary}", flush=True)
    histogram = out / "latency_hist.png"
    save_histogram(histogram, latencies)
    first = per_rate[f"{rates[0]:g}"]
    results = {
        "latency_model": model_note,
        "rates": per_rate,
        "jitter_p99_ms": {k: v["jitter_p99_ms"] for k, v in per_rate.items()},
        "latency_p50_ms": first["latency_p50_ms"],
        "latency_p99_ms": first["latency_p99_ms"],
        "node_to_command_p50_ms": first["node_to_command_p50_ms"],
        "node_to_command_p99_ms": first["node_to_command_p99_ms"],
        "latency_rate_hz": rates[0],
        # the machine's speed at the time: the same model with nothing else running (in-loop: model_p50_ms)
        "model_alone": alone,
        "latency_histogram": str(histogram),
        "camera": {"hz": args.camera_hz, "image_size": args.image_size},
        "server_backend": args.server_backend,
        "control_rt_priority": args.rt_priority,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    if args.episodes > 0:
        results["success"] = {}
        for name in args.success_models:
            if name == "default" and not trained:
                print(f"[bench loop] no {DEFAULT_MODEL_DIR}: success of the default model skipped", flush=True)
                continue
            model = str(DEFAULT_MODEL_DIR) if name == "default" else name
            suite = args.suite or (DEFAULT_MODEL_SUITE if name == "default" else "default")
            label = f"{'scripted expert' if name == EXPERT_MODEL else model} ({suite} suite)"
            print(f"[bench loop] success: {label}, {args.episodes} episodes per task", flush=True)
            results["success"][label] = measure_success(model, args.episodes, suite,
                                                        out / f"success_{Path(name).name}", args.server_backend)
    return results
