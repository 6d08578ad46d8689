"""Ground-truth calibration of the simulator's cameras, straight from the MuJoCo scene (`lapa/sim/scene.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.errors import CalibrationError
from calibration.intrinsics import CameraIntrinsics
from calibration.mujoco_camera import from_mujoco_camera, mujoco_camera_pose


@dataclass(frozen=True)
class SimCameraCalibration:
    """Intrinsics at the scene's render size and T_base_camera (4, 4), OpenCV camera axes."""

    intrinsics: CameraIntrinsics
    T_base_camera: np.ndarray


def sim_scene_calibration(config=None, camera: str = "scene", model=None, data=None) -> SimCameraCalibration:
    """Calibration of a camera of the lapa tabletop scene, as `FastDriver.render(camera)` sees it.

    config: `lapa.sim.scene.SceneConfig` (default: SceneConfig()); it sets the image size.
    model: an already compiled scene (e.g. `FastDriver.model`) to skip compiling it again.
    data: the current MjData; needed only for a camera on a moving body (the wrist camera).
    The scene's world frame is the robot base frame, so the pose is T_base_camera.
    """
    import mujoco

    from lapa.sim.scene import SceneConfig, scene_xml

    config = config or SceneConfig()
    specs = {spec.name: spec for spec in config.cameras}
    if camera not in specs:
        raise CalibrationError(f"the scene has no camera {camera!r} with this config; it has {sorted(specs)}")
    spec = specs[camera]
    if model is None:
        model = mujoco.MjModel.from_xml_string(scene_xml(config))
    if data is None:
        if model.cam_bodyid[model.camera(camera).id] != 0:
            raise CalibrationError(f"camera {camera!r} moves with the robot; pass the current MjData as data")
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
    return SimCameraCalibration(
        intrinsics=from_mujoco_camera(model, camera, spec.width, spec.height),
        T_base_camera=mujoco_camera_pose(model, data, camera),
    )
