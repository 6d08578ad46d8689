"""FrankyDriver: the real franky client driving franky-sim over loopback, in (simulated) real time.

One module-scoped driver serves most tests; the server is always cleaned up by the fixture.
"""

import socket
import time

import numpy as np
import pytest

pytest.importorskip("franky")
pytest.importorskip("franky_sim")

from lapa.franka import HOME_GRIPPER_WIDTH_M, connect_franky  # noqa: E402
from lapa.geometry import rotation_error  # noqa: E402
from lapa.sim.env import TabletopEnv, episode_task, run_episode  # noqa: E402
from lapa.sim.franky_driver import FrankyDriver  # noqa: E402
from lapa.sim.scene import (  # noqa: E402
    BLOCK_HALF_SIZE_M,
    SceneConfig,
    sample_block_poses,
)

HOLD_OPEN = [0, 0, 0, 0, 0, 0, 1.0]
HOLD_CLOSED = [0, 0, 0, 0, 0, 0, 0.0]
HOME_TCP_M = np.array([0.5, 0.0, 0.25])


@pytest.fixture(scope="module")
def driver():
    with FrankyDriver(SceneConfig(image_size=64), control_hz=10.0) as d:
        yield d
    d.close()  # idempotent
    assert d.closed


def _free_loopback_address() -> str:
    """A 127.x address with nothing on the libfranka port (franky-sim counts up from 127.0.0.1)."""
    for last in range(2, 250):
        host = f"127.0.9.{last}"
        with socket.socket() as s:
            try:
                s.bind((host, 1337))
            except OSError:
                continue
            return host
    raise RuntimeError("no free loopback address")


@pytest.mark.timeout(60)
def test_connects_and_reports_the_pose_of_the_sim_tcp(driver):
    assert driver.hostname.startswith("127.")
    driver.reset(0)
    state = driver.robot_state()
    pos, R = driver.sim_tcp_pose()
    assert np.linalg.norm(state.ee_pos_m - pos) < 2e-3
    assert np.linalg.norm(rotation_error(driver.tcp_pose()[1], R)) < 5e-3
    assert np.linalg.norm(state.ee_pos_m - HOME_TCP_M) < 5e-3
    assert state.gripper_width_m == pytest.approx(HOME_GRIPPER_WIDTH_M, abs=2e-3)
    vec = state.as_vector()
    assert vec.shape == (8,) and np.all(np.isfinite(vec))
    # While moving too: the client reports the measured pose, not the commanded one.
    driver.apply_action([0.02, 0.0, -0.02, 0, 0, 0, 1.0])
    assert np.linalg.norm(driver.tcp_pose()[0] - driver.sim_tcp_pose()[0]) < 4e-3
    image = driver.render("scene")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 5


@pytest.mark.timeout(60)
def test_two_centimetre_step_in_x_lands_within_two_millimetres(driver):
    driver.settle(0.1)
    p0, R0 = driver.tcp_pose()
    t0 = driver.sim_time_s
    driver.apply_action([0.02, 0, 0, 0, 0, 0, 1.0])
    assert driver.sim_time_s - t0 == pytest.approx(0.1, abs=0.02)  # returns at the control rate
    driver.settle()
    p1, R1 = driver.tcp_pose()
    assert np.linalg.norm(p1 - p0 - [0.02, 0, 0]) < 2e-3
    assert np.linalg.norm(rotation_error(R1, R0)) < 5e-3
    assert np.linalg.norm(driver.sim_tcp_pose()[0] - p1) < 1e-3


@pytest.mark.timeout(60)
def test_yaw_step_rotates_about_the_base_z_axis(driver):
    driver.settle(0.1)
    p0, R0 = driver.tcp_pose()
    driver.apply_action([0, 0, 0, 0, 0, 0.1, 1.0])
    driver.settle()
    p1, R1 = driver.tcp_pose()
    w = rotation_error(R1, R0)  # base-frame axis-angle: R1 = exp(w) R0
    assert w[2] == pytest.approx(0.1, abs=5e-3), f"rotated by {w} rad"  # typically 0-2 mrad over
    assert np.abs(w[:2]).max() < 2e-3
    assert np.linalg.norm(p1 - p0) < 3e-3


