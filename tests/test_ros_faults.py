"""Representative faults on the whole stack (policy server with the scripted expert, lapa_sim with
franky-sim, lapa_policy with the franky backend, real processes): a killed server holds the arm
within a control period, NaN actions latch a fault without a motion, an emergency stop during a
motion latches, a frozen camera holds until it is healthy again. The arm's motion is judged from
lapa_sim's scene (franky-sim's ground truth)."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("franky")

from bench import fault_metrics as fm  # noqa: E402
from bench.fault_kinds import KINDS  # noqa: E402
from bench.fault_stack import FaultStack  # noqa: E402
from bench.faults import PERIOD_S, STEP_LIMIT_M, one_run  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
DDS_SLACK_S = 0.05  # /lapa/step's way to the test process


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = FaultStack(tmp_path_factory.mktemp("faults"))
    try:
        s.start(timeout_s=240)
        yield s
    finally:
        s.close()


def check_stopped(run: dict, kind: str) -> None:
    assert "error" not in run, run
    assert run["max_commanded_step_m"] <= STEP_LIMIT_M + 1e-6
    assert run["late_commands"] == 0, f"{kind}: commands after the fault was detectable: {run}"
    assert run["at_rest"], f"{kind}: the arm is not at rest: {run}"
    assert run["latched_right"], f"{kind}: wrong state: {run['status']}"


def test_a_killed_server_holds_the_arm_within_a_period(stack):
    run = one_run(stack, KINDS["server_kill"], np.random.default_rng(1))
    check_stopped(run, "server_kill")
    assert run["commands_after_fault"] <= 1  # at most the command of the tick already under way
    # the tick under way may still carry its command (one step, up to the safety limit), then the
    # arm brakes: at most that step plus 1 cm of braking from 0.3 m/s
    assert run["travel_after_fault_m"] < run["max_commanded_step_m"] + 0.01
    assert run["recovered"], run  # the restarted server: the loop resumes by itself


def test_nan_actions_latch_a_fault_without_motion(stack):
    run = one_run(stack, KINDS["reply_nan"], np.random.default_rng(2))
    check_stopped(run, "reply_nan")
    assert run["status"]["state"] == "fault" and "non-finite" in run["status"]["reason"]
    assert run["commands_after_fault"] <= 1
    assert run["recovered"], run  # after /lapa/start with healthy replies


def test_an_emergency_stop_during_a_motion_latches(stack):
    run = one_run(stack, KINDS["emergency_stop"], np.random.default_rng(3))
    check_stopped(run, "emergency_stop")
    assert run["moving_at_fault"], "the arm was not moving when the emergency stop came"
    assert run["status"]["state"] == "fault" and "emergency stop" in run["status"]["reason"]
    # Nothing moves after the emergency stop until /lapa/start (which one_run calls to recover).
    assert run["commands_after_fault"] <= 1
    assert run["fault_to_rest_s"] is not None and run["fault_to_rest_s"] < 1.0


def test_a_frozen_camera_holds_the_arm_and_it_resumes_when_the_camera_does(stack):
    run = one_run(stack, KINDS["camera_freeze"], np.random.default_rng(4))
    check_stopped(run, "camera_freeze")  # the republished frames (same stamp) are not fresh input
    assert run["status"]["state"] == "holding" and "stale image" in run["status"]["reason"]
    assert run["recovered"], run


def test_the_trace_sees_the_arm(stack):
    """The measurements above rest on lapa_sim's scene reaching the test at its rate."""
    t0 = time.monotonic()
    time.sleep(1.0)
    tcp = stack.trace.window(t0, time.monotonic())["tcp"]
    assert len(tcp) > 15  # 50 Hz nominal, franky-sim slower than real time on a busy machine
    assert fm.max_period_displacement(tcp, PERIOD_S) < STEP_LIMIT_M
