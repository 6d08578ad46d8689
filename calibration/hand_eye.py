"""Closed-form AX = XB hand-eye solvers in numpy: Tsai-Lenz (1989) and Park-Martin (1994).

`cv2.calibrateHandEye` implements these too, but the opencv-python 5.0.0 wheels ship without its
Python binding (opencv/opencv#29565, fixed by #29584); `extrinsics.hand_eye_calibrate` uses
OpenCV when it has the function and these otherwise. Same convention as OpenCV's eye-in-hand case:
T_base_gripper[i] and T_camera_target[i] in, T_gripper_camera out.
"""

from __future__ import annotations

import numpy as np

from lapa.geometry import rotation_error

NUMPY_METHODS = ("tsai", "park")


def motion_pairs(T_base_gripper: list[np.ndarray], T_camera_target: list[np.ndarray]) -> list[tuple]:
    """(A, B) (4, 4) relative motions with A @ X = X @ B, over all pose pairs i < j.

    With X = T_gripper_camera and the target fixed, T_base_gripper[k] @ X @ T_camera_target[k] is
    the same for every k, so A = inv(G_j) @ G_i (gripper motion) and B = C_j @ inv(C_i) (camera motion).
    """
    pairs = []
    n = len(T_base_gripper)
    for i in range(n):
        for j in range(i + 1, n):
            A = np.linalg.inv(T_base_gripper[j]) @ T_base_gripper[i]
            B = T_camera_target[j] @ np.linalg.inv(T_camera_target[i])
            pairs.append((A, B))
    return pairs


def solve_hand_eye(T_base_gripper: list[np.ndarray], T_camera_target: list[np.ndarray],
                   method: str = "tsai") -> np.ndarray:
    """T_gripper_camera (4, 4) by least squares over all motion pairs."""
    if method not in NUMPY_METHODS:
        raise ValueError(f"numpy hand-eye methods are {NUMPY_METHODS}, got {method!r}")
    pairs = motion_pairs(T_base_gripper, T_camera_target)
    R = _rotation_tsai(pairs) if method == "tsai" else _rotation_park(pairs)
    # Translation: R_A t + t_A = R t_B + t  =>  (R_A - I) t = R t_B - t_A, stacked over pairs.
    lhs = np.concatenate([A[:3, :3] - np.eye(3) for A, _ in pairs])  # (3P, 3)
    rhs = np.concatenate([R @ B[:3, 3] - A[:3, 3] for A, B in pairs])  # (3P,)
    X = np.eye(4)
    X[:3, :3] = R
    X[:3, 3] = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return X


def _rotation_tsai(pairs: list[tuple]) -> np.ndarray:
    """Tsai-Lenz: modified Rodrigues vectors p = 2 sin(theta / 2) n; skew(p_A + p_B) q = p_B - p_A."""
    lhs = np.concatenate([_skew(_modified_rodrigues(A) + _modified_rodrigues(B)) for A, B in pairs])  # (3P, 3)
    rhs = np.concatenate([_modified_rodrigues(B) - _modified_rodrigues(A) for A, B in pairs])  # (3P,)
    q = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    p = 2.0 * q / np.sqrt(1.0 + q @ q)  # (3,) modified Rodrigues vector of X's rotation
    pp = p @ p
    return (1.0 - pp / 2.0) * np.eye(3) + 0.5 * (np.outer(p, p) + np.sqrt(4.0 - pp) * _skew(p))


def _rotation_park(pairs: list[tuple]) -> np.ndarray:
    """Park-Martin: log(R_A) = R log(R_B); R is the rotation nearest M^T = sum a b^T (polar factor)."""
    M = sum(np.outer(_log(B[:3, :3]), _log(A[:3, :3])) for A, B in pairs)  # (3, 3)
    U, _, Vt = np.linalg.svd(M.T)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def _log(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> axis-angle vector (3,)."""
    return rotation_error(R, np.eye(3))


def _modified_rodrigues(T: np.ndarray) -> np.ndarray:
    w = _log(T[:3, :3])
    angle = np.linalg.norm(w)
    return np.zeros(3) if angle < 1e-12 else 2.0 * np.sin(angle / 2.0) * w / angle


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