@pytest.mark.timeout(60)
def test_gripper_closes_then_reset_reopens_it_and_replaces_the_blocks(driver):
    driver.reset(5)
    a = driver.block_positions()
    assert driver.gripper_width_m() > HOME_GRIPPER_WIDTH_M - 2e-3
    driver.apply_action([0.0, 0.03, -0.03, 0, 0, 0.1, 0.0])  # move the arm away from home, close
    for _ in range(25):  # nothing between the fingers: they close fully
        if driver.gripper_width_m() < 2e-3:
            break
        driver.apply_action(HOLD_CLOSED)
    assert driver.gripper_width_m() < 2e-3
    driver.reset(6)
    b = driver.block_positions()
    state = driver.robot_state()
    assert np.linalg.norm(state.ee_pos_m - HOME_TCP_M) < 5e-3
    assert state.gripper_width_m > HOME_GRIPPER_WIDTH_M - 2e-3
    driver.reset(5)
    c = driver.block_positions()
    expected = sample_block_poses(driver.config, np.random.default_rng(5))
    for colour, (pos, _yaw) in expected.items():
        assert np.linalg.norm(a[colour][:2] - pos[:2]) < 1e-3
        assert a[colour][2] == pytest.approx(BLOCK_HALF_SIZE_M, abs=2e-3)  # resting on the table
        assert np.linalg.norm(a[colour] - c[colour]) < 1e-3
    assert any(np.linalg.norm(a[k] - b[k]) > 1e-2 for k in a)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", [
    [np.nan, 0, 0, 0, 0, 0, 1.0],
    [0, 0, 0, 0, np.inf, 0, 1.0],
    [0.01, 0, 0, 0, 0, 1.0],  # 6 values
    np.zeros((2, 7)),
])
def test_bad_actions_raise_and_do_not_move_the_robot(driver, bad):
    driver.settle(0.1)
    p0, _ = driver.tcp_pose()
    with pytest.raises(ValueError):
        driver.apply_action(bad)
    driver.settle(0.2)
    assert not driver.robot.is_in_control
    assert np.linalg.norm(driver.tcp_pose()[0] - p0) < 5e-4


@pytest.mark.timeout(60)
def test_stop_brings_the_arm_to_rest_without_a_jump(driver):
    driver.reset(4)
    for _ in range(3):
        driver.apply_action([0.02, 0, 0, 0, 0, 0, 1.0])
    before, _ = driver.tcp_pose()
    driver.stop()
    after_stop, _ = driver.tcp_pose()
    assert not driver.robot.is_in_control
    assert np.linalg.norm(after_stop - before) < 0.01  # decelerated from 0.2 m/s, no jump
    driver.settle(0.3)
    assert np.linalg.norm(driver.tcp_pose()[0] - after_stop) < 1e-3  # and holds there


@pytest.mark.timeout(60)
def test_franky_errors_surface_as_runtime_errors_and_stop_the_arm(driver):
    import franky

    driver.settle(0.1)
    away = np.asarray(driver.robot.current_joint_state.position) + [0.3, 0, 0, 0, 0, 0, 0]
    driver.robot.move(franky.JointMotion(franky.JointState(away)), asynchronous=True)  # someone else's motion
    with pytest.raises(RuntimeError, match="franky velocity motion failed"):
        driver.apply_action([0.01, 0, 0, 0, 0, 0, 1.0])  # a velocity motion cannot preempt a joint motion
    driver.settle(0.2)
    assert not driver.robot.is_in_control
    driver.reset(7)  # and the driver recovers
    assert np.linalg.norm(driver.tcp_pose()[0] - HOME_TCP_M) < 5e-3


@pytest.mark.timeout(30)
def test_connecting_where_nothing_listens_fails_fast():
    host = _free_loopback_address()
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=host):
        connect_franky(host, timeout_s=2.0)
    assert time.monotonic() - t0 < 2.0


@pytest.mark.timeout(30)
def test_connecting_to_a_silent_listener_times_out():
    host = _free_loopback_address()
    with socket.socket() as listener:  # accepts TCP connections (kernel backlog), never answers
        listener.bind((host, 1337))
        listener.listen(1)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no answer"):
            connect_franky(host, timeout_s=1.0)
        assert 1.0 <= time.monotonic() - t0 < 3.0


@pytest.mark.timeout(60)
def test_scripted_expert_reaches_a_block(driver):
    env = TabletopEnv(driver)
    task, instruction = episode_task("reach", 2)
    result = run_episode(env, task, 2, instruction=instruction)
    assert result.success, f"reach failed after {result.steps} steps"
    assert result.frames.shape == (result.steps + 1, 64, 64, 3)
    assert result.actions.shape == (result.steps + 1, 7)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_scripted_expert_picks_up_a_block_and_holds_it(driver):
    env = TabletopEnv(driver)
    task, instruction = episode_task("pick", 0)
    result = run_episode(env, task, 0, instruction=instruction, record=False)
    assert result.success, f"pick failed after {result.steps} steps"
    driver.apply_action(HOLD_CLOSED)
    # The fingers rest on the 4 cm block, which stays lifted.
    assert driver.gripper_width_m() == pytest.approx(2 * BLOCK_HALF_SIZE_M, abs=4e-3)
    assert driver.block_pose(task.colour)[0][2] > 0.08
