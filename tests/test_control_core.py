"""The policy node's control core without ROS: a fake clock, backend and inference worker, driven
tick by tick (faults, stale input, emergency-stop latching, chunk timing, the services)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lapa.action import RobotState
from lapa.chunking import ChunkExecutor
from lapa_ros.backends.base import BackendError
from lapa_ros.control_core import ControlCore, CoreSettings
from lapa_ros.inference import Frame, FrameBuffer, Request, Result
from lapa_ros.safety import SafetyFilter, SafetyLimits
from policy_server.client import ActReply

HOME_M = np.array([0.5, 0.0, 0.25])


class FakeClock:
    def __init__(self) -> None:
        self.mono, self.wall_s = 100.0, 1_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_s

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_s += seconds


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message, **_):
        self.lines.append(("info", message))

    def warning(self, message, **_):
        self.lines.append(("warning", message))

    def error(self, message, **_):
        self.lines.append(("error", message))


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.applied: list[np.ndarray] = []
        self.holds = self.stops = self.recovers = self.homes = 0
        self.error: str | None = None  # raised by check() while set
        self.home_error: str | None = None
        self.state_age = 0.0
        self.state_value = RobotState(HOME_M.copy(), np.array([np.pi, 0.0, 0.0]), 0.08)

    def state(self) -> RobotState:
        return self.state_value

    def state_age_s(self) -> float:
        return self.state_age

    def check(self) -> None:
        if self.error:
            raise BackendError(self.error)

    def apply(self, action) -> None:
        self.applied.append(np.asarray(action).copy())

    def hold(self) -> None:
        self.holds += 1

    def stop(self) -> None:
        self.stops += 1

    def recover(self) -> None:
        self.recovers += 1
        self.error = None

    def home(self) -> None:
        if self.home_error:
            raise BackendError(self.home_error)
        self.homes += 1

    def close(self) -> None:
        pass


class FakeWorker:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.requests: list[Request] = []
        self.server_time_s: float | None = clock.monotonic()
        self.last_error: str | None = None

    def request(self, req: Request) -> None:
        self.requests.append(req)


class Rig:
    """A core with fakes, an attached backend and an instruction; `frame()` and `reply()` feed it."""

    def __init__(self, mode: str = "first_n", n: int = 1, autostart: bool = True,
                 limits: SafetyLimits | None = None) -> None:
        self.clock = FakeClock()
        self.log = FakeLog()
        self.backend = FakeBackend()
        self.worker = FakeWorker(self.clock)
        self.commands: list[tuple[np.ndarray, float | None]] = []
        self.core = ControlCore(SafetyFilter(limits), ChunkExecutor(mode, n), FrameBuffer(), self.worker,
                                settings=CoreSettings(max_robot_state_age_s=0.5, autostart=autostart),
                                clock=self.clock, log=self.log,
                                on_command=lambda a, latency: self.commands.append((a, latency)))

    def attach(self) -> Rig:
        self.core.attach_backend(self.backend, 10.0)
        return self

    def frame(self, age_s: float = 0.0) -> Frame:
        """A camera frame received now, captured `age_s` ago."""
        self.core.put_frame(np.zeros((8, 8, 3), np.uint8), self.clock.wall() - age_s)
        return self.core.frames.newest()

    def alive(self) -> None:
        self.worker.server_time_s = self.clock.monotonic()

    def tick(self, dt_s: float = 0.1) -> None:
        self.clock.advance(dt_s)
        self.alive()
        self.frame()
        self.core.tick()

    def reply(self, request: Request, actions, frame: Frame | None = None) -> None:
        frame = frame or self.core.frames.newest()
        reply = ActReply(np.asarray(actions, np.float32), request_id=None, model_ms=5.0, server_ms=6.0,
                         round_trip_ms=8.0)
        self.core.on_result(Result(request, frame, reply, frame.receipt_mono_s, self.clock.monotonic()))


def steps(k: int, dx: float = 0.01) -> np.ndarray:
    """A chunk of k actions: action i moves (i + 1) * dx in x, gripper open."""
    a = np.zeros((k, 7), np.float32)
    a[:, 0] = dx * np.arange(1, k + 1)
    a[:, 6] = 1.0
    return a


def test_starting_then_idle_then_running_on_an_instruction():
    rig = Rig()
    rig.core.set_waiting("waiting for the policy server")
    assert rig.core.state_name == "starting"
    rig.core.tick()  # no backend yet: nothing happens
    assert rig.core.tick_count == 0
    rig.attach()
    assert (rig.core.state_name, rig.core.reason) == ("idle", "ready: waiting for an instruction")
    rig.tick()
    assert rig.backend.holds == 1 and not rig.worker.requests  # idle ticks hold, ask nothing
    rig.core.on_instruction("  reach the   red block ")
    assert rig.core.instruction == "reach the red block"
    assert rig.core.state_name == "running" and rig.core.running


def test_without_autostart_an_instruction_waits_for_start():
    rig = Rig(autostart=False).attach()
    rig.core.on_instruction("reach the red block")
    assert not rig.core.running and rig.core.state_name == "idle"
    assert rig.core.start() == (True, "started")
    assert rig.core.state_name == "running"


def test_a_reply_executes_its_first_action_at_once_and_then_one_per_tick():
    rig = Rig(n=3).attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()  # tick 1: no chunk yet, asks for one
    assert [r.tick for r in rig.worker.requests] == [1]
    assert np.allclose(rig.worker.requests[0].state, rig.backend.state_value.as_vector())
    rig.clock.advance(0.02)
    rig.reply(rig.worker.requests[0], steps(4))
    assert len(rig.backend.applied) == 1 and rig.backend.applied[0][0] == pytest.approx(0.01)
    action, latency_ms = rig.commands[0]
    assert latency_ms == pytest.approx(20.0)  # capture (tick 1's frame) -> command
    assert list(rig.core.stats["node_to_command_ms"]) == pytest.approx([20.0])  # received -> command
    rig.tick()  # tick 2: the chunk's action 1, no request
    rig.tick()  # tick 3: action 2
    assert [a[0] for a in rig.backend.applied] == pytest.approx([0.01, 0.02, 0.03])
    assert len(rig.worker.requests) == 1
    rig.tick()  # tick 4: n = 3 actions used, a new request
    assert [r.tick for r in rig.worker.requests] == [1, 4]
    assert rig.core.counts["commands"] == 3 and rig.core.counts["replies"] == 1
    assert len(rig.core.stats["latency_ms"]) == 1  # only commands sent on a reply carry a latency


def test_a_late_reply_skips_the_actions_of_ticks_already_gone():
    rig = Rig(n=4).attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()  # tick 1 asks
    request = rig.worker.requests[0]
    rig.tick()  # tick 2: still asking, nothing to execute (the sim backend would step on a hold)
    rig.tick()  # tick 3
    assert not rig.backend.applied
    rig.reply(request, steps(4, dx=0.005))  # arrives during tick 3: actions 0 and 1 belong to ticks gone
    assert [a[0] for a in rig.backend.applied] == pytest.approx([0.015])
    rig.tick()  # tick 4: action 3
    assert [a[0] for a in rig.backend.applied] == pytest.approx([0.015, 0.02])


def test_a_reply_for_a_tick_that_already_has_its_command_serves_the_next_tick():
    rig = Rig(mode="ensemble").attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()  # tick 1
    rig.reply(rig.worker.requests[0], steps(3))  # executes action 0 in tick 1
    rig.reply(rig.worker.requests[0], steps(3, dx=0.02))  # tick 1 is done: nothing more now
    assert len(rig.backend.applied) == 1
    rig.tick()  # tick 2 waits for its own chunk: ensembling averages in the newest prediction
    assert len(rig.backend.applied) == 1 and rig.worker.requests[-1].tick == 2
    rig.reply(rig.worker.requests[-1], steps(3, dx=0.03))  # action 0 of tick 2's chunk, weight 1
    w = math.exp(-0.5)  # both tick-1 chunks are one tick old (decay 0.5)
    assert rig.backend.applied[1][0] == pytest.approx((w * 0.02 + w * 0.04 + 0.03) / (2 * w + 1))
    assert rig.core.stats["latency_ms"], "ensembled commands carry their image's latency"


def test_stale_image_holds_without_latching_and_resumes_when_fresh():
    rig = Rig(n=5).attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()
    rig.reply(rig.worker.requests[0], steps(5))
    rig.clock.advance(0.7)  # no camera frame for 0.7 s (limit 0.5 s)
    rig.alive()
    rig.core.tick()
    assert rig.core.state_name == "holding" and rig.core.reason.startswith("stale image")
    assert rig.core.safety.fault is None and rig.core.counts["holds"] == 1
    assert rig.backend.stops == 1  # the arm was moving: stopped
    rig.tick()  # fresh again: the queued chunk was dropped, so a new request, no action
    assert rig.core.state_name == "holding"  # until the next command runs
    assert rig.worker.requests[-1].tick == rig.core.tick_count
    rig.reply(rig.worker.requests[-1], steps(2))
    assert rig.core.state_name == "running" and len(rig.backend.applied) == 2


def test_stale_robot_state_and_a_silent_server_hold():
    rig = Rig().attach()
    rig.core.on_instruction("reach the red block")
    rig.backend.state_age = 0.8
    rig.tick()
    assert rig.core.state_name == "holding" and rig.core.reason == "stale robot state: 800 ms old"
    rig.backend.state_age = 0.0
    rig.worker.server_time_s, rig.worker.last_error = None, "server down: connection refused"
    rig.clock.advance(0.1)
    rig.frame()
    rig.core.tick()
    assert rig.core.reason == "server down: connection refused"  # the worker's own words
    assert not rig.worker.requests[1:] and rig.core.safety.fault is None


def test_emergency_stop_latches_until_start():
    rig = Rig(n=5).attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()
    rig.reply(rig.worker.requests[0], steps(5))
    assert rig.core.emergency_stop() == (True, "emergency stop latched")
    assert rig.core.state_name == "fault" and rig.backend.stops == 1
    applied = len(rig.backend.applied)
    rig.tick()
    rig.core.on_instruction("reach the blue block")  # a new instruction does not clear the latch
    rig.tick()
    assert len(rig.backend.applied) == applied and not rig.core.running
    assert rig.core.state_name == "fault" and "emergency stop" in rig.core.reason
    ok, message = rig.core.start()
    assert ok and message.startswith("started (cleared: emergency stop")
    assert rig.core.state_name == "running" and rig.backend.recovers == 1
    rig.tick()  # frames from before the start do not count; this tick's frame is new
    rig.reply(rig.worker.requests[-1], steps(2))
    assert len(rig.backend.applied) == applied + 1


def test_robot_error_invalid_reply_and_non_finite_action_fault():
    rig = Rig().attach()
    rig.core.on_instruction("reach the red block")
    rig.backend.error = "reflex: cartesian velocity limit"
    rig.tick()
    assert rig.core.state_name == "fault" and rig.core.reason == "robot error: reflex: cartesian velocity limit"
    assert rig.core.counts["faults"] == 1

    rig = Rig().attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()
    rig.reply(rig.worker.requests[0], np.zeros((2, 6)))
    assert rig.core.state_name == "fault" and rig.core.reason.startswith("invalid reply from the policy server")

    rig = Rig().attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()
    bad = steps(2)
    bad[0, 1] = np.nan
    rig.reply(rig.worker.requests[0], bad)
    assert rig.core.state_name == "fault" and "non-finite" in rig.core.reason and not rig.backend.applied


def test_a_fatal_server_error_faults_a_passing_one_does_not():
    rig = Rig().attach()
    rig.core.on_server_error("server down", fatal=False)
    assert rig.core.state_name == "idle"
    rig.core.on_server_error("the server refused the API key", fatal=True)
    assert rig.core.state_name == "fault" and rig.core.reason == "the server refused the API key"


def test_the_safety_filter_clamps_what_reaches_the_robot():
    rig = Rig(limits=SafetyLimits(max_step_translation_m=0.02)).attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()
    rig.reply(rig.worker.requests[0], steps(1, dx=0.05))
    assert rig.backend.applied[0][0] == pytest.approx(0.02) and rig.core.counts["clamped"] == 1


def test_stop_word_and_stop_service_stop_without_latching():
    rig = Rig(n=3).attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()
    rig.reply(rig.worker.requests[0], steps(3))
    rig.core.on_instruction("Stop.")
    assert rig.core.state_name == "stopped" and rig.core.reason == "stopped by instruction"
    assert rig.core.instruction == "reach the red block" and rig.backend.stops == 1
    rig.tick()
    assert len(rig.backend.applied) == 1  # the chunk was forgotten
    rig.core.on_instruction("reach the red block")
    assert rig.core.state_name == "running"
    assert rig.core.stop_service() == (True, "stopped")
    assert rig.core.state_name == "stopped" and rig.core.safety.fault is None


def test_home_blocks_ticks_and_a_failed_home_faults():
    rig = Rig().attach()
    assert rig.core.home() == (True, "at home")
    assert rig.backend.homes == 1 and rig.core.state_name == "idle"
    rig.backend.home_error = "joint motion aborted"
    ok, message = rig.core.home()
    assert not ok and message == "joint motion aborted"
    assert rig.core.state_name == "fault" and rig.core.reason == "move home failed: joint motion aborted"


def test_services_before_the_robot_is_connected_answer_not_ready():
    rig = Rig()
    rig.core.set_waiting("connecting to the robot at 172.16.0.2")
    assert rig.core.start() == (False, "not ready: connecting to the robot at 172.16.0.2")
    assert rig.core.home()[0] is False


def test_status_reports_rates_latency_pose_and_counts(tmp_path):
    rig = Rig().attach()
    rig.core.on_instruction("reach the red block")
    for _ in range(5):
        rig.tick()
        rig.clock.advance(0.01)
        rig.reply(rig.worker.requests[-1], steps(1))
    status = rig.core.status()
    assert status["state"] == "running" and status["control_hz"] == 10.0
    assert status["achieved_hz"] == pytest.approx(1 / 0.11)
    assert status["latency_p50_ms"] == pytest.approx(10.0)
    assert status["ee_pos_m"] == HOME_M.tolist() and status["counts"]["commands"] == 5
    rig.core.write_stats(tmp_path / "stats.json", status)
    assert (tmp_path / "stats.json").stat().st_size > 0


def test_a_model_with_a_state_history_gets_past_states_recorded_every_tick():
    """Server metadata `state_history` (1, 3): each request carries [now, 1 tick ago, 3 ticks ago],
    recorded on every tick (also those that ask nothing), restarted by a new instruction."""
    rig = Rig(n=2).attach()
    rig.worker.metadata = {"state_history": [1, 3]}
    rig.core.on_instruction("reach the red block")
    for _ in range(5):
        rig.backend.state_value = RobotState(rig.backend.state_value.ee_pos_m + [0.01, 0, 0],
                                             np.array([np.pi, 0.0, 0.0]), 0.08)
        asked = len(rig.worker.requests)
        rig.tick()
        if len(rig.worker.requests) > asked:  # ticks 1, 3, 5 ask (first_n 2)
            rig.reply(rig.worker.requests[-1], steps(4))
    xs = [np.round(r.state.reshape(3, 8)[:, 0] - HOME_M[0], 3).tolist() for r in rig.worker.requests]
    assert xs == [[0.01, 0.01, 0.01], [0.03, 0.02, 0.01], [0.05, 0.04, 0.02]]
    rig.core.on_instruction("reach the blue block")  # a new episode
    rig.tick()
    assert np.allclose(rig.worker.requests[-1].state.reshape(3, 8)[:, 0], rig.backend.state_value.ee_pos_m[0])
    rig.worker.metadata = {"state_history": []}  # reconnected to a model without one
    rig.core.chunks.clear()
    rig.tick()
    assert rig.worker.requests[-1].state.shape == (8,)


def test_a_server_that_stops_answering_but_stays_connected_holds_the_arm_and_keeps_asking():
    rig = Rig().attach()
    rig.core.on_instruction("reach the red block")
    rig.tick()
    rig.reply(rig.worker.requests[-1], np.full((1, 7), 0.01))
    assert len(rig.commands) == 1 and rig.core.state_name == "running"
    for _ in range(7):  # a request at 0.2 s, 0.6 s later: alive (server_time_s fresh), fresh images, no reply
        rig.tick()
    assert rig.core.state_name == "running" and len(rig.commands) == 1
    asked = len(rig.worker.requests)
    rig.tick()  # 0.7 s without a reply: too late for any answer to be acted on
    assert rig.core.state_name == "holding" and "no reply from the policy server" in rig.core.reason
    assert rig.backend.stops >= 1  # the moving arm is stopped
    rig.tick()
    assert len(rig.worker.requests) > asked  # and the node keeps asking
    rig.reply(rig.worker.requests[-1], np.full((1, 7), 0.01))  # an answer in time: the loop resumes
    rig.tick()
    rig.reply(rig.worker.requests[-1], np.full((1, 7), 0.01))
    assert rig.core.state_name == "running" and len(rig.commands) >= 2
