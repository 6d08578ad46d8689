"""`lapa bench faults`: faults injected into the whole running stack, measured from outside.

The stack (bench/fault_stack.py): the policy server running the scripted expert (or `--model`
through onnxruntime) behind bench/fault_policy.py, lapa_sim (franky-sim, scene camera), lapa_policy
with the franky backend, as real processes on a private ROS domain. One stack serves every run;
only what a fault kills is restarted. Each run (seeded): stop, home, reset the blocks to a random
placement, give a random pick/put/push instruction, wait until the arm is under way plus a random
0-2 s and until the TCP moves, inject the fault (bench/fault_kinds.py), watch, clear it, and check the recovery.

Per run, from lapa_sim's scene at 50 Hz (ground truth), /lapa/step and /lapa/status:
  time to rest    from the moment the fault is detectable to the TCP at rest (< 5 mm/s), wall clock
  travel          TCP path length from the fault until it is cleared
  largest step    of every executed command (must not exceed the safety filter's per-step limit), and
                  the TCP's largest displacement over one control period of simulated time
  late commands   commands executed more than one control period after the fault was detectable
                  (motions on stale or invalid input)
  latched right   /lapa/status at the end of the watch shows the expected state and reason
  recovered       commands flow again once the fault is cleared (by itself, after /lapa/start, a new
                  instruction, or a restart, as the kind says)
Results: JSON (`--json`), a markdown table and a PNG of time to rest per kind in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench import fault_metrics as fm
from bench.fault_kinds import KINDS, SERVER_TIMEOUT_S, FaultKind, observe_s, sleep_until
from bench.fault_stack import FaultStack
from bench.figures import save_figure
from lapa_ros.launch_plan import EXPERT_MODEL

PERIOD_S = 0.1  # 10 Hz
STEP_LIMIT_M = 0.03  # lapa_policy's max_step_translation_m (its default)
FAMILIES = ("pick", "put", "push")
RECOVERY_TIMEOUT_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-per-kind", type=int, default=30,
                        help="randomised runs of each kind (default: %(default)s)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated fault kinds (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=EXPERT_MODEL,
                        help="'expert' (default) or a checkpoint served through onnxruntime")
    parser.add_argument("--out", type=Path, default=Path("out/bench_faults"), help="logs, markdown, PNG")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="stop starting new runs after this long (0: no limit); the report says how many ran")


# ---------------------------------------------------------------------------- one run
def start_episode(stack: FaultStack, rng: np.random.Generator) -> tuple[str, float]:
    from lapa.sim.env import episode_task

    stack.call("/lapa/stop")
    try:
        stack.call("/lapa/home", timeout_s=120.0)
    except RuntimeError:  # a latched fault or a lost robot connection: /lapa/start recovers
        stack.call("/lapa/start", timeout_s=60.0)
        stack.call("/lapa/stop")
        stack.call("/lapa/home", timeout_s=120.0)
    seed = int(rng.integers(10 ** 6))
    stack.set_seed(seed)
    stack.call("/lapa_sim/reset")
    time.sleep(0.3)  # the reset's scene reaches the expert
    stack.call("/lapa/start")
    _, instruction = episode_task(str(rng.choice(FAMILIES)), seed)
    t0 = time.monotonic()
    stack.say(instruction)
    deadline = t0 + 20.0
    while len(stack.trace.window(t0, time.monotonic())["steps"]) < 3:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no commands 20 s after {instruction!r}; status {stack.policy_status}; "
                               f"lapa_sim {stack.sim_status}")
        time.sleep(0.02)
    return instruction, t0


def wait_commands(stack: FaultStack, after: float, n: int, timeout_s: float) -> float | None:
    """Receipt time of the n-th command after `after`, or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        steps = stack.trace.window(after, time.monotonic())["steps"]
        if len(steps) >= n:
            return steps[n - 1][0]
        time.sleep(0.05)
    return None


def recover(stack: FaultStack, kind: FaultKind, instruction: str, t_clear: float) -> tuple[bool | None, float | None,
                                                                                          dict | None]:
    """Bring the loop back as an operator would; (recovered, seconds from clearing, restart status)."""
    restart_status = None
    if kind.recovery is None:
        return None, None, None
    if kind.recovery == "restart":
        restart_status = stack.wait_status(lambda s: s.get("state") in ("idle", "running", "fault", "stopped"),
                                           120.0, after=t_clear)
        if restart_status is None:
            return False, None, None
        if not wait_images(stack):
            return False, None, restart_status  # the restarted node hears no camera (see restart_images)
        time.sleep(0.3)
        stack.say(instruction)
    elif kind.recovery == "start":
        stack.trigger("/lapa/start", timeout_s=60.0)
    elif kind.recovery == "instruction":
        stack.say(instruction)
    t = wait_commands(stack, t_clear, 3, RECOVERY_TIMEOUT_S)
    return t is not None, (None if t is None else round(t - t_clear, 3)), restart_status


