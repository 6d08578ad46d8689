"""Intrinsics and pose of a MuJoCo camera, in the conventions of the real cameras' calibration files
(`intrinsics`: ROS camera_info pinhole; `extrinsics`: T_a_b, OpenCV camera axes).
"""

from __future__ import annotations

import numpy as np

from calibration.errors import CalibrationError
from calibration.extrinsics import invert_transform, make_transform
from calibration.intrinsics import CameraIntrinsics

# MuJoCo cameras look along their -z with +y up; OpenCV cameras look along +z with +y down. The two
# frames share x and differ by a half turn about it: R_world_opencv = R_world_mujoco @ OPENCV_IN_MUJOCO.
OPENCV_IN_MUJOCO = np.diag([1.0, -1.0, -1.0])


def from_mujoco_camera(model, camera_name: str, width: int, height: int) -> CameraIntrinsics:
    """The pinhole intrinsics of a MuJoCo camera rendered at width x height.

    MuJoCo renders through the OpenGL frustum that `mjv_updateCamera` computes; its edges are the
    outer edges of the image, so in pixel-centre coordinates (half a pixel in from the edges):
    fy = H * near / (top - bottom), fx = W * near / (2 * half_width), cx = W * (half_width - centre)
    / (2 * half_width) - 0.5 and cy = H * top / (top - bottom) - 0.5.
    For a `fovy` camera this is fy = (H / 2) / tan(fovy / 2), fx = fy (square pixels: the frustum
    takes its width from the image aspect), cx = (W - 1) / 2, cy = (H - 1) / 2. A camera with
    `sensorsize` / `focal` / `principal` has its own frustum width and offset, which MuJoCo
    stretches over the image whatever its size.
    """
    import mujoco

    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
    if cam_id < 0:
        names = [model.camera(i).name for i in range(model.ncam)]
        raise CalibrationError(f"no camera {camera_name!r} in the MuJoCo model; it has {names}")
    if model.cam_projection[cam_id] != mujoco.mjtProjection.mjPROJ_PERSPECTIVE:
        raise CalibrationError(f"camera {camera_name!r} is orthographic; only perspective cameras have intrinsics")
    cam = mujoco.MjvCamera()
    cam.type, cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, cam_id
    scene = mujoco.MjvScene(model, maxgeom=0)
    mujoco.mjv_updateCamera(model, mujoco.MjData(model), cam, scene)  # the frustum depends on the model only
    gl = scene.camera[0]
    near, top, bottom, centre = gl.frustum_near, gl.frustum_top, gl.frustum_bottom, gl.frustum_center
    half_width = gl.frustum_width if gl.frustum_width > 0 else 0.5 * (top - bottom) * width / height
    return CameraIntrinsics(
        width, height,
        fx=float(width * near / (2 * half_width)), fy=float(height * near / (top - bottom)),
        cx=float(width * (half_width - centre) / (2 * half_width) - 0.5),
        cy=float(height * top / (top - bottom) - 0.5),
        camera_name=camera_name)


def mujoco_camera_pose(model, data, camera_name: str, base_body: str | None = None) -> np.ndarray:
    """T_base_camera (4, 4) of a MuJoCo camera, camera axes in the OpenCV convention.

    Reads `data.cam_xpos` / `data.cam_xmat`, so `data` must be current (after mj_forward or
    mj_step). base_body=None takes the MuJoCo world frame as the base (true of the lapa scene).
    """
    import mujoco

    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
    if cam_id < 0:
        names = [model.camera(i).name for i in range(model.ncam)]
        raise CalibrationError(f"no camera {camera_name!r} in the MuJoCo model; it has {names}")
    T_world_camera = np.eye(4)
    T_world_camera[:3, :3] = data.cam_xmat[cam_id].reshape(3, 3) @ OPENCV_IN_MUJOCO
    T_world_camera[:3, 3] = data.cam_xpos[cam_id]
    if base_body is None:
        return T_world_camera
    body_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, base_body)
    if body_id < 0:
        raise CalibrationError(f"no body {base_body!r} in the MuJoCo model")
    T_world_base = make_transform(data.xpos[body_id], rotation=data.xmat[body_id].reshape(3, 3))
    return invert_transform(T_world_base) @ T_world_camera
