"""Rotation helpers against scipy's Rotation, including the 180-degree cases."""

import numpy as np
import pytest

from lapa.geometry import axis_angle_to_matrix, rotation_error

Rotation = pytest.importorskip("scipy.spatial.transform").Rotation


def _same_rotation(w_a: np.ndarray, w_b: np.ndarray) -> bool:
    return np.allclose(axis_angle_to_matrix(w_a), axis_angle_to_matrix(w_b), atol=1e-6)


@pytest.mark.parametrize("axis", [(1, -1, 0), (1, 1, 0), (0, 0, 1), (1, -2, 3), (-1, 0.5, -0.2), (0, 1, -1)])
def test_rotation_error_keeps_the_axis_at_180_degrees(axis):
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    R_target = Rotation.from_rotvec(np.pi * k).as_matrix()
    w = rotation_error(R_target, np.eye(3))
    assert np.linalg.norm(w) == pytest.approx(np.pi)
    assert abs(abs(w @ k) - np.pi) < 1e-6, f"axis {w / np.pi} is not +-{k}"
    assert _same_rotation(w, np.pi * k)


def test_rotation_error_matches_scipy_on_random_rotations():
    rng = np.random.default_rng(0)
    for _ in range(200):
        R_now, R_target = Rotation.random(2, random_state=rng).as_matrix()
        w = rotation_error(R_target, R_now)
        expected = Rotation.from_matrix(R_target @ R_now.T).as_rotvec()
        assert np.allclose(w, expected, atol=1e-6) or _same_rotation(w, expected)
        assert np.allclose(axis_angle_to_matrix(w) @ R_now, R_target, atol=1e-6)


@pytest.mark.parametrize("angle", [0.0, 1e-10, 1e-4, np.pi - 1e-5, np.pi - 1e-7])
def test_rotation_error_small_and_near_half_turn_angles(angle):
    k = np.array([0.6, -0.8, 0.0])
    R_target = axis_angle_to_matrix(angle * k)
    w = rotation_error(R_target, np.eye(3))
    assert np.allclose(axis_angle_to_matrix(w), R_target, atol=1e-6)
