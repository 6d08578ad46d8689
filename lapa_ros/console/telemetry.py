"""What the console shows, kept between ROS callbacks and web clients: no ROS, no web framework.

`Telemetry` holds the newest camera frame, the policy node's newest status, the executed steps of
the last `window_s` seconds (actions, end-effector positions, latencies: the plots) and a sequence
number per step so a client asks only for what it has not seen. Thread-safe: ROS callbacks write,
the web server reads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

WINDOW_S = 60.0
MAX_STEPS = 6000  # 100 Hz for a minute


@dataclass(frozen=True)
class Step:
    """One executed command as /lapa/step reports it."""

    seq: int
    stamp_s: float  # wall clock
    action: tuple[float, ...]  # (7,) executed delta: dx dy dz (m), droll dpitch dyaw (rad), gripper target
    state: tuple[float, ...] | None  # (8,) EE xyz (m), rpy (rad), finger positions (m)
    instruction: str
    latency_ms: float | None  # camera frame capture -> command, for commands sent on a server reply

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "t": self.stamp_s, "action": list(self.action),
                "ee": None if self.state is None else list(self.state[:3]), "latency_ms": self.latency_ms}


def parse_step(record: dict[str, Any], seq: int) -> Step:
    """A /lapa/step JSON record -> Step; ValueError on anything malformed."""
    action = np.asarray(record.get("action"), dtype=np.float64)
    if action.shape != (7,) or not np.all(np.isfinite(action)):
        raise ValueError(f"a step's action must be 7 finite numbers, got {record.get('action')!r}")
    state = record.get("state")
    if state is not None:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (8,) or not np.all(np.isfinite(state)):
            raise ValueError(f"a step's state must be 8 finite numbers, got {record.get('state')!r}")
        state = tuple(float(x) for x in state)
    latency = record.get("latency_ms")
    return Step(seq, float(record.get("stamp_s") or time.time()), tuple(float(x) for x in action), state,
                str(record.get("instruction") or ""), None if latency is None else float(latency))


class Telemetry:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._steps: deque[Step] = deque(maxlen=MAX_STEPS)
        self._seq = 0
        self.status: dict[str, Any] | None = None
        self.status_time_s: float | None = None
        self.frame: np.ndarray | None = None  # (H, W, 3) uint8 RGB, the newest camera image
        self.frame_time_s: float | None = None
        self.frame_seq = 0
        self.last_stop_reason: str | None = None

    # ------------------------------------------------------------------ writers (ROS callbacks)
    def put_status(self, status: dict[str, Any]) -> None:
        with self._lock:
            previous = (self.status or {}).get("state")
            self.status, self.status_time_s = status, time.time()
            state = status.get("state")
            # a stop: stopped or fault, or holding (stale input) that interrupted a running arm
            stopped = state in ("stopped", "fault") or (state == "holding" and previous == "running")
            if stopped and (state != previous or self.last_stop_reason is None):
                self.last_stop_reason = str(status.get("fault") or status.get("reason") or state)

    def put_step(self, record: dict[str, Any]) -> Step:
        with self._lock:
            step = parse_step(record, self._seq + 1)
            self._seq = step.seq
            self._steps.append(step)
            return step

    def put_frame(self, image: np.ndarray) -> None:
        with self._lock:
            self.frame, self.frame_time_s = image, time.time()
            self.frame_seq += 1

    # ------------------------------------------------------------------ readers (web clients)
    def steps_since(self, seq: int, now_s: float | None = None) -> list[Step]:
        """Steps newer than `seq` and within the window."""
        oldest = (time.time() if now_s is None else now_s) - self.window_s
        with self._lock:
            return [s for s in self._steps if s.seq > seq and s.stamp_s >= oldest]

    def newest_frame(self) -> tuple[int, np.ndarray | None]:
        with self._lock:
            return self.frame_seq, self.frame

    def control_rate_hz(self, now_s: float | None = None, span_s: float = 2.0) -> float:
        """Executed commands per second over the last `span_s` seconds."""
        now = time.time() if now_s is None else now_s
        with self._lock:
            n = sum(1 for s in self._steps if s.stamp_s >= now - span_s)
        return n / span_s

    def summary(self) -> dict[str, Any]:
        """Instruction, controller state and the reason for the last stop, for the page's header."""
        with self._lock:
            status = dict(self.status or {})
            age = None if self.status_time_s is None else time.time() - self.status_time_s
            frame = None if self.frame is None else list(self.frame.shape[:2])
        return {"state": controller_state(status, age), "policy_state": status.get("state"),
                "reason": status.get("reason"), "instruction": status.get("instruction") or "",
                "last_stop_reason": self.last_stop_reason, "status_age_s": age, "camera_size": frame,
                "control_hz": status.get("control_hz"), "achieved_hz": status.get("achieved_hz"),
                "latency_p50_ms": status.get("latency_p50_ms"), "ee_pos_m": status.get("ee_pos_m"),
                "server": status.get("server")}


STATUS_STALE_S = 3.0
ESTOP_MARK = "emergency stop"


def controller_state(status: dict[str, Any], age_s: float | None) -> str:
    """The policy node's state in the console's five words: idle, running, holding, fault, e-stopped
    (plus `offline` without a recent status and `starting` before the robot is connected)."""
    if not status or age_s is None or age_s > STATUS_STALE_S:
        return "offline"
    state = status.get("state")
    if state == "fault":
        return "e-stopped" if ESTOP_MARK in str(status.get("fault") or status.get("reason") or "") else "fault"
    if state in ("stopped", "idle"):
        return "idle"
    if state in ("running", "holding", "starting"):
        return state
    return str(state)