def wait_images(stack: FaultStack, timeout_s: float = 5.0) -> bool:
    """Whether lapa_policy (just restarted) receives camera images within timeout_s."""
    return stack.wait_status(lambda s: s.get("counts", {}).get("images", 0) > 0, timeout_s) is not None


def restart_policy_until_it_sees_images(stack: FaultStack, attempts: int = 3) -> int:
    """Restart lapa_policy until it receives camera images; returns the restarts it took."""
    for n in range(1, attempts + 1):
        t = time.monotonic()
        if n > 1:  # the camera's publisher keeps ignoring the respawned node: restart it too
            stack.restart("lapa_sim")
            stack.wait_sim_restarted(t)
        stack.restart("lapa_policy")
        if stack.wait_status(lambda s: s.get("state") in ("idle", "stopped", "running", "fault"), 120.0,
                             after=t) is not None and wait_images(stack):
            return n
    raise RuntimeError(f"lapa_policy received no camera image after {attempts} restarts")


def wait_moving(stack: FaultStack, timeout_s: float = 3.0) -> bool:
    """Wait until the TCP moves (a fault is injected during a motion, not in the expert's pause to
    close the gripper); False if it did not within timeout_s (the run reports moving_at_fault)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        speed = fm.speed_at(stack.trace.window(now - 1.0, now)["tcp"], now)
        if speed is not None and speed > 2 * fm.MOVING_SPEED_M_S:
            return True
        time.sleep(0.02)
    return False


def one_run(stack: FaultStack, kind: FaultKind, rng: np.random.Generator) -> dict:
    instruction, t_start = start_episode(stack, rng)
    time.sleep(float(rng.uniform(0.0, 2.0)))
    wait_moving(stack)
    t_fault = time.monotonic()
    info = kind.inject(stack, rng)
    t_inject_done = time.monotonic()
    t_detect = info.get("effective_at", t_fault) + info["detect_after_s"]
    fault_end = t_fault + info["pause_s"] if "pause_s" in info else None
    sleep_until(t_detect + observe_s(kind, info))
    t_clear = time.monotonic()
    kind.clear(stack, info)
    recovered, recovery_s, restart_status = recover(stack, kind, instruction, t_clear)
    time.sleep(0.2)
    stack.call("/lapa/stop")
    w = stack.trace.window(t_start, time.monotonic())
    # A frozen server resumes by itself: the fault's effects are judged up to its end.
    t_end = min(t_clear, fault_end) if fault_end is not None else t_clear
    stops = kind.stops and not (kind.name == "server_freeze" and info["pause_s"] < 0.8)
    before_end = [r for r in w["tcp"] if r[0] <= t_end]
    steps_before = [r for r in w["steps"] if r[0] <= t_end]
    rest = fm.rest_time(before_end, t_fault, t_end) if stops else None
    late = fm.commands_between(steps_before, t_detect + PERIOD_S, t_end) if stops else None
    watch = [s for t, s in w["status"] if t_detect <= t <= t_end]
    status = restart_status if kind.recovery == "restart" else fm.latched_state(w["status"], t_detect, t_end)
    latched = fm.status_matches(status, kind.states, kind.reason)
    if kind.name in ("server_freeze", "reply_late"):  # no reply for longer than the timeout: a hold, never a fault
        long = kind.name == "reply_late" or info["pause_s"] > SERVER_TIMEOUT_S + 0.3
        holds = [s.get("counts", {}).get("holds", 0) for s in watch]
        held = any(s.get("state") == "holding" for s in watch) or (len(holds) > 1 and holds[-1] > holds[0])
        latched = not any(s.get("state") == "fault" for s in watch) and (not long or held)
        status = next((s for s in watch if s.get("state") == "holding"), status)
    if kind.name == "instruction_mid_episode":
        latched = latched and status.get("instruction") == info["instruction"]
    if kind.name == "reply_huge":
        latched = latched and not any(s.get("state") == "fault" for s in watch)
    speed = fm.speed_at(w["tcp"], t_fault)
    return {
        "kind": kind.name, "instruction": instruction,
        "info": {k: v for k, v in info.items() if k not in ("timer", "effective_at")},
        "inject_ms": round(1e3 * (t_inject_done - t_fault), 1),
        "speed_at_fault_m_s": None if speed is None else round(speed, 4),
        "moving_at_fault": bool(speed is not None and speed > fm.MOVING_SPEED_M_S),
        "time_to_rest_s": None if rest is None else round(max(0.0, rest - t_detect), 3),
        "fault_to_rest_s": None if rest is None else round(max(0.0, rest - t_fault), 3),
        "at_rest": (rest is not None) if stops else None,
        "travel_after_fault_m": round(fm.travel(before_end, t_fault, t_end), 5),
        "max_commanded_step_m": round(fm.max_commanded_step(w["steps"]), 5),
        "max_period_displacement_m": round(fm.max_period_displacement(w["tcp"], PERIOD_S), 5),
        "late_commands": late,
        "commands_after_fault": fm.commands_between(steps_before, t_fault, t_end),
        "status": None if status is None else {"state": status.get("state"), "reason": status.get("reason")},
        "latched_right": latched,
        "recovered": recovered, "recovery_s": recovery_s,
    }


def ensure_alive(stack: FaultStack) -> list[str]:
    """Restart any process that died outside a fault (it is reported)."""
    restarted = []
    for name in ("lapa_server", "lapa_sim", "lapa_policy"):
        if not stack.alive(name):
            stack.restart(name)
            restarted.append(name)
    if restarted:
        stack.wait_status(lambda s: s.get("state") in ("idle", "stopped", "running"), 120.0)
    return restarted


# ---------------------------------------------------------------------------- the report
def summarize(runs: list[dict]) -> dict:
    out = {}
    for name in dict.fromkeys(r["kind"] for r in runs):
        rs = [r for r in runs if r["kind"] == name and "error" not in r]
        kind = KINDS[name]
        rec = [r["recovered"] for r in rs if r["recovered"] is not None]
        rest = [r["time_to_rest_s"] for r in rs]
        out[name] = {
            "runs": len(rs), "errors": sum(1 for r in runs if r["kind"] == name and "error" in r),
            "moving_at_fault_pct": round(100.0 * np.mean([r["moving_at_fault"] for r in rs]), 1) if rs else None,
            "step_limit_violations": sum(r["max_commanded_step_m"] > STEP_LIMIT_M + 1e-6 for r in rs),
            "max_commanded_step_m": max((r["max_commanded_step_m"] for r in rs), default=None),
            "max_period_displacement_m": max((r["max_period_displacement_m"] for r in rs), default=None),
            "late_commands": sum(r["late_commands"] or 0 for r in rs) if kind.stops else None,
            "runs_with_late_commands": sum(bool(r["late_commands"]) for r in rs) if kind.stops else None,
            "not_at_rest": sum(r["at_rest"] is False for r in rs) if kind.stops else None,
            "time_to_rest_p50_s": fm.percentile(rest, 50) if kind.stops else None,
            "time_to_rest_max_s": max((v for v in rest if v is not None), default=None) if kind.stops else None,
            "fault_to_rest_p50_s": fm.percentile([r["fault_to_rest_s"] for r in rs], 50) if kind.stops else None,
            "travel_after_fault_p50_m": fm.percentile([r["travel_after_fault_m"] for r in rs], 50),
            "travel_after_fault_max_m": max((r["travel_after_fault_m"] for r in rs), default=None),
            "latched_right_pct": round(100.0 * np.mean([r["latched_right"] for r in rs]), 1) if rs else None,
            "recovered_pct": round(100.0 * np.mean(rec), 1) if rec else None,
            "recovery_p50_s": fm.percentile([r["recovery_s"] for r in rs], 50),
        }
    return out


def _fmt(v, scale: float = 1.0, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v * scale:.{digits}f}"


def markdown(summary: dict, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "| fault | runs | moving at fault | step limit violations | largest step (mm) commanded / measured "
             "| late commands | time to rest p50 / max (ms) | travel after fault p50 / max (mm) | latched right "
             "| recovered |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        errors = f" (+{s['errors']} errors)" if s["errors"] else ""
        not_rest = f" ({s['not_at_rest']} not at rest)" if s["not_at_rest"] else ""
        recovered = "-" if s["recovered_pct"] is None else f"{s['recovered_pct']:.0f}%"
        lines.append(
            f"| {name} | {s['runs']}{errors} | {_fmt(s['moving_at_fault_pct'])}% | {s['step_limit_violations']} "
            f"| {_fmt(s['max_commanded_step_m'], 1e3, 1)} / {_fmt(s['max_period_displacement_m'], 1e3, 1)} "
            f"| {_fmt(s['late_commands'])} "
            f"| {_fmt(s['time_to_rest_p50_s'], 1e3)} / {_fmt(s['time_to_rest_max_s'], 1e3)}{not_rest} "
            f"| {_fmt(s['travel_after_fault_p50_m'], 1e3, 1)} / {_fmt(s['travel_after_fault_max_m'], 1e3, 1)} "
            f"| {_fmt(s['latched_right_pct'])}% | {recovered} |")
    return "\n".join(lines) + "\n"


def save_plot(path: Path, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in KINDS if any(r["kind"] == n and r.get("time_to_rest_s") is not None for r in runs)]
    data = [[1e3 * r["time_to_rest_s"] for r in runs if r["kind"] == n and r.get("time_to_rest_s") is not None]
            for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    if names:
        ax.boxplot(data, vert=False, tick_labels=names, showfliers=True)
    ax.axvline(1e3 * PERIOD_S, color="r", ls="--", lw=1, label="one control period")
    ax.set_xlabel("time from the fault being detectable to the arm at rest (ms)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> dict:
    import sys

    names = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise SystemExit(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng(args.seed)
    # Interleaved, so that kinds see the same conditions; the lapa_policy kills last, because a
    # respawned lapa_policy may never hear the camera again (see `restart_images` in the results).
    schedule = [n for _ in range(args.runs_per_kind) for n in names if n != "policy_node_kill"]
    schedule += ["policy_node_kill"] * (args.runs_per_kind if "policy_node_kill" in names else 0)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stack = FaultStack(out, model=args.model)
    runs: list[dict] = []
    restarts: list[str] = []
    image_restarts: list[int] = []  # extra lapa_policy restarts because a restarted one heard no camera
    t0 = time.monotonic()
    stopped_early = False
    try:
        stack.start(timeout_s=240.0)
        for name in tqdm(schedule, desc="faults", unit="run"):
            elapsed = time.monotonic() - t0
            reserve = 0.2 * 60.0 * args.max_minutes if "policy_node_kill" in names else 0.0
            if args.max_minutes and name != "policy_node_kill" and elapsed > 60.0 * args.max_minutes - reserve:
                continue  # the time left is for the lapa_policy kills
            if args.max_minutes and time.monotonic() - t0 > 60.0 * args.max_minutes:
                stopped_early = True
                break
            try:
                restarts += ensure_alive(stack)
                if (stack.policy_status or {}).get("counts", {}).get("images", 1) == 0:
                    # A restarted lapa_policy that never hears the camera (DDS after a SIGKILL): again.
                    image_restarts.append(restart_policy_until_it_sees_images(stack))
                runs.append(one_run(stack, KINDS[name], rng))
            except Exception as e:  # noqa: BLE001 - a broken run is reported, the next one goes on
                runs.append({"kind": name, "error": f"{type(e).__name__}: {e}",
                             "trace": traceback.format_exc()[-2000:]})
                for cleanup in (lambda: stack.set_mode(""), lambda: stack.set_camera_fault("")):
                    try:
                        cleanup()
                    except Exception:  # noqa: BLE001
                        pass
            stack.trace.prune(time.monotonic() - 5.0)
            with (out / "runs.jsonl").open("a") as f:
                f.write(json.dumps(runs[-1]) + "\n")
    finally:
        stack.close()
    summary = summarize(runs)
    command = "lapa " + " ".join(sys.argv[1:])
    table = markdown(summary, command)
    (out / "faults.md").write_text(table)
    plot = out / "time_to_rest.png"
    save_plot(plot, runs)
    ok = [r for r in runs if "error" not in r]
    return {
        "model": args.model, "seed": args.seed, "runs_per_kind": args.runs_per_kind, "runs": len(ok),
        "errors": len(runs) - len(ok), "stopped_early": stopped_early,
        "step_limit_m": STEP_LIMIT_M, "control_period_s": PERIOD_S,
        "totals": {
            "step_limit_violations": sum(s["step_limit_violations"] for s in summary.values()),
            "late_commands": sum(s["late_commands"] or 0 for s in summary.values()),
            "not_at_rest": sum(s["not_at_rest"] or 0 for s in summary.values()),
        },
        "per_kind": summary, "markdown": str(out / "faults.md"), "plot": str(plot),
        "unplanned_restarts": restarts,
        "restart_images": {
            "note": "lapa_policy restarted after a SIGKILL that received no camera image within 5 s "
                    "(recovered: false in its run); the next run restarts it again until it does",
            "policy_node_kill_runs_without_images": sum(
                1 for r in ok if r["kind"] == "policy_node_kill" and r["recovered"] is False),
            "extra_restarts": image_restarts}, "minutes": round((time.monotonic() - t0) / 60, 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "run_records": runs,
    }
