"""The fast driver: scene, Cartesian delta control in the base frame, gripper, bad actions."""

import numpy as np
import pytest

from lapa.geometry import rotation_error
from lapa.sim.fast_driver import FastDriver
from lapa.sim.scene import BLOCK_HALF_SIZE_M, SceneConfig

HOLD_OPEN = [0, 0, 0, 0, 0, 0, 1.0]


@pytest.fixture(scope="module")
def driver():
    with FastDriver(SceneConfig(image_size=64, wrist_camera=True)) as d:
        yield d


def test_scene_builds_with_blocks_on_the_table(driver):
    driver.reset(3)
    positions = driver.block_positions()
    assert sorted(positions) == ["blue", "green", "red", "yellow"]
    for pos in positions.values():
        assert pos[2] == pytest.approx(BLOCK_HALF_SIZE_M, abs=2e-3)  # resting on the table top
        assert 0.35 <= pos[0] <= 0.65 and -0.2 <= pos[1] <= 0.2


def test_block_positions_are_seeded(driver):
    driver.reset(5)
    a = driver.block_positions()
    driver.reset(6)
    b = driver.block_positions()
    driver.reset(5)
    c = driver.block_positions()
    assert any(np.linalg.norm(a[k] - b[k]) > 1e-3 for k in a)
    assert all(np.allclose(a[k], c[k], atol=1e-9) for k in a)


def test_cameras_render_the_blocks(driver):
    driver.reset(0)
    img = driver.render("scene")
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() >= 3, "the red block should be visible from the scene camera"
    wrist = driver.render("wrist")
    assert wrist.shape == (64, 64, 3) and wrist.std() > 5
    with pytest.raises(KeyError, match="unknown camera"):
        driver.render("ceiling")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_translation_delta_moves_the_ee_in_the_base_frame(driver, axis):
    driver.reset(1)
    p0 = driver.robot_state().ee_pos_m
    action = np.array(HOLD_OPEN, float)
    action[axis] = 0.02
    driver.apply_action(action)
    driver.apply_action(HOLD_OPEN)  # let the servo settle
    moved = driver.robot_state().ee_pos_m - p0
    assert moved[axis] == pytest.approx(0.02, rel=0.1)
    others = np.delete(moved, axis)
    assert np.all(np.abs(others) < 0.002)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rotation_delta_rotates_the_ee_in_the_base_frame(driver, axis):
    driver.reset(1)
    _, R0 = driver.tcp_pose()
    action = np.array(HOLD_OPEN, float)
    action[3 + axis] = 0.1
    driver.apply_action(action)
    driver.apply_action(HOLD_OPEN)
    _, R1 = driver.tcp_pose()
    w = rotation_error(R1, R0)  # R1 = exp(w) @ R0: base-frame rotation
    expected = np.zeros(3)
    expected[axis] = 0.1
    assert np.allclose(w, expected, atol=0.01)


def test_gripper_closes_and_opens(driver):
    driver.reset(2)
    assert driver.gripper_width_m() > 0.075
    for _ in range(4):
        driver.apply_action([0, 0, 0, 0, 0, 0, 0.0])
    assert driver.gripper_width_m() < 0.01
    for _ in range(4):
        driver.apply_action(HOLD_OPEN)
    assert driver.gripper_width_m() > 0.075


@pytest.mark.parametrize("bad, message", [
    ([0, 0, np.nan, 0, 0, 0, 1], "non-finite"),
    ([0, 0, 0, 0, 0, 1], r"shape \(7,\)"),
    ([[0] * 7], r"shape \(7,\)"),
])
def test_bad_actions_are_rejected_and_nothing_moves(driver, bad, message):
    driver.reset(4)
    p0 = driver.robot_state().ee_pos_m
    with pytest.raises(ValueError, match=message):
        driver.apply_action(bad)
    assert np.allclose(driver.robot_state().ee_pos_m, p0)


def test_stepping_is_deterministic_for_a_seed(driver):
    trajectories = []
    for _ in range(2):
        driver.reset(9)
        for i in range(5):
            driver.apply_action([0.01, -0.005 * i, -0.01, 0, 0, 0.05, float(i < 3)])
        trajectories.append(driver.robot_state().as_vector())
    assert np.array_equal(trajectories[0], trajectories[1])
