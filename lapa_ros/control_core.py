"""The policy node's control logic as a plain class: no ROS, an injected clock, backend and inference worker.

`ControlCore` holds what a control tick decides (execute the chunk's action for this tick, hold on
stale input, fault and latch, ask for the next chunk), what a server reply does (its action runs at
once if its tick has no command yet), the instruction and the operator's services (start, stop,
emergency stop, home), and the loop's statistics. `lapa_ros/policy_node.py` wires ROS topics,
parameters and services to it and runs its clock thread; tests drive it tick by tick.

States (`state_name`): starting -> idle -> running <-> holding; stopped; fault (latched: nothing
moves until `start`). Every executed action goes through the `SafetyFilter`; a stale image, action,
server or robot state holds the arm (stop without latching, queued chunks dropped), a robot error
or an invalid reply faults.

Threads: `tick` runs on the control thread, `on_result` and `on_server_error` on the inference
thread, the services, `on_instruction` and `put_frame` on the ROS executor's; shared state is
guarded by one re-entrant lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lapa.action import RobotState
from lapa.chunking import ChunkExecutor, TickAction
from lapa.state_history import StateHistory
from lapa_ros.backends.base import BackendError, RobotBackend
from lapa_ros.inference import Frame, FrameBuffer, Request, Result
from lapa_ros.safety import FAULT, HOLD, SafetyFilter

STOP_WORDS = frozenset({"stop", "stop the robot", "cancel", "halt"})
STATS_WINDOW = 2000
STATUS_WINDOW = 200  # recent samples behind the rates and percentiles of `status()`
# timing samples kept for `write_stats` (lapa_ros/session.py's summarize_stats reads them)
STAT_NAMES = ("tick_mono_s", "latency_ms", "model_ms", "round_trip_ms", "server_ms", "queue_ms", "camera_ms",
              "frame_wait_ms", "command_mono_s", "node_to_command_ms", "reply_to_command_ms", "robot_call_ms")
GRIPPER_OPEN_ABOVE_M = 0.04  # a measured width above this counts as an open gripper


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """`time.monotonic` for deadlines and ages, `time.time` for wall-clock stamps."""

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


class Log(Protocol):
    """rclpy's logger, or anything that takes its calls (`throttle_duration_sec` among the keywords)."""

    def info(self, message: str, **kwargs: Any) -> Any: ...

    def warning(self, message: str, **kwargs: Any) -> Any: ...

    def error(self, message: str, **kwargs: Any) -> Any: ...


class PythonLog:
    """A `Log` over the standard logging module (throttling ignored)."""

    def __init__(self, name: str = "lapa_policy") -> None:
        self._log = logging.getLogger(name)

    def info(self, message: str, **_: Any) -> None:
        self._log.info(message)

    def warning(self, message: str, **_: Any) -> None:
        self._log.warning(message)

    def error(self, message: str, **_: Any) -> None:
        self._log.error(message)


class InferenceLink(Protocol):
    """What the core uses of `InferenceWorker`: send a request, and the server's sign of life."""

    server_time_s: float | None
    last_error: str | None

    def request(self, req: Request) -> None: ...


@dataclass(frozen=True)
class CoreSettings:
    max_robot_state_age_s: float = 0.5  # a measured robot state older than this holds the arm
    autostart: bool = True  # a new instruction starts the loop (an emergency stop still needs start)


