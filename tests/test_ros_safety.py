"""The safety filter (lapa_ros/safety.py), plain Python: validity, clamps, workspace, hysteresis, staleness."""

import numpy as np
import pytest

from lapa.action import RobotState
from lapa.geometry import rotation_error, rpy_to_matrix
from lapa_ros.safety import FAULT, HOLD, OK, SafetyFilter, SafetyLimits

HOME = RobotState(np.array([0.5, 0.0, 0.25]), np.array([np.pi, 0.0, 0.0]), 0.08)
NOW = 100.0


def fresh(f: SafetyFilter, action, state=HOME, now=NOW):
    return f.filter(action, state, now, now - 0.01, now - 0.05, now - 0.05)


def act(*xyz_rpy, gripper=1.0):
    v = np.zeros(7)
    v[:len(xyz_rpy)] = xyz_rpy
    v[6] = gripper
    return v


def test_a_small_action_passes_unchanged():
    f = SafetyFilter()
    a = act(0.01, -0.005, 0.002, 0.01, 0.0, -0.05)
    v = fresh(f, a)
    assert v.kind == OK and v.ok and v.reason == "ok" and v.clamped == ()
    np.testing.assert_allclose(v.action, a, atol=1e-12)


@pytest.mark.parametrize("bad", [
    act(np.nan), act(0, 0, 0, np.inf), act(0, 0, 0, 0, 0, 0, gripper=np.nan), act(0, -np.inf),
])
def test_non_finite_actions_latch_a_fault(bad):
    f = SafetyFilter()
    v = fresh(f, bad)
    assert v.kind == FAULT and v.action is None and "non-finite" in v.reason
    # latched: a good action afterwards still stops, until release()
    again = fresh(f, act(0.01))
    assert again.kind == FAULT and again.reason == v.reason
    f.release()
    assert fresh(f, act(0.01)).ok


@pytest.mark.parametrize("bad", [np.zeros(6), np.zeros((2, 7)), "forward", None])
def test_misshapen_actions_latch_a_fault(bad):
    f = SafetyFilter()
    v = fresh(f, bad)
    assert v.kind == FAULT and "invalid action" in v.reason


def test_non_finite_state_is_a_fault():
    f = SafetyFilter()
    state = RobotState(np.array([np.nan, 0, 0.2]), np.zeros(3), 0.08)
    assert fresh(f, act(0.01), state=state).kind == FAULT


def test_translation_is_scaled_to_the_step_limit_keeping_its_direction():
    f = SafetyFilter(SafetyLimits(max_step_translation_m=0.02))
    v = fresh(f, act(0.3, 0.4, 0.0))
    assert v.ok and "translation" in v.clamped
    assert np.linalg.norm(v.action[:3]) == pytest.approx(0.02)
    np.testing.assert_allclose(v.action[:3] / 0.02, [0.6, 0.8, 0.0], atol=1e-9)


def test_rotation_is_scaled_to_the_step_limit_about_the_same_axis():
    f = SafetyFilter(SafetyLimits(max_step_rotation_rad=0.1))
    v = fresh(f, act(0, 0, 0, 0.3, -0.2, 0.5))
    assert v.ok and "rotation" in v.clamped
    w_in = rotation_error(rpy_to_matrix([0.3, -0.2, 0.5]), np.eye(3))
    w_out = rotation_error(rpy_to_matrix(v.action[3:6]), np.eye(3))
    assert np.linalg.norm(w_out) == pytest.approx(0.1, abs=1e-9)
    np.testing.assert_allclose(w_out / 0.1, w_in / np.linalg.norm(w_in), atol=1e-9)


def test_the_workspace_box_stops_the_target_at_its_face():
    lim = SafetyLimits(workspace_min_m=(0.3, -0.2, 0.01), workspace_max_m=(0.7, 0.2, 0.4))
    f = SafetyFilter(lim)
    near_floor = RobotState(np.array([0.5, 0.19, 0.015]), np.zeros(3), 0.08)
    v = fresh(f, act(0.01, 0.02, -0.02), state=near_floor)
    assert v.ok and "workspace" in v.clamped
    target = near_floor.ee_pos_m + v.action[:3]
    np.testing.assert_allclose(target, [0.51, 0.2, 0.01], atol=1e-12)


def test_outside_the_box_the_arm_may_only_move_back_and_never_by_itself():
    lim = SafetyLimits(workspace_min_m=(0.3, -0.2, 0.01), workspace_max_m=(0.7, 0.2, 0.4))
    f = SafetyFilter(lim)
    outside = RobotState(np.array([0.75, 0.0, 0.2]), np.zeros(3), 0.08)  # 5 cm beyond x max
    assert fresh(f, act(0.01), state=outside).action[0] == 0.0  # further out: refused
    assert fresh(f, act(-0.01), state=outside).action[0] == pytest.approx(-0.01)  # back in: allowed
    np.testing.assert_allclose(fresh(f, act(0.0), state=outside).action[:3], 0.0)  # no motion of its own


