"""Rigid transforms, projection into a camera, hand-eye calibration and the pose of a MuJoCo camera.

`T_a_b` is the (4, 4) pose of frame b in frame a: p_a = T_a_b @ p_b. Camera frames are OpenCV's
(+x right, +y down, +z along the optical axis). Quaternions are [x, y, z, w], the order of
geometry_msgs and tf2 (`static_transform_publisher`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from calibration.errors import CalibrationError, read_yaml
from calibration.hand_eye import NUMPY_METHODS, solve_hand_eye
from calibration.intrinsics import CameraIntrinsics
from lapa.geometry import matrix_to_quat_xyzw, quat_wxyz_to_matrix

MIN_HAND_EYE_POSES = 3
MIN_ROTATION_RAD = np.radians(2.0)  # a gripper rotation smaller than this carries no hand-eye information
HAND_EYE_METHODS = ("tsai", "park", "horaud", "andreff", "daniilidis")


# ---------------------------------------------------------------------------------------- transforms
def make_transform(translation: Sequence[float] = (0.0, 0.0, 0.0), rotation: np.ndarray | None = None,
                   quat_xyzw: Sequence[float] | None = None) -> np.ndarray:
    """(4, 4) from a translation (3,) and either a rotation matrix (3, 3) or a quaternion [x, y, z, w]."""
    if rotation is not None and quat_xyzw is not None:
        raise CalibrationError("give either rotation or quat_xyzw, not both")
    T = np.eye(4)
    if quat_xyzw is not None:
        q = np.asarray(quat_xyzw, dtype=float)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-9:
            raise CalibrationError(f"quat_xyzw must be 4 finite numbers, not all zero, got {list(quat_xyzw)}")
        T[:3, :3] = quat_wxyz_to_matrix(q[[3, 0, 1, 2]])
    elif rotation is not None:
        T[:3, :3] = rotation
    T[:3, 3] = translation
    return check_transform(T)


def check_transform(T: np.ndarray, name: str = "transform") -> np.ndarray:
    """T as a float (4, 4) array if it is a finite rigid transform, else CalibrationError."""
    T = np.asarray(T, dtype=float)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise CalibrationError(f"{name} must be a finite 4x4 matrix, got shape {T.shape}")
    R = T[:3, :3]
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0]):
        raise CalibrationError(f"{name}: last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
        raise CalibrationError(f"{name}: the upper-left 3x3 block is not a rotation matrix")
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """T_b_a from T_a_b, using R^T rather than a general inverse."""
    T = check_transform(T)
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


def compose(*transforms: np.ndarray) -> np.ndarray:
    """compose(T_a_b, T_b_c, ...) = T_a_b @ T_b_c @ ..."""
    out = np.eye(4)
    for T in transforms:
        out = out @ check_transform(T)
    return out


def transform_points(T_a_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """(N, 3) points in frame b -> (N, 3) in frame a."""
    T = check_transform(T_a_b, "T_a_b")
    p = np.asarray(points_b, dtype=float).reshape(-1, 3)
    return p @ T[:3, :3].T + T[:3, 3]


def transform_to_yaml_dict(T: np.ndarray, parent_frame: str, child_frame: str) -> dict:
    """T_parent_child in the order of `ros2 run tf2_ros static_transform_publisher`."""
    T = check_transform(T)
    return {
        "parent_frame": parent_frame,
        "child_frame": child_frame,
        "translation_m": [float(v) for v in T[:3, 3]],
        "rotation_xyzw": [float(v) for v in matrix_to_quat_xyzw(T[:3, :3])],
    }


def transform_from_yaml_dict(doc: object, source: str = "<dict>") -> np.ndarray:
    """(4, 4) from `{translation_m: [x, y, z], rotation_xyzw: [x, y, z, w]}` (frame names optional)."""
    if not isinstance(doc, dict):
        raise CalibrationError(f"{source}: expected a mapping with translation_m and rotation_xyzw")
    for key, n in (("translation_m", 3), ("rotation_xyzw", 4)):
        value = doc.get(key)
        if not (isinstance(value, list) and len(value) == n
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            raise CalibrationError(f"{source}: {key} must be a list of {n} numbers, got {value!r}")
        if not np.all(np.isfinite(value)):
            raise CalibrationError(f"{source}: {key} must be finite, got {value}")
    try:
        return make_transform(doc["translation_m"], quat_xyzw=doc["rotation_xyzw"])
    except CalibrationError as err:
        raise CalibrationError(f"{source}: {err}") from None


def save_transform(T: np.ndarray, path: str | Path, parent_frame: str, child_frame: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(transform_to_yaml_dict(T, parent_frame, child_frame), sort_keys=False,
                                   default_flow_style=None))
    return path


def load_transform(path: str | Path) -> tuple[np.ndarray, str, str]:
    """(T_parent_child (4, 4), parent_frame, child_frame) from a file written by `save_transform`."""
    doc = read_yaml(path, "transform")
    T = transform_from_yaml_dict(doc, str(path))
    return T, str(doc.get("parent_frame", "")), str(doc.get("child_frame", ""))


# ---------------------------------------------------------------------------------------- projection
def project_points(intrinsics: CameraIntrinsics, T_camera_base: np.ndarray, points_base: np.ndarray) -> np.ndarray:
    """(N, 3) points in the base frame -> (N, 2) pixel coordinates (u right, v down), with distortion.

    Points at or behind the camera plane (z <= 0 in the camera frame) come back as NaN.
    """
    import cv2

    T = check_transform(T_camera_base, "T_camera_base")
    points = np.asarray(points_base, dtype=float).reshape(-1, 3)  # (N, 3)
    if len(points) == 0:
        return np.zeros((0, 2))
    rvec, _ = cv2.Rodrigues(T[:3, :3])
    pixels, _ = cv2.projectPoints(points, rvec, T[:3, 3], intrinsics.K, intrinsics.dist)  # (N, 1, 2)
    pixels = pixels.reshape(-1, 2)
    pixels[transform_points(T, points)[:, 2] <= 0] = np.nan
    return pixels


# ---------------------------------------------------------------------------------------- hand-eye
def hand_eye_calibrate(T_base_gripper: Sequence[np.ndarray], T_camera_target: Sequence[np.ndarray],
                       eye_in_hand: bool = True, method: str = "tsai") -> np.ndarray:
    """The camera's mounting from paired robot and target poses (cv2.calibrateHandEye or `hand_eye`).

    T_base_gripper[i]: gripper pose from the robot at sample i; T_camera_target[i]: the calibration
    target seen by the camera at the same instant (e.g. cv2.solvePnP on a checkerboard).
    eye_in_hand=True (camera on the gripper, target fixed): returns T_gripper_camera.
    eye_in_hand=False (camera fixed, target on the gripper): returns T_base_camera.
    """
    import cv2

    if method not in HAND_EYE_METHODS:
        raise CalibrationError(f"method must be one of {HAND_EYE_METHODS}, got {method!r}")
    if len(T_base_gripper) != len(T_camera_target):
        raise CalibrationError(f"got {len(T_base_gripper)} gripper poses but {len(T_camera_target)} target poses; "
                               "they must be paired")
    if len(T_base_gripper) < MIN_HAND_EYE_POSES:
        raise CalibrationError(f"hand-eye calibration needs at least {MIN_HAND_EYE_POSES} pose pairs, got "
                               f"{len(T_base_gripper)} (10-20 with varied rotations give a good result)")
    grippers = [check_transform(T, f"T_base_gripper[{i}]") for i, T in enumerate(T_base_gripper)]
    targets = [check_transform(T, f"T_camera_target[{i}]") for i, T in enumerate(T_camera_target)]
    _check_rotation_diversity([T[:3, :3] for T in grippers])
    # Eye-to-hand is the same problem with the base in the gripper's role: feed T_gripper_base.
    moving = grippers if eye_in_hand else [invert_transform(T) for T in grippers]
    opencv_solver = getattr(cv2, "calibrateHandEye", None)  # unbound in opencv-python 5.0.0 (see hand_eye.py)
    if opencv_solver is not None:
        R, t = opencv_solver([T[:3, :3] for T in moving], [T[:3, 3] for T in moving],
                             [T[:3, :3] for T in targets], [T[:3, 3] for T in targets],
                             method=getattr(cv2, f"CALIB_HAND_EYE_{method.upper()}"))
        X = np.eye(4)
        X[:3, :3], X[:3, 3] = R, np.ravel(t)
    elif method in NUMPY_METHODS:
        X = solve_hand_eye(moving, targets, method)
    else:
        raise CalibrationError(f"method {method!r} needs cv2.calibrateHandEye, which this OpenCV build lacks; "
                               f"use one of {NUMPY_METHODS}")
    if not np.all(np.isfinite(X)):
        raise CalibrationError("hand-eye calibration did not converge (check that the pose pairs are consistent)")
    return X


def _check_rotation_diversity(rotations: list[np.ndarray]) -> None:
    """Hand-eye is unobservable unless the gripper rotates about at least two different axes."""
    import cv2

    axes = []
    for R in rotations[1:]:
        rvec, _ = cv2.Rodrigues(rotations[0].T @ R)
        angle = float(np.linalg.norm(rvec))
        if angle > MIN_ROTATION_RAD:
            axes.append(np.ravel(rvec) / angle)
    for i in range(len(axes)):
        for j in range(i + 1, len(axes)):
            if np.linalg.norm(np.cross(axes[i], axes[j])) > np.sin(MIN_ROTATION_RAD):
                return
    raise CalibrationError("the gripper poses do not rotate about two different axes (by more than "
                           f"{np.degrees(MIN_ROTATION_RAD):.0f} degrees); tilt the gripper in varied directions")
