"""`lapa bench soak --minutes N`: the whole loop for a long time at 10 Hz on franky-sim.

One stack (policy server, lapa_sim, lapa_policy with the franky backend, as `LoopSession` starts
them) runs episodes of the shipped model's task families for `--minutes`; between episodes the
policy server is swapped (same port, the node reconnects by itself) so that the shipped model
(`models/lapa_tabletop`, the default server backend) and the scripted expert alternate. Logged:
  - RSS of every process (lapa_sim, lapa_policy, the server instance of the moment, this process),
    from /proc every `--rss-every` seconds;
  - camera-to-command latency of each command (/lapa/step), percentiles per minute and per policy;
  - stalls: gaps between consecutive commands of an episode longer than 2 control periods;
  - each episode's success and duration.
Targets: RSS growth <= 5% after the first 5 minutes (of the processes that live the whole soak;
half the run when it is shorter than 10 minutes), p99 latency drift <= 20%, no stall longer than
2 control periods. JSON (with `--json`) and a PNG (RSS per process and p99 per minute over time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.figures import save_figure
from lapa_ros.bringup import process_command
from lapa_ros.launch_plan import DEFAULT_MODEL_DIR, DEFAULT_MODEL_SUITE, EXPERT_MODEL
from lapa_ros.session import LoopSession, SessionConfig

CONTROL_HZ = 10.0
PAGE_KB = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the soak (default: %(default)s)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                        help="the checkpoint alternating with the expert (default: %(default)s)")
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--camera-hz", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("out/bench_soak"), help="logs and the PNG")
    parser.add_argument("--seed", type=int, default=0)


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process from /proc (psutil is not a dependency)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / PAGE_KB
    except (OSError, ValueError, IndexError):
        return None
    return None


class SoakRecorder:
    """Commands from /lapa/step and RSS samples from /proc, both against one start time."""

    def __init__(self, session: LoopSession, rss_every_s: float) -> None:
        from std_msgs.msg import String

        self.session = session
        self.t0 = time.monotonic()
        self.steps: list[tuple[float, float | None, str]] = []  # (t since start, latency ms, policy)
        self.rss: list[dict] = []
        self.policy = ""
        self._stop = threading.Event()
        session.node.create_subscription(String, "/lapa/step", self._on_step, 50)
        self._thread = threading.Thread(target=self._sample_rss, args=(rss_every_s,), daemon=True)
        self._thread.start()

    def _on_step(self, msg) -> None:
        record = json.loads(msg.data)
        # When lapa_policy sent it (its wall stamp on this clock): gaps are the node's, not this process's.
        sent = float(record["stamp_s"]) - (time.time() - time.monotonic())
        self.steps.append((min(sent, time.monotonic()) - self.t0, record.get("latency_ms"), self.policy))

    def _sample_rss(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            bringup = self.session.bringup
            if bringup is None:
                continue
            sample = {"t_s": time.monotonic() - self.t0}
            for name, proc in list(bringup.procs.items()):
                key = f"lapa_server ({self.policy})" if name == "lapa_server" else name
                value = rss_mb(proc.pid)
                if value is not None:
                    sample[key] = value
            sample["bench"] = rss_mb(os.getpid())
            self.rss.append(sample)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def swap_server(session: LoopSession, model: str, timeout_s: float = 120.0) -> None:
    """Stop the running policy server, start one serving `model` on the same port, wait for the node."""
    bringup = session.bringup
    old = bringup.procs.get("lapa_server")
    if old is not None and old.poll() is None:
        os.killpg(old.pid, signal.SIGTERM)
        try:
            old.wait(15.0)
        except subprocess.TimeoutExpired:
            os.killpg(old.pid, signal.SIGKILL)
            old.wait(5.0)
    config = session.config
    session.config = dataclasses.replace(config, model=model)
    spec = session.plan().processes[0]
    session.config = config
    bringup.start_one("lapa_server", process_command(spec))
    expert = model == EXPERT_MODEL
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        server = (session.policy_status or {}).get("server") or {}
        if server.get("connected") and expert == (server.get("model_hash") == "scripted-expert"):
            return
        if bringup.procs["lapa_server"].poll() is not None:
            raise RuntimeError(f"the policy server ({model}) exited:\n{bringup.log_tail('lapa_server')}")
        time.sleep(0.1)
    raise TimeoutError(f"lapa_policy did not reconnect to the {model} server within {timeout_s:g} s")


def per_minute(steps: list, policy: str) -> list[dict]:
    rows: dict[int, list[float]] = {}
    for t, latency, who in steps:
        if who == policy and latency is not None:
            rows.setdefault(int(t // 60), []).append(latency)
    return [{"minute": m, "n": len(v), "p50_ms": round(float(np.percentile(v, 50)), 2),
             "p99_ms": round(float(np.percentile(v, 99)), 2)} for m, v in sorted(rows.items())]


def stalls(steps: list, episodes: list[tuple[float, float]], period_s: float) -> dict:
    """Gaps between consecutive commands inside each episode's span."""
    ordered = sorted(steps, key=lambda r: r[0])
    times = np.asarray([t for t, _, _ in ordered])
    who = [w for _, _, w in ordered]
    gaps: list[float] = []
    events: list[dict] = []  # each stall: when, how long, under which policy
    for start, end in episodes:
        idx = np.flatnonzero((times >= start) & (times <= end))
        d = np.diff(times[idx])
        gaps.extend(d.tolist())
        for k in np.flatnonzero(d > 2 * period_s):
            events.append({"t_s": round(float(times[idx[k]]), 2), "gap_ms": round(1e3 * float(d[k]), 1),
                           "policy": who[idx[k]]})
    gaps_arr = np.asarray(gaps)
    return {"max_gap_ms": round(1e3 * float(gaps_arr.max()), 1) if len(gaps_arr) else None,
            "gaps_over_2_periods": int((gaps_arr > 2 * period_s).sum()),
            "gap_p99_ms": round(1e3 * float(np.percentile(gaps_arr, 99)), 1) if len(gaps_arr) else None,
            "events": events}


