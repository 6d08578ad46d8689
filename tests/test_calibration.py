"""Calibration: intrinsics YAML, checkerboard and hand-eye on synthetic data, the sim camera against its renders."""

import argparse
import itertools
import json

import cv2
import mujoco
import numpy as np
import pytest
import yaml

from calibration import cli
from calibration.errors import CalibrationError
from calibration.extrinsics import (
    check_transform,
    compose,
    hand_eye_calibrate,
    invert_transform,
    load_transform,
    make_transform,
    project_points,
    save_transform,
    transform_to_yaml_dict,
)
from calibration.hand_eye import solve_hand_eye
from calibration.intrinsics import (
    CameraIntrinsics,
    calibrate_checkerboard,
    load_intrinsics,
    save_intrinsics,
)
from calibration.mujoco_camera import from_mujoco_camera, mujoco_camera_pose
from calibration.sim_camera import sim_scene_calibration
from calibration.workspace import Workspace, load_workspace, save_workspace, sim_workspace
from lapa.sim.fast_driver import FastDriver
from lapa.sim.scene import BLOCK_HALF_SIZE_M, SceneConfig
from lapa_ros.safety import SafetyLimits

CAMERA = CameraIntrinsics(640, 480, fx=600.0, fy=605.0, cx=318.0, cy=243.0,
                          distortion=(-0.1, 0.02, 0.001, -0.0005, 0.0), camera_name="wrist")

ROS_YAML = """\
image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [600.0, 0.0, 318.0, 0.0, 605.0, 243.0, 0.0, 0.0, 1.0]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [-0.1, 0.02, 0.001, -0.0005, 0.0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
projection_matrix:
  rows: 3
  cols: 4
  data: [590.0, 0.0, 317.0, 0.0, 0.0, 598.0, 242.0, 0.0, 0.0, 0.0, 1.0, 0.0]
"""


def rotation(rvec) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(rvec, dtype=float))[0]


def random_transform(rng: np.random.Generator, max_angle_rad: float = 0.8, max_shift_m: float = 0.3) -> np.ndarray:
    axis = rng.normal(size=3)
    angle = rng.uniform(0.2, max_angle_rad)
    return make_transform(rng.uniform(-max_shift_m, max_shift_m, size=3), rotation(axis / np.linalg.norm(axis) * angle))


# ---------------------------------------------------------------------------------------- intrinsics files
def test_intrinsics_yaml_round_trip(tmp_path):
    path = save_intrinsics(CAMERA, tmp_path / "camera.yaml")
    doc = yaml.safe_load(path.read_text())
    assert list(doc) == ["image_width", "image_height", "camera_name", "camera_matrix", "distortion_model",
                         "distortion_coefficients", "rectification_matrix", "projection_matrix"]
    assert doc["projection_matrix"] == {"rows": 3, "cols": 4, "data": [600.0, 0.0, 318.0, 0.0, 0.0, 605.0, 243.0,
                                                                       0.0, 0.0, 0.0, 1.0, 0.0]}
    assert load_intrinsics(path) == CAMERA


def test_ros_calibrator_file_loads_and_keeps_its_projection(tmp_path):
    (tmp_path / "ost.yaml").write_text(ROS_YAML)
    cam = load_intrinsics(tmp_path / "ost.yaml")
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (640, 480, 600.0, 605.0, 318.0, 243.0)
    assert cam.camera_name == "narrow_stereo" and cam.distortion == CAMERA.distortion
    info = cam.to_camera_info_dict()
    assert info["k"] == [600.0, 0.0, 318.0, 0.0, 605.0, 243.0, 0.0, 0.0, 1.0]
    assert info["p"][:3] == [590.0, 0.0, 317.0] and info["r"] == np.eye(3).ravel().tolist()
    assert info["d"] == list(CAMERA.distortion) and info["distortion_model"] == "plumb_bob"
    assert (info["width"], info["height"]) == (640, 480)
    save_intrinsics(cam, tmp_path / "again.yaml")
    assert load_intrinsics(tmp_path / "again.yaml") == cam


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("camera_matrix"), "missing key 'camera_matrix'"),
    (lambda d: d.pop("image_width"), "missing key 'image_width'"),
    (lambda d: d["camera_matrix"].update(rows=2), r"camera_matrix must be 3x3, got 2x3"),
    (lambda d: d["camera_matrix"]["data"].pop(), r"camera_matrix.data must be a list of 9 numbers, got 8"),
    (lambda d: d["projection_matrix"].update(cols=3), r"projection_matrix must be 3x4"),
    (lambda d: d["distortion_coefficients"].update(cols=4, data=[0.0] * 4), r"distortion_coefficients must be 1x5"),
    (lambda d: d["camera_matrix"]["data"].__setitem__(0, float("nan")), r"camera_matrix.data\[0\] must be finite"),
    (lambda d: d["distortion_coefficients"]["data"].__setitem__(1, float("inf")), "must be finite"),
    (lambda d: d["camera_matrix"]["data"].__setitem__(1, 0.5), r"\[\[fx, 0, cx\]"),
    (lambda d: d["camera_matrix"]["data"].__setitem__(0, "600"), "must be a number"),
    (lambda d: d["camera_matrix"]["data"].__setitem__(0, -1.0), "focal lengths must be positive"),
    (lambda d: d.update(image_width=0), "width must be a positive integer"),
    (lambda d: d.update(distortion_model="fisheye"), "distortion_model must be one of"),
])
def test_malformed_intrinsics_files_fail_clearly(tmp_path, edit, message):
    doc = yaml.safe_load(ROS_YAML)
    edit(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CalibrationError, match=message) as err:
        load_intrinsics(path)
    assert str(path) in str(err.value)


