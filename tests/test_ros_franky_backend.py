"""The franky backend with the real franky client against franky-sim (lapa_sim in its own process)."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from ros_helpers import NodeProcess, RosProbe, wait_for

pytest.importorskip("franky")
pytest.importorskip("franky_sim")
pytest.importorskip("rclpy")

from lapa.franka import velocity_for  # noqa: E402
from lapa_ros.backends import BackendError  # noqa: E402
from lapa_ros.backends.franky_backend import FrankyBackend  # noqa: E402

pytestmark = [pytest.mark.timeout(240)]
HOME_TCP_M = np.array([0.5, 0.0, 0.25])


@pytest.fixture(scope="module")
def sim_address(tmp_path_factory):
    """lapa_sim (franky-sim + tabletop) in a process; its announced robot address."""
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from std_msgs.msg import String

    log = tmp_path_factory.mktemp("sim") / "lapa_sim.log"
    sim = NodeProcess("lapa_ros.sim_node", log, {"publish_camera": False}).start()
    probe = RosProbe("franky_backend_probe")
    try:
        probe.record(String, "/lapa_sim/robot_ip", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL),
                     convert=lambda m: m.data)

        def announced():
            if not sim.alive():
                raise RuntimeError(f"lapa_sim exited:\n{sim.log()[-3000:]}")
            return probe.latest("/lapa_sim/robot_ip")

        yield wait_for(announced, 90, "lapa_sim's robot address")
    finally:
        probe.close()
        sim.stop()


@pytest.fixture(scope="module")
def backend(sim_address):
    b = FrankyBackend(sim_address, control_hz=10.0, connect_timeout_s=10.0)
    b.connect()
    yield b
    b.close()


def run_steps(backend: FrankyBackend, action, n: int) -> None:
    for _ in range(n):
        backend.check()
        backend.apply(np.asarray(action, float))
        time.sleep(backend.period_s)


def measured_at_home(backend: FrankyBackend, timeout_s: float = 5.0) -> None:
    """After home(): the measured TCP reaches home. The state is read by the backend's poller, which a
    loaded machine delays, so the first reading after the motion may still be from before its end."""
    wait_for(lambda: np.linalg.norm(backend.state().ee_pos_m - HOME_TCP_M) < 5e-3, timeout_s,
             "the measured TCP at home")


def settle(backend: FrankyBackend, timeout_s: float = 10.0) -> None:
    wait_for(lambda: not backend.robot.is_in_control, timeout_s, "the arm to come to rest")
    time.sleep(0.2)


def test_connects_and_reads_the_home_pose(backend):
    backend.home()
    measured_at_home(backend)
    s = backend.state()
    assert s.gripper_width_m > 0.07


def test_velocity_steps_move_the_arm_along_the_command(backend):
    backend.home()
    p0 = backend.state().ee_pos_m
    run_steps(backend, [0.01, 0, 0, 0, 0, 0, 1.0], 8)  # 8 x 1 cm in +x
    settle(backend)
    moved = backend.state().ee_pos_m - p0
    # franky-sim runs slower than real time on a loaded machine (0.2-0.9x here), and franky times a
    # motion by the robot's clock, so a 100 ms wall-clock tick covers less than a whole step: the
    # direction is exact, the distance at most the 8 cm commanded
    assert 0.004 < moved[0] < 0.088, moved
    assert np.abs(moved[1:]).max() < 0.1 * moved[0] + 1e-3


def test_stop_brings_the_arm_to_rest_without_a_jump(backend):
    backend.home()
    run_steps(backend, [0.02, 0, 0, 0, 0, 0, 1.0], 3)
    before = backend.state().ee_pos_m
    backend.stop()
    settle(backend)
    after = backend.state().ee_pos_m
    assert np.linalg.norm(after - before) < 0.02  # decelerates from 0.2 m/s within limits, no jump
    time.sleep(0.3)
    assert np.linalg.norm(backend.state().ee_pos_m - after) < 1e-3  # and holds


def test_gripper_closes_and_opens_through_actions(backend):
    backend.home()
    run_steps(backend, [0, 0, 0, 0, 0, 0, 0.0], 1)
    wait_for(lambda: (backend.hold(), backend.state().gripper_width_m < 0.01)[1], 20, "the gripper to close")
    run_steps(backend, [0, 0, 0, 0, 0, 0, 1.0], 1)
    wait_for(lambda: (backend.hold(), backend.state().gripper_width_m > 0.075)[1], 20, "the gripper to open")


def test_a_failed_motion_surfaces_as_a_backend_error_and_recover_clears_it(backend):
    import franky

    backend.home()
    away = np.asarray(backend.robot.current_joint_state.position) + [0.2, 0, 0, 0, 0, 0, 0]
    backend.robot.move(franky.JointMotion(franky.JointState(away)), asynchronous=True)  # someone else's motion
    with pytest.raises(BackendError, match="franky"):
        for _ in range(5):  # a velocity motion cannot preempt a joint motion
            backend.check()
            backend.apply(np.array([0.01, 0, 0, 0, 0, 0, 1.0]))
            time.sleep(0.1)
    backend.recover()
    backend.home()
    measured_at_home(backend)


def test_velocity_for_covers_the_delta_in_one_period_and_caps_speed():
    v, w = velocity_for(np.array([0.01, -0.02, 0.0, 0.0, 0.0, 0.05, 1.0]), 0.1)
    np.testing.assert_allclose(v, [0.1, -0.2, 0.0])
    np.testing.assert_allclose(w, [0.0, 0.0, 0.5], atol=1e-9)
    v, w = velocity_for(np.array([1.0, 0, 0, 0, 0, 3.0, 1.0]), 0.1)
    assert np.linalg.norm(v) == pytest.approx(1.0) and np.linalg.norm(w) == pytest.approx(2.0)


def test_connecting_to_a_silent_robot_times_out_with_a_clear_error():
    with socket.socket() as listener:  # accepts TCP connections (kernel backlog), never answers
        for last in range(2, 250):
            host = f"127.0.8.{last}"
            try:
                listener.bind((host, 1337))
                break
            except OSError:
                continue
        listener.listen(1)
        b = FrankyBackend(host, control_hz=10.0, connect_timeout_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="no answer"):
            b.connect()
        assert time.monotonic() - t0 < 3.0


def test_after_a_lost_connection_check_fails_and_recover_reconnects(backend):
    backend.broken = "NetworkException: libfranka: UDP receive: Timeout (simulated)"
    with pytest.raises(BackendError, match="connection is lost"):
        backend.check()
    backend.recover()
    assert backend.broken is None
    backend.check()
    backend.home()
    measured_at_home(backend)


def test_a_reflex_in_franky_sim_surfaces_as_a_backend_error(backend):
    """lapa_sim's /lapa_sim/reflex ends the running motion as an FCI reflex does (kReflexAborted)."""
    probe = RosProbe("franky_backend_reflex")
    moving, stop = threading.Event(), threading.Event()
    errors: list[str] = []  # what the moving thread's own calls raised: the reflex may surface there

    def keep_moving() -> None:  # the reflex must find a motion running, however long the call takes
        while not stop.is_set():
            try:
                backend.check()
                backend.apply(np.asarray([0.0, 0.01, 0, 0, 0, 0, 1.0], float))
            except BackendError as e:
                errors.append(str(e))
                return
            moving.set()
            time.sleep(backend.period_s)

    mover = threading.Thread(target=keep_moving, daemon=True)
    try:
        mover.start()
        assert moving.wait(5.0), "the arm did not start moving"
        time.sleep(backend.period_s)
        ok, message = probe.trigger("/lapa_sim/reflex")
        stop.set()
        mover.join(5.0)
        assert not mover.is_alive()
        assert ok, message

        def surfaced() -> bool:
            try:
                backend.check()
            except BackendError as e:
                errors.append(str(e))
            return any("reflex" in e.lower() for e in errors)

        wait_for(surfaced, 5.0, f"the reflex to surface (errors so far: {errors})")
    finally:
        stop.set()
        mover.join(5.0)
        probe.close()
        backend.recover()  # the next test finds a healthy arm, whatever happened here
    backend.check()
    backend.home()


def test_closing_a_moving_backend_halts_the_arm(backend, caplog):
    run_steps(backend, [0.0, -0.02, 0, 0, 0, 0, 1.0], 2)
    try:
        with caplog.at_level("WARNING", logger="lapa_ros.backends.franky_backend"):
            backend.close()
        assert "stopping the robot on close" not in caplog.text  # halt() ran (it once was shadowed by a bool)
    finally:
        backend.connect()  # one client per port: the module's backend takes it back
    backend.home()