def percentile_ms(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


class ControlCore:
    """Tick, execute, hold, fault and the services' state; see the module docstring."""

    def __init__(self, safety: SafetyFilter, chunks: ChunkExecutor, frames: FrameBuffer,
                 worker: InferenceLink | None = None, *, settings: CoreSettings | None = None,
                 clock: Clock | None = None, log: Log | None = None,
                 on_command: Callable[[np.ndarray, float | None], None] | None = None,
                 wrist_frames: FrameBuffer | None = None) -> None:
        self.safety = safety
        self.chunks = chunks
        self.frames = frames
        self.wrist_frames = wrist_frames  # the hand camera, for a model with cameras [scene, wrist]
        self.worker = worker  # set before the first tick
        self.settings = settings or CoreSettings()
        self.clock = clock or SystemClock()
        self.log = log or PythonLog()
        self.on_command = on_command or (lambda action, latency_ms: None)  # each executed action
        self.backend: RobotBackend | None = None
        self.control_hz: float | None = None

        # State shared between the executor's threads and the inference thread, under _lock.
        self._lock = threading.RLock()
        self.state_name = "starting"
        self.reason = "connecting to the policy server and the robot"
        self.instruction = ""
        self.running = False
        self.homing = False
        self._moving = False
        self._tick = 0
        self._tick_done = True
        self._not_before_mono_s = 0.0
        self._unanswered_since_mono_s: float | None = None  # the oldest request still without a reply
        self.robot_state: RobotState | None = None
        self.history: StateHistory | None = None  # a model with a state history (set_state_history)
        self._history_source: dict | None = None  # the server metadata the history was set from
        self.stats = {name: deque(maxlen=STATS_WINDOW) for name in STAT_NAMES}
        self.counts = {"commands": 0, "holds": 0, "faults": 0, "clamped": 0, "images": 0, "replies": 0}

    @property
    def tick_count(self) -> int:
        return self._tick

    # ------------------------------------------------------------------ setup
    def set_waiting(self, reason: str) -> None:
        """Still starting up: say what for."""
        self._set_state("starting", reason)

    def set_state_history(self, lags: Sequence[int]) -> None:
        """The model takes past states `lags` ticks back (server metadata `state_history`; empty: none)."""
        lags = tuple(int(lag) for lag in lags)
        with self._lock:
            if lags != (self.history.lags if self.history is not None else ()):
                self.history = StateHistory(lags) if lags else None

    def attach_backend(self, backend: RobotBackend, control_hz: float) -> None:
        """A connected backend: read its state, release the safety filter, wait for an instruction."""
        state = backend.state()
        with self._lock:
            self.control_hz = float(control_hz)
            self.robot_state = state
            self.safety.release(gripper_open=state.gripper_width_m > GRIPPER_OPEN_ABOVE_M)
            self.backend = backend
            self._set_state("idle", "ready: waiting for an instruction")

    def detach_backend(self) -> RobotBackend | None:
        """On shutdown: no more ticks reach the backend; returns it for closing."""
        backend, self.backend = self.backend, None
        return backend

    # ------------------------------------------------------------------ inputs
    def put_frame(self, image, stamp_s: float) -> None:
        """A camera frame (RGB array or a JPEG/PNG file) with its capture stamp (0: unstamped)."""
        now_wall = self.clock.wall()
        capture = stamp_s if stamp_s > 0 else now_wall
        self.frames.put(Frame(image, capture, self.clock.monotonic(), now_wall))
        self.counts["images"] += 1

    def put_wrist_frame(self, image, stamp_s: float) -> None:
        """A hand-camera frame (RGB array or a JPEG/PNG file) with its capture stamp (0: unstamped)."""
        if self.wrist_frames is None:
            return
        now_wall = self.clock.wall()
        self.wrist_frames.put(Frame(image, stamp_s if stamp_s > 0 else now_wall, self.clock.monotonic(), now_wall))
        self.counts["wrist_images"] = self.counts.get("wrist_images", 0) + 1

    def on_instruction(self, text: str) -> None:
        text = " ".join(text.strip().split())
        if not text:
            return
        if text.lower().strip(".!") in STOP_WORDS:
            self.log.info(f"instruction {text!r}: stopping")
            self.stop("stopped by instruction")
            return
        with self._lock:
            self.instruction = text
            self.chunks.clear()
            if self.history is not None:
                self.history.reset()  # a new episode: its first state stands in for the past ones
            self._not_before_mono_s = self.clock.monotonic()
            started = self.settings.autostart and self.safety.fault is None and self.backend is not None
            if started:
                self.running = True
                self._set_state("running", f"executing {text!r}")
        self.log.info(f"instruction {text!r}" + ("" if started else " (not started: see /lapa/status)"))

    # ------------------------------------------------------------------ the control tick
    def tick(self) -> None:
        now = self.clock.monotonic()
        self.stats["tick_mono_s"].append(now)
        backend = self.backend
        if backend is None or self.homing:
            return
        with self._lock:
            previous_done = self._tick_done
            self._tick += 1
            tick = self._tick
            self._tick_done = False
            try:
                backend.check()
                self.robot_state = backend.state()
            except BackendError as e:
                self.fault(f"robot error: {e}")
                return
            state = self.robot_state.as_vector()  # (8,)
            meta = getattr(self.worker, "metadata", None)  # the connected model's: a new dict on each (re)connect
            if meta is not None and meta is not self._history_source:
                self._history_source = meta
                self.set_state_history(meta.get("state_history") or ())
            if self.history is not None:
                state = self.history.push(state)  # (8 * (1 + H),) every tick, asked or not
            if not self.running or self.safety.fault is not None or not self.instruction:
                self._unanswered_since_mono_s = None
                self._halt_if_moving()
                backend.hold()
                return
            stale = self.safety.check_freshness(now, self._newest_image_time(), now, self.worker.server_time_s)
            if stale is None and meta is not None and "wrist" in meta.get("cameras", ()):
                stale = self._wrist_staleness(now)
            state_age = backend.state_age_s()
            if stale is None and state_age > self.settings.max_robot_state_age_s:
                stale = f"stale robot state: {1e3 * state_age:.0f} ms old"
            if stale is not None:
                self._unanswered_since_mono_s = None  # no request goes out meanwhile
                self._hold(self._explain(stale))
                return
            waited = now - (self._unanswered_since_mono_s if self._unanswered_since_mono_s is not None else now)
            if waited > self.safety.limits.max_action_age_s:
                # A server that answers too late (or not at all) while its connection stays up: whatever
                # it answers now was computed from an image too old to act on. Hold, and keep asking.
                self._hold(f"no reply from the policy server for {1e3 * waited:.0f} ms")
                self.worker.request(Request(tick, now, self.instruction, state, self._not_before_mono_s))
                return
            ta = None if self.chunks.waits_for_reply else self.chunks.action_for(tick)
            if ta is not None:
                self._execute(ta, now)
            elif not previous_done:
                backend.hold()  # no command last tick either: the sim backend steps (and renders) anyway
            if self.chunks.needs_request(tick):
                self.worker.request(Request(tick, now, self.instruction, state, self._not_before_mono_s))
                if self._unanswered_since_mono_s is None:
                    self._unanswered_since_mono_s = now

    def on_result(self, result: Result) -> None:
        """Inference thread: a reply. Its first action runs now if its tick is still the current one."""
        self.counts["replies"] += 1
        self.stats["model_ms"].append(result.reply.model_ms)
        self.stats["round_trip_ms"].append(result.reply.round_trip_ms)
        self.stats["server_ms"].append(result.reply.server_ms)  # request parsed -> reply encoded, in the server
        self.stats["queue_ms"].append(result.reply.queue_ms)  # waiting for the server's model thread
        frame = result.frame
        self.stats["camera_ms"].append(1e3 * (frame.receipt_wall_s - frame.capture_time_s))  # render + transport
        self.stats["frame_wait_ms"].append(1e3 * (result.sent_mono_s - frame.receipt_mono_s))  # received -> sent
        with self._lock:
            self._unanswered_since_mono_s = None
            try:
                self.chunks.add_chunk(result.reply.actions, result.frame.receipt_mono_s, result.request.tick,
                                      arrival_tick=self._tick)
            except ValueError as e:
                self.fault(f"invalid reply from the policy server: {e}")
                return
            if not self.running or self._tick_done:
                return  # this tick already has its command: the chunk serves the next ticks
            ta = self.chunks.action_for(self._tick)
            if ta is not None:
                self._execute(ta, self.clock.monotonic(), result.frame.capture_time_s, result.frame.receipt_mono_s,
                              result.done_mono_s)

    def on_server_error(self, message: str, fatal: bool) -> None:
        if fatal:
            self.fault(message)

    def _execute(self, ta: TickAction, now: float, capture_time_s: float | None = None,
                 receipt_mono_s: float | None = None, reply_mono_s: float | None = None) -> None:
        """Under _lock: safety filter, then the robot. Marks the tick done. `capture_time_s` (wall),
        `receipt_mono_s` and `reply_mono_s` (its reply in hand) belong to the chunk just received,
        when it is one."""
        self._tick_done = True
        verdict = self.safety.filter(ta.action, self.robot_state, now, self._newest_image_time(), ta.obs_time_s,
                                     self.worker.server_time_s)
        if verdict.kind == FAULT:
            self.fault(verdict.reason)
            return
        if verdict.kind == HOLD:
            self._hold(self._explain(verdict.reason))
            return
        robot_call_s = self.clock.monotonic()
        try:
            self.backend.apply(verdict.action)
        except BackendError as e:
            self.fault(f"robot error: {e}")
            return
        commanded = self.clock.monotonic()
        self._moving = True
        self.counts["commands"] += 1
        self.counts["clamped"] += bool(verdict.clamped)
        if self.state_name != "running":
            self._set_state("running", f"executing {self.instruction!r}")
        self.stats["command_mono_s"].append(now)
        latency_ms = None
        if capture_time_s is not None:
            latency_ms = 1e3 * (self.clock.wall() - capture_time_s)
            self.stats["latency_ms"].append(latency_ms)
        if receipt_mono_s is not None:  # the stack's own part: the frame's arrival here -> the command sent
            self.stats["node_to_command_ms"].append(1e3 * (commanded - receipt_mono_s))
            self.stats["robot_call_ms"].append(1e3 * (commanded - robot_call_s))
        if reply_mono_s is not None:  # the reply in hand -> the command sent (chunk, safety filter, robot call)
            self.stats["reply_to_command_ms"].append(1e3 * (commanded - reply_mono_s))
        self.on_command(verdict.action, latency_ms)

    # ------------------------------------------------------------------ stopping
    def _halt_if_moving(self) -> None:
        if self._moving:
            self._stop_robot()

    def _stop_robot(self) -> None:
        """Command a stop now (non-blocking); never raises (a failed stop is logged, the fault stays)."""
        self._moving = False
        if self.backend is None:
            return
        try:
            self.backend.stop()
        except Exception as e:  # noqa: BLE001 - already stopping: report, do not recurse
            self.safety.latch(f"robot error while stopping: {e}")
            self.log.error(f"stopping the robot failed: {e}")

    def _hold(self, reason: str) -> None:
        """Stale input: stop (without latching) and forget queued chunks; resumes when inputs are fresh."""
        self.counts["holds"] += 1
        self.chunks.clear()
        self._halt_if_moving()
        if self.backend is not None:
            self.backend.hold()
        if self.state_name != "holding" or self.reason != reason:
            self.log.warning(f"holding: {reason}", throttle_duration_sec=2.0)
        self._set_state("holding", reason)

    def fault(self, reason: str) -> None:
        """Latch a fault: stop whatever runs (a policy step, a move home); only `start` clears it."""
        with self._lock:
            self.counts["faults"] += 1
            self.safety.latch(reason)
            self.running = False
            self.chunks.clear()
            self._stop_robot()
            self._set_state("fault", self.safety.fault or reason)
        self.log.error(f"stopped: {reason}", throttle_duration_sec=2.0)

    def stop(self, reason: str) -> None:
        """Stop moving and hold; a new instruction or `start` resumes."""
        with self._lock:
            self.running = False
            self.chunks.clear()
            self._stop_robot()
            if self.safety.fault is None:
                self._set_state("stopped", reason)

    def _explain(self, reason: str) -> str:
        if reason.startswith("no server") and self.worker.last_error:
            return self.worker.last_error
        return reason

    def _wrist_staleness(self, now: float) -> str | None:
        """Why the hand camera cannot be acted on (a model that takes it), or None."""
        frame = self.wrist_frames.newest() if self.wrist_frames is not None else None
        if frame is None or frame.receipt_mono_s <= self._not_before_mono_s:
            return "no hand camera image: this model takes the wrist camera (set wrist_image_topic)"
        age = now - frame.receipt_mono_s
        if age > self.safety.limits.max_image_age_s:
            return f"stale wrist image: {1e3 * age:.0f} ms old"
        return None

    def _newest_image_time(self) -> float | None:
        frame = self.frames.newest()
        if frame is None or frame.receipt_mono_s <= self._not_before_mono_s:
            return None
        return frame.receipt_mono_s

    def _set_state(self, name: str, reason: str) -> None:
        self.state_name, self.reason = name, reason

    # ------------------------------------------------------------------ the operator's services
    def start(self) -> tuple[bool, str]:
        """Clear a latched fault (emergency stop, error) and run from the current pose."""
        if self.backend is None:
            return False, f"not ready: {self.reason}"
        was = self.safety.fault
        with self._lock:
            self.running = False  # the control thread holds while the robot recovers (outside the lock)
        try:
            self.backend.recover()
            state = self.backend.state()
        except Exception as e:  # noqa: BLE001 - a service always answers
            return False, f"robot did not recover: {e}"
        with self._lock:
            self.robot_state = state
            self.safety.release(gripper_open=state.gripper_width_m > GRIPPER_OPEN_ABOVE_M)
            self.chunks.clear()
            self._not_before_mono_s = self.clock.monotonic()  # only images taken from now on drive the arm
            self.running = True
            self._set_state("running" if self.instruction else "idle",
                            f"executing {self.instruction!r}" if self.instruction else "waiting for an instruction")
        message = f"started (cleared: {was})" if was else "started"
        self.log.info(message)
        return True, message

    def stop_service(self) -> tuple[bool, str]:
        self.stop("stopped by /lapa/stop")
        return True, "stopped"

    def emergency_stop(self) -> tuple[bool, str]:
        self.fault("emergency stop (/lapa/emergency_stop): call /lapa/start to resume")
        return True, "emergency stop latched"

    def home(self) -> tuple[bool, str]:
        """Stop, then move home with the gripper open (blocking; ticks skip meanwhile)."""
        if self.backend is None:
            return False, f"not ready: {self.reason}"
        self.stop("moving home")
        self.homing = True
        try:
            self.backend.home()
            self.robot_state = self.backend.state()
            self._set_state("idle" if self.safety.fault is None else "fault",
                            "at home: waiting for an instruction" if self.safety.fault is None else self.reason)
            return True, "at home"
        except Exception as e:  # noqa: BLE001 - a service always answers
            self.fault(f"move home failed: {e}")
            return False, str(e)
        finally:
            self.homing = False

    # ------------------------------------------------------------------ statistics
    def status(self) -> dict[str, Any]:
        """State, rates and latencies of the recent window, the robot's pose, counts."""
        ticks = np.diff(np.asarray(self.stats["tick_mono_s"])) * 1e3
        recent = ticks[-STATUS_WINDOW:]
        period_ms = 1e3 / self.control_hz if self.control_hz else None
        state = self.robot_state
        latency = list(self.stats["latency_ms"])[-STATUS_WINDOW:]
        return {
            "state": self.state_name, "reason": self.reason, "instruction": self.instruction,
            "running": self.running, "fault": self.safety.fault, "control_hz": self.control_hz,
            "achieved_hz": float(1e3 / recent.mean()) if len(recent) else None,
            "jitter_p99_ms": (float(np.percentile(np.abs(recent - period_ms), 99))
                              if len(recent) and period_ms else None),
            "latency_p50_ms": percentile_ms(latency, 50),
            "latency_p99_ms": percentile_ms(latency, 99),
            "model_p50_ms": percentile_ms(list(self.stats["model_ms"])[-STATUS_WINDOW:], 50),
            "ee_pos_m": state.ee_pos_m.round(4).tolist() if state is not None else None,
            "gripper_width_m": round(state.gripper_width_m, 4) if state is not None else None,
            "tick": self._tick, "counts": dict(self.counts),
        }

    def write_stats(self, path: str | Path, status: dict[str, Any]) -> None:
        """The raw timing samples (JSON) for `lapa bench loop` and the demo."""
        data: dict[str, Any] = {k: list(v) for k, v in self.stats.items()}
        data.update(control_hz=self.control_hz, counts=self.counts, status=status)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data))
