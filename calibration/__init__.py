"""Camera intrinsics, hand-eye extrinsics, and the workspace box and action frame, as YAML files.

- `intrinsics`: pinhole + plumb_bob intrinsics in ROS `camera_info_manager` YAML; checkerboard
  calibration with OpenCV.
- `extrinsics`: 4x4 homogeneous transforms, point projection, hand-eye calibration
  (`hand_eye`: the numpy AX = XB solvers).
- `mujoco_camera`: the intrinsics and the pose (OpenCV convention) of a MuJoCo camera.
- `workspace`: the workspace box and the action / end-effector frames (`sim_workspace.yaml`).
- `sim_camera`: intrinsics and pose of the simulator's scene camera.
- `cli`: `lapa calibration checkerboard | hand-eye | sim-camera`.

Naming: `T_a_b` is the (4, 4) pose of frame b in frame a; it maps points from b to a
(`p_a = T_a_b @ p_b`). Camera frames follow OpenCV: +x right, +y down, +z along the view.
"""