def test_unsafe_or_broken_yaml_is_refused(tmp_path):
    (tmp_path / "tagged.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(CalibrationError, match="not valid YAML"):
        load_intrinsics(tmp_path / "tagged.yaml")
    (tmp_path / "list.yaml").write_text("[1, 2]\n")
    with pytest.raises(CalibrationError, match="expected a YAML mapping"):
        load_intrinsics(tmp_path / "list.yaml")
    with pytest.raises(CalibrationError, match="cannot read camera intrinsics"):
        load_intrinsics(tmp_path / "missing.yaml")


def test_resized_intrinsics_scale_pixel_edges():
    half = CAMERA.resized(320, 240)
    assert (half.fx, half.fy) == (300.0, 302.5)
    assert (half.cx, half.cy) == ((318.0 + 0.5) / 2 - 0.5, (243.0 + 0.5) / 2 - 0.5)
    assert half.distortion == CAMERA.distortion


# ---------------------------------------------------------------------------------------- checkerboard
def render_checkerboard(K: np.ndarray, T_camera_board: np.ndarray, pattern: tuple[int, int], square_m: float,
                        size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """uint8 (H, W) image of a board with cols x rows inner corners, drawn as anti-aliased filled squares."""
    cols, rows = pattern
    image = np.full((size[1], size[0]), 255, np.uint8)
    rvec, _ = cv2.Rodrigues(T_camera_board[:3, :3])
    for i, j in itertools.product(range(-1, cols), range(-1, rows)):
        if (i + j) % 2:
            continue
        quad = np.array([[i, j, 0], [i + 1, j, 0], [i + 1, j + 1, 0], [i, j + 1, 0]], float) * square_m
        uv, _ = cv2.projectPoints(quad, rvec, T_camera_board[:3, 3], K, None)  # (4, 1, 2)
        cv2.fillConvexPoly(image, np.round(uv.reshape(4, 2) * 16).astype(np.int32), 0, cv2.LINE_AA, shift=4)
    return image


def board_views(pattern: tuple[int, int], square_m: float) -> list[np.ndarray]:
    """Eight T_camera_board: the board 0.45-0.6 m away, tilted up to 30 degrees, spread over the image."""
    centre = np.array([(pattern[0] - 1) * square_m / 2, (pattern[1] - 1) * square_m / 2, 0.0])
    views = []
    for k in range(8):
        tilt = np.radians([25 * np.cos(k * 0.8), 25 * np.sin(k * 0.8), 10 * (k % 3 - 1)])
        R = rotation(tilt)
        offset = np.array([0.06 * np.cos(k * 2.1), 0.04 * np.sin(k * 2.1), 0.45 + 0.02 * k])
        views.append(make_transform(offset - R @ centre, R))
    return views


def test_checkerboard_recovers_known_intrinsics():
    pattern, square_m = (9, 6), 0.03
    truth = CameraIntrinsics(640, 480, fx=610.0, fy=600.0, cx=325.0, cy=236.0)
    images = [render_checkerboard(truth.K, T, pattern, square_m) for T in board_views(pattern, square_m)]
    cam, rms = calibrate_checkerboard(images, pattern, square_m)
    assert rms < 0.5
    assert (cam.width, cam.height) == (640, 480)
    for name in ("fx", "fy", "cx", "cy"):
        assert getattr(cam, name) == pytest.approx(getattr(truth, name), rel=0.02), name


def test_checkerboard_needs_enough_boards():
    pattern, square_m = (9, 6), 0.03
    K = CameraIntrinsics(640, 480, 600.0, 600.0, 319.5, 239.5).K
    boards = [render_checkerboard(K, T, pattern, square_m) for T in board_views(pattern, square_m)[:2]]
    blank = np.full((480, 640), 255, np.uint8)
    with pytest.raises(CalibrationError, match="found the 9x6 checkerboard in 2 of 5 images; need at least 4"):
        calibrate_checkerboard(boards + [blank] * 3, pattern, square_m)
    with pytest.raises(CalibrationError, match="found the 7x5 checkerboard in 0 of 2"):
        calibrate_checkerboard(boards, (7, 5), square_m)
    with pytest.raises(CalibrationError, match="is 320x240, the first was 640x480"):
        calibrate_checkerboard([blank, blank[:240, :320]], pattern, square_m)


# ---------------------------------------------------------------------------------------- transforms
def test_transform_helpers():
    rng = np.random.default_rng(0)
    A, B = random_transform(rng), random_transform(rng)
    assert np.allclose(compose(A, invert_transform(A)), np.eye(4), atol=1e-12)
    assert np.allclose(compose(A, B), A @ B)
    # A quarter turn about z, [x, y, z, w] order.
    T = make_transform([1.0, 2.0, 3.0], quat_xyzw=[0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    assert np.allclose(T[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    assert np.allclose(T[:3, 3], [1, 2, 3])
    assert transform_to_yaml_dict(T, "base", "camera")["rotation_xyzw"] == pytest.approx([0, 0, 0.70710678, 0.70710678])
    with pytest.raises(CalibrationError, match="not a rotation matrix"):
        check_transform(np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(CalibrationError, match="not a rotation matrix"):
        check_transform(np.diag([-1.0, 1.0, 1.0, 1.0]))  # a reflection
    with pytest.raises(CalibrationError, match="finite 4x4"):
        check_transform(np.eye(3))


def test_transform_yaml_round_trip(tmp_path):
    T = random_transform(np.random.default_rng(1))
    save_transform(T, tmp_path / "t.yaml", "base", "camera")
    T2, parent, child = load_transform(tmp_path / "t.yaml")
    assert np.allclose(T, T2, atol=1e-12) and (parent, child) == ("base", "camera")
    (tmp_path / "bad.yaml").write_text("translation_m: [0, 0]\nrotation_xyzw: [0, 0, 0, 1]\n")
    with pytest.raises(CalibrationError, match="translation_m must be a list of 3 numbers"):
        load_transform(tmp_path / "bad.yaml")


def test_project_points_is_the_pinhole_model():
    cam = CameraIntrinsics(640, 480, 600.0, 605.0, 318.0, 243.0)
    T_camera_base = make_transform([0.1, -0.2, 1.0], rotation([0.1, -0.2, 0.3]))
    points = np.array([[0.0, 0.0, 0.0], [0.1, 0.05, -0.02], [-0.2, 0.1, 0.3]])  # (3, 3) base frame
    p = points @ T_camera_base[:3, :3].T + T_camera_base[:3, 3]  # (3, 3) camera frame
    expected = np.column_stack([600.0 * p[:, 0] / p[:, 2] + 318.0, 605.0 * p[:, 1] / p[:, 2] + 243.0])
    assert np.allclose(project_points(cam, T_camera_base, points), expected, atol=1e-9)
    behind = project_points(cam, np.eye(4), np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]))
    assert np.all(np.isnan(behind[0])) and np.allclose(behind[1], [318.0, 243.0])
    # Distortion moves off-axis points and leaves the principal point alone.
    distorted = project_points(CAMERA, np.eye(4), np.array([[0.0, 0.0, 1.0], [0.3, 0.2, 1.0]]))
    assert np.allclose(distorted[0], [318.0, 243.0]) and not np.allclose(distorted[1], [498.0, 364.0], atol=1.0)


# ---------------------------------------------------------------------------------------- hand-eye
def hand_eye_samples(eye_in_hand: bool, X: np.ndarray, n: int = 10, noise: float = 0.0, seed: int = 7):
    """Paired (T_base_gripper, T_camera_target) lists consistent with the mounting X, optionally noisy."""
    rng = np.random.default_rng(seed)
    fixed = random_transform(rng)  # T_base_target (eye in hand) or T_gripper_target (eye to hand)
    grippers, targets = [], []
    for _ in range(n):
        T_base_gripper = make_transform([0.5, 0.0, 0.3], np.eye(3)) @ random_transform(rng, 0.6, 0.1)
        if eye_in_hand:
            T_camera_target = invert_transform(X) @ invert_transform(T_base_gripper) @ fixed
        else:
            T_camera_target = invert_transform(X) @ T_base_gripper @ fixed
        if noise:
            jitter = make_transform(rng.normal(0, noise, 3), rotation(rng.normal(0, noise, 3)))
            T_camera_target = T_camera_target @ jitter
        grippers.append(T_base_gripper)
        targets.append(T_camera_target)
    return grippers, targets


def pose_error(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(rotation angle in radians, translation distance in metres) between two poses."""
    return float(np.linalg.norm(cv2.Rodrigues(A[:3, :3].T @ B[:3, :3])[0])), float(np.linalg.norm(A[:3, 3] - B[:3, 3]))


MOUNTING = make_transform([0.05, -0.03, 0.08], rotation([0.2, -0.1, 1.4]))  # T_gripper_camera or T_base_camera


@pytest.mark.parametrize("method", ["tsai", "park"])
@pytest.mark.parametrize("eye_in_hand", [True, False])
def test_hand_eye_recovers_the_mounting(eye_in_hand, method):
    grippers, targets = hand_eye_samples(eye_in_hand, MOUNTING)
    angle, distance = pose_error(hand_eye_calibrate(grippers, targets, eye_in_hand=eye_in_hand, method=method),
                                 MOUNTING)
    assert angle < 1e-3 and distance < 1e-3
    # 1 mm / 1 mrad of target-pose noise stays a small error in the mounting.
    grippers, targets = hand_eye_samples(eye_in_hand, MOUNTING, n=15, noise=1e-3)
    angle, distance = pose_error(hand_eye_calibrate(grippers, targets, eye_in_hand=eye_in_hand, method=method),
                                 MOUNTING)
    assert angle < 5e-3 and distance < 5e-3


@pytest.mark.skipif(not hasattr(cv2, "calibrateHandEye"), reason="this OpenCV build has no cv2.calibrateHandEye")
@pytest.mark.parametrize("method", ["tsai", "park"])
def test_numpy_hand_eye_agrees_with_opencv(method):
    grippers, targets = hand_eye_samples(True, MOUNTING, n=12, noise=1e-3)
    R, t = cv2.calibrateHandEye([T[:3, :3] for T in grippers], [T[:3, 3] for T in grippers],
                                [T[:3, :3] for T in targets], [T[:3, 3] for T in targets],
                                method=getattr(cv2, f"CALIB_HAND_EYE_{method.upper()}"))
    angle, distance = pose_error(solve_hand_eye(grippers, targets, method), make_transform(np.ravel(t), R))
    assert angle < 1e-6 and distance < 1e-6


def test_hand_eye_refuses_too_little_or_degenerate_data():
    rng = np.random.default_rng(3)
    poses = [random_transform(rng) for _ in range(4)]
    with pytest.raises(CalibrationError, match="at least 3 pose pairs, got 2"):
        hand_eye_calibrate(poses[:2], poses[:2])
    with pytest.raises(CalibrationError, match="4 gripper poses but 3 target poses"):
        hand_eye_calibrate(poses, poses[:3])
    about_z = [make_transform([0.1 * k, 0.0, 0.0], rotation([0.0, 0.0, 0.3 * k])) for k in range(5)]
    with pytest.raises(CalibrationError, match="two different axes"):
        hand_eye_calibrate(about_z, about_z)
    with pytest.raises(CalibrationError, match="method must be one of"):
        hand_eye_calibrate(poses, poses, method="magic")


# ---------------------------------------------------------------------------------------- MuJoCo cameras
GLOW_BALL_XML = """
<mujoco>
  <asset><material name="glow" rgba="1 0 0 1" emission="1"/></asset>
  <visual><global offwidth="160" offheight="160"/></visual>
  <worldbody>
    <camera name="fovy" pos="0 -1 0.5" xyaxes="1 0 0 0 0.45 1" fovy="50"/>
    <camera name="sensor" pos="0 -1 0.5" xyaxes="1 0 0 0 0.45 1" sensorsize="0.02 0.015"
            focal="0.012 0.013" principal="0.002 0.0015" resolution="160 120"/>
    <body name="ball" mocap="true"><geom type="sphere" size="0.03" material="glow" contype="0" conaffinity="0"/></body>
  </worldbody>
</mujoco>
"""


@pytest.mark.parametrize("camera, size", [("fovy", (160, 120)), ("sensor", (160, 120)), ("sensor", (120, 160))])
def test_mujoco_camera_calibration_matches_its_renders(camera, size):
    """A glowing ball lands where the calibration projects its centre, to a fraction of a pixel."""
    model = mujoco.MjModel.from_xml_string(GLOW_BALL_XML)
    data = mujoco.MjData(model)
    width, height = size
    cam = from_mujoco_camera(model, camera, width, height)
    if camera == "fovy":
        fy = (height / 2) / np.tan(np.radians(50) / 2)
        assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((fy, fy, (width - 1) / 2, (height - 1) / 2))
    rng = np.random.default_rng(0)
    with mujoco.Renderer(model, height, width) as renderer:
        for _ in range(5):
            data.mocap_pos[0] = rng.uniform([-0.25, -0.2, -0.05], [0.25, 0.3, 0.25])
            mujoco.mj_forward(model, data)
            uv = project_points(cam, invert_transform(mujoco_camera_pose(model, data, camera)), data.mocap_pos[0])[0]
            renderer.update_scene(data, camera=camera)
            image = renderer.render()
            vs, us = np.nonzero((image[..., 0] > 100) & (image[..., 1] < 60))
            assert len(us) > 10
            assert np.abs([us.mean() - uv[0], vs.mean() - uv[1]]).max() < 0.3  # W / 2 vs (W - 1) / 2 is 0.5
    with pytest.raises(CalibrationError, match="no camera 'nope'"):
        from_mujoco_camera(model, "nope", 64, 64)


# ---------------------------------------------------------------------------------------- the simulator
@pytest.fixture(scope="module")
def sim():
    with FastDriver(SceneConfig(image_size=128)) as driver:
        yield driver


def red_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: the red block, its lit top and its shaded sides alike."""
    rgb = image.astype(int)
    return (rgb[..., 0] > 50) & (rgb[..., 1] < 0.35 * rgb[..., 0]) & (rgb[..., 2] < 0.35 * rgb[..., 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sim_calibration_projects_the_red_block_onto_its_pixels(sim, seed):
    cal = sim_scene_calibration(sim.config, model=sim.model)
    T_camera_base = invert_transform(cal.T_base_camera)
    sim.reset(seed)
    mask = red_pixels(sim.render("scene"))
    centre, R = sim.block_pose("red")
    uv = project_points(cal.intrinsics, T_camera_base, centre)[0]
    vs, us = np.nonzero(mask)
    assert len(us) >= 20
    assert np.hypot(us.mean() - uv[0], vs.mean() - uv[1]) < 1.5
    # The cube's projected silhouette covers the same pixels.
    corners = centre + np.array(list(itertools.product([-1, 1], repeat=3))) * BLOCK_HALF_SIZE_M @ R.T  # (8, 3)
    hull = cv2.convexHull(project_points(cal.intrinsics, T_camera_base, corners).astype(np.float32))
    silhouette = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(silhouette, np.round(hull.reshape(-1, 2) * 16).astype(np.int32), 1, shift=4)
    silhouette = silhouette.astype(bool)
    assert (silhouette & mask).sum() / (silhouette | mask).sum() > 0.6


def test_sim_calibration_from_the_config_alone(sim):
    cal = sim_scene_calibration(SceneConfig(image_size=128))
    same = sim_scene_calibration(sim.config, model=sim.model)
    assert cal.intrinsics == same.intrinsics and np.allclose(cal.T_base_camera, same.T_base_camera)
    assert (cal.intrinsics.width, cal.intrinsics.cx) == (128, 63.5)
    # The camera sits at its MJCF position and looks at the workspace centre along its +z.
    assert np.allclose(cal.T_base_camera[:3, 3], [1.20, -0.30, 0.70])
    view = np.array([0.48, 0.0, 0.12]) - cal.T_base_camera[:3, 3]
    assert np.allclose(cal.T_base_camera[:3, 2], view / np.linalg.norm(view), atol=1e-6)
    assert cal.T_base_camera[2, 1] < 0  # image down (+y) points down in the world
    with pytest.raises(CalibrationError, match="no camera 'wrist'"):
        sim_scene_calibration(sim.config, camera="wrist", model=sim.model)


def run_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibration", *argv])
    assert args.func(args) == 0
    return args


def test_cli_sim_camera_writes_ros_files(tmp_path, capsys):
    run_cli("sim-camera", "--out-dir", str(tmp_path), "--image-size", "64")
    out = json.loads(capsys.readouterr().out)
    cam = load_intrinsics(out["camera_info"])
    assert (cam.width, cam.height, cam.camera_name) == (64, 64, "scene")
    T, parent, child = load_transform(out["extrinsics"])
    assert (parent, child) == ("base", "scene") and np.allclose(T[:3, 3], [1.20, -0.30, 0.70])


def test_cli_checkerboard_and_hand_eye(tmp_path, capsys):
    pattern, square_m = (9, 6), 0.03
    K = CameraIntrinsics(640, 480, 600.0, 600.0, 319.5, 239.5).K
    for k, T in enumerate(board_views(pattern, square_m)):
        cv2.imwrite(str(tmp_path / f"board_{k}.png"), render_checkerboard(K, T, pattern, square_m))
    run_cli("checkerboard", str(tmp_path), "--pattern", "9x6", "--square-m", "0.03", "--out",
            str(tmp_path / "cam.yaml"), "--fix-k3")
    assert json.loads(capsys.readouterr().out)["images"] == 8
    assert load_intrinsics(tmp_path / "cam.yaml").fx == pytest.approx(600.0, rel=0.02)

    grippers, targets = hand_eye_samples(False, MOUNTING)
    samples = [{"base_gripper": transform_to_yaml_dict(G, "base", "tcp"),
                "camera_target": transform_to_yaml_dict(C, "camera", "target")}
               for G, C in zip(grippers, targets, strict=True)]
    (tmp_path / "samples.yaml").write_text(yaml.safe_dump({"samples": samples}))
    run_cli("hand-eye", "--samples", str(tmp_path / "samples.yaml"), "--eye-to-hand", "--out", str(tmp_path / "x.yaml"))
    T, parent, child = load_transform(tmp_path / "x.yaml")
    assert (parent, child) == ("base", "camera") and max(pose_error(T, MOUNTING)) < 1e-3
    with pytest.raises(CalibrationError, match="--pattern must look like 9x6"):
        run_cli("checkerboard", str(tmp_path), "--pattern", "nine", "--square-m", "0.03", "--out", "x.yaml")


# ---------------------------------------------------------------------------------------- workspace
def test_shipped_sim_workspace_matches_the_safety_filter():
    ws = sim_workspace()
    limits = SafetyLimits()
    assert ws.workspace_min_m == limits.workspace_min_m
    assert ws.workspace_max_m == limits.workspace_max_m
    assert (ws.action_frame, ws.ee_frame) == ("base", "tcp")
    assert SafetyLimits(**ws.safety_kwargs()) == limits
    assert ws.contains([0.5, 0.0, 0.25]) and not ws.contains([0.5, 0.0, -0.01])


def test_workspace_round_trip_and_validation(tmp_path):
    ws = Workspace((0.3, -0.2, 0.0), (0.7, 0.2, 0.4), ee_frame="fr3_hand_tcp")
    assert load_workspace(save_workspace(ws, tmp_path / "ws.yaml")) == ws
    good = ws.to_yaml_dict()
    for edit, message in [
        ({"workspace_min_m": [0.3, 0.3, 0.0]}, "on y: 0.3 >= 0.2"),
        ({"workspace_max_m": [0.7, 0.2, float("inf")]}, "workspace_max_m must be finite"),
        ({"workspace_max_m": [0.7, 0.2]}, "three numbers"),
        ({"action_frame": "ee"}, "action_frame must be one of"),
        ({"ee_frame": ""}, "ee_frame must be a non-empty"),
        ({"extra": 1}, r"unknown keys \['extra'\]"),
    ]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**good, **edit}))
        with pytest.raises(CalibrationError, match=message):
            load_workspace(tmp_path / "bad.yaml")
    (tmp_path / "short.yaml").write_text("workspace_min_m: [0, 0, 0]\n")
    with pytest.raises(CalibrationError, match=r"missing keys \['workspace_max_m', 'action_frame', 'ee_frame'\]"):
        load_workspace(tmp_path / "short.yaml")