def test_no_step_ever_exceeds_the_limits_on_random_inputs():
    lim = SafetyLimits(max_step_translation_m=0.02, max_step_rotation_rad=0.15)
    f = SafetyFilter(lim)
    rng = np.random.default_rng(0)
    lo, hi = np.array(lim.workspace_min_m), np.array(lim.workspace_max_m)
    for _ in range(500):
        pos = rng.uniform(lo - 0.05, hi + 0.05)
        state = RobotState(pos, rng.uniform(-np.pi, np.pi, 3), 0.04)
        a = np.concatenate([rng.normal(0, 0.1, 6), [rng.random()]])
        v = fresh(f, a, state=state)
        assert v.ok
        assert np.linalg.norm(v.action[:3]) <= 0.02 + 1e-12
        assert np.linalg.norm(rotation_error(rpy_to_matrix(v.action[3:6]), np.eye(3))) <= 0.15 + 1e-9
        target = pos + v.action[:3]
        inside_before = (pos >= lo) & (pos <= hi)
        assert np.all((target >= lo - 1e-12)[inside_before]) and np.all((target <= hi + 1e-12)[inside_before])
        assert np.all(np.abs(target - np.clip(target, lo, hi)) <= np.abs(pos - np.clip(pos, lo, hi)) + 1e-12)
        assert v.action[6] in (0.0, 1.0)


def test_gripper_hysteresis():
    f = SafetyFilter(SafetyLimits(gripper_close_below=0.3, gripper_open_above=0.7))
    out = [fresh(f, act(gripper=g)).action[6] for g in (0.9, 0.5, 0.35, 0.29, 0.5, 0.69, 0.71, 0.4, 0.1)]
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_gripper_hysteresis_restarts_from_the_measured_state_on_release():
    f = SafetyFilter()
    assert fresh(f, act(gripper=0.0)).action[6] == 0.0
    f.release(gripper_open=True)
    assert fresh(f, act(gripper=0.5)).action[6] == 1.0
    f.release()  # unknown: the first command decides
    assert fresh(f, act(gripper=0.45)).action[6] == 0.0


@pytest.mark.parametrize("which, expected", [("image", "stale image"), ("action", "stale action"),
                                             ("server", "stale server")])
def test_each_stale_input_holds(which, expected):
    lim = SafetyLimits(max_image_age_s=0.2, max_action_age_s=0.3, max_server_age_s=0.5)
    f = SafetyFilter(lim)
    times = {"image": NOW - 0.1, "action": NOW - 0.1, "server": NOW - 0.1}
    times[which] = NOW - 0.6
    v = f.filter(act(0.01), HOME, NOW, times["image"], times["action"], times["server"])
    assert v.kind == HOLD and v.action is None and v.reason.startswith(expected)
    # holds are not latched: fresh inputs move again
    assert fresh(f, act(0.01)).ok


def test_inputs_just_within_their_limits_pass_and_missing_inputs_hold():
    lim = SafetyLimits(max_image_age_s=0.2, max_action_age_s=0.3, max_server_age_s=0.5)
    f = SafetyFilter(lim)
    assert f.filter(act(0.01), HOME, NOW, NOW - 0.199, NOW - 0.299, NOW - 0.499).ok
    assert f.filter(act(0.01), HOME, NOW, None, NOW, NOW).reason == "no image yet"
    assert f.filter(act(0.01), HOME, NOW, NOW, None, NOW).reason == "no action yet"
    assert f.filter(act(0.01), HOME, NOW, NOW, NOW, float("-inf")).reason == "no server yet"


def test_a_stale_input_wins_over_an_invalid_action_and_does_not_latch():
    f = SafetyFilter()
    v = f.filter(act(np.nan), HOME, NOW, NOW - 5.0, NOW, NOW)
    assert v.kind == HOLD and f.fault is None


def test_latch_keeps_the_first_reason():
    f = SafetyFilter()
    f.latch("emergency stop")
    f.latch("robot error")
    v = fresh(f, act(0.01))
    assert v.kind == FAULT and v.reason == "emergency stop"


@pytest.mark.parametrize("kwargs", [
    dict(max_step_translation_m=0.0), dict(max_step_rotation_rad=-1.0), dict(max_image_age_s=float("nan")),
    dict(workspace_min_m=(0.5, 0, 0), workspace_max_m=(0.4, 1, 1)), dict(workspace_min_m=(0, 0)),
    dict(gripper_close_below=0.8, gripper_open_above=0.7),
])
def test_bad_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        SafetyLimits(**kwargs)