def rss_growth(samples: list[dict], after_s: float) -> dict:
    out = {}
    names = {k for s in samples for k in s if k != "t_s" and not k.startswith("lapa_server")}
    for name in sorted(names):
        series = [(s["t_s"], s[name]) for s in samples if s.get(name) is not None]
        base = [v for t, v in series if t >= after_s]
        if len(base) < 2:
            continue
        out[name] = {"mb_at_baseline": round(base[0], 1), "mb_at_end": round(base[-1], 1),
                     "mb_max": round(max(v for _, v in series), 1),
                     "growth_pct": round(100.0 * (base[-1] - base[0]) / base[0], 2)}
    return out


def save_plot(path: Path, samples: list[dict], minutes: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6))
    names = sorted({k for s in samples for k in s if k != "t_s"})
    for name in names:
        pts = [(s["t_s"] / 60, s[name]) for s in samples if s.get(name) is not None]
        if pts:
            ax1.plot(*zip(*pts, strict=True), ".-" if name.startswith("lapa_server") else "-", label=name, ms=2)
    ax1.set_xlabel("minutes")
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(fontsize=7)
    for policy, rows in minutes.items():
        if rows:
            ax2.plot([r["minute"] + 0.5 for r in rows], [r["p99_ms"] for r in rows], "o-", label=f"{policy} p99")
            ax2.plot([r["minute"] + 0.5 for r in rows], [r["p50_ms"] for r in rows], "x--", label=f"{policy} p50")
    ax2.set_xlabel("minutes")
    ax2.set_ylabel("camera-to-command latency (ms)")
    ax2.legend(fontsize=7)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> dict:
    from lapa.sim.env import episode_task
    from lapa.vocabulary import get_suite

    out: Path = args.out
    duration_s = 60.0 * args.minutes
    policies = [("model", args.model), ("expert", EXPERT_MODEL)]
    session = LoopSession(SessionConfig(out_dir=out, model=args.model, control_hz=CONTROL_HZ,
                                        camera_hz=args.camera_hz, record_every=10 ** 9))
    episodes: list[dict] = []
    spans: list[tuple[float, float]] = []
    families = get_suite(DEFAULT_MODEL_SUITE)
    rng = np.random.default_rng(args.seed)
    recorder = None
    try:
        session.start()
        recorder = SoakRecorder(session, args.rss_every)
        recorder.policy = "model"
        current = "model"
        bar = tqdm(total=int(duration_s), unit="s", desc="soak")
        i = 0
        while time.monotonic() - recorder.t0 < duration_s:
            label, model = policies[i % 2]
            if label != current:
                swap_server(session, model)
                current = recorder.policy = label
            family = families[int(rng.integers(len(families)))]
            seed = int(rng.integers(10 ** 6))
            _, instruction = episode_task(family, seed)
            start = time.monotonic() - recorder.t0
            try:
                r = session.run_episode(instruction, seed)
                row = {"policy": label, "instruction": instruction, "seed": seed, "success": r.success,
                       "duration_s": round(r.duration_s, 2)}
            except (RuntimeError, TimeoutError) as e:
                row = {"policy": label, "instruction": instruction, "seed": seed, "success": False, "error": str(e)}
            end = time.monotonic() - recorder.t0
            spans.append((start, end))
            row["t_start_s"] = round(start, 1)
            episodes.append(row)
            bar.n = min(int(duration_s), int(end))
            bar.set_postfix(episodes=len(episodes), ok=sum(e["success"] for e in episodes))
            bar.refresh()
            i += 1
        bar.close()
    finally:
        if recorder is not None:
            recorder.close()
        session.close()
    baseline_s = min(300.0, duration_s / 2)
    minutes = {label: per_minute(recorder.steps, label) for label, _ in policies}
    drift = {}
    for label, rows in minutes.items():
        full = [r for r in rows if r["n"] >= 20]
        if len(full) >= 2:
            first, later = full[0]["p99_ms"], [r["p99_ms"] for r in full[1:]]
            drift[label] = {"first_minute_p99_ms": first, "worst_later_p99_ms": max(later),
                            "last_minute_p99_ms": later[-1],
                            "drift_pct": round(100.0 * (later[-1] - first) / first, 1),
                            "worst_drift_pct": round(100.0 * (max(later) - first) / first, 1)}
    growth = rss_growth(recorder.rss, baseline_s)
    stall = stalls(recorder.steps, spans, 1.0 / CONTROL_HZ)
    plot = out / "soak.png"
    save_plot(plot, recorder.rss, minutes)
    success = {label: {"episodes": sum(e["policy"] == label for e in episodes),
                       "success_rate": round(float(np.mean([e["success"] for e in episodes if e["policy"] == label]
                                                           or [0.0])), 3)} for label, _ in policies}
    return {
        "minutes": args.minutes, "control_hz": CONTROL_HZ, "model": args.model, "suite": DEFAULT_MODEL_SUITE,
        "rss_baseline_after_s": baseline_s, "rss_growth": growth,
        "latency_per_minute": minutes, "p99_drift": drift, "stalls": stall, "success": success,
        "targets": {
            "rss_growth_le_5pct": all(g["growth_pct"] <= 5.0 for g in growth.values()),
            "p99_drift_le_20pct": all(d["drift_pct"] <= 20.0 for d in drift.values()),
            "no_stall_over_2_periods": stall["gaps_over_2_periods"] == 0,
        },
        "episodes": episodes, "rss_samples": recorder.rss, "plot": str(plot),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
