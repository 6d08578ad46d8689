"""`lapa calibration ...`: checkerboard intrinsics, hand-eye extrinsics, the simulator's camera calibration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from calibration.errors import CalibrationError, read_yaml
from calibration.extrinsics import HAND_EYE_METHODS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def register(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser("calibration", help="camera intrinsics, hand-eye extrinsics, the sim camera's calibration")
    cal_sub = cal.add_subparsers(dest="calibration_command", metavar="CALIBRATION_COMMAND", required=True)

    board = cal_sub.add_parser("checkerboard", help="camera intrinsics from checkerboard images")
    board.add_argument("images", nargs="+", type=Path, help="image files, or directories of them")
    board.add_argument("--pattern", required=True, help="inner corners COLSxROWS, e.g. 9x6")
    board.add_argument("--square-m", type=float, required=True, help="side of one square in metres")
    board.add_argument("--out", type=Path, required=True, help="camera_info_manager YAML file to write")
    board.add_argument("--camera-name", default="camera")
    board.add_argument("--fix-k3", action="store_true", help="do not estimate the k3 radial term")
    board.set_defaults(func=_checkerboard)

    he = cal_sub.add_parser("hand-eye", help="camera mounting from paired gripper and target poses")
    he.add_argument("--samples", type=Path, required=True,
                    help="YAML: samples: [{base_gripper: {translation_m, rotation_xyzw}, camera_target: {...}}, ...]")
    he.add_argument("--eye-to-hand", action="store_true",
                    help="the camera is fixed and the target rides on the gripper (default: camera on the gripper)")
    he.add_argument("--method", default="tsai", choices=HAND_EYE_METHODS)
    he.add_argument("--gripper-frame", default="tcp", help="frame of the gripper poses (default: %(default)s)")
    he.add_argument("--camera-frame", default="camera", help="camera frame name (default: %(default)s)")
    he.add_argument("--out", type=Path, required=True, help="transform YAML file to write")
    he.set_defaults(func=_hand_eye)

    sim = cal_sub.add_parser("sim-camera", help="write the simulator scene camera's exact intrinsics and pose")
    sim.add_argument("--out-dir", type=Path, required=True,
                     help="writes scene_camera_info.yaml (camera_info_manager), scene_extrinsics.yaml (base -> scene)")
    sim.add_argument("--image-size", type=int, default=128, help="scene camera size in pixels")
    sim.set_defaults(func=_sim_camera)


def _checkerboard(args: argparse.Namespace) -> int:
    import cv2

    from calibration.intrinsics import calibrate_checkerboard, save_intrinsics

    try:
        cols, rows = (int(v) for v in args.pattern.lower().split("x"))
    except ValueError:
        raise CalibrationError(f"--pattern must look like 9x6 (inner corners), got {args.pattern!r}") from None
    paths = _image_paths(args.images)
    images = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CalibrationError(f"cannot read image {path}")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    intrinsics, rms = calibrate_checkerboard(images, (cols, rows), args.square_m, camera_name=args.camera_name,
                                             flags=cv2.CALIB_FIX_K3 if args.fix_k3 else 0)
    save_intrinsics(intrinsics, args.out)
    print(json.dumps({"out": str(args.out), "images": len(images), "rms_px": round(rms, 4),
                      "fx": intrinsics.fx, "fy": intrinsics.fy, "cx": intrinsics.cx, "cy": intrinsics.cy}, indent=2))
    return 0


def _hand_eye(args: argparse.Namespace) -> int:

    from calibration.extrinsics import hand_eye_calibrate, save_transform, transform_from_yaml_dict

    doc = read_yaml(args.samples, "hand-eye samples")
    samples = doc.get("samples") if isinstance(doc, dict) else None
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise CalibrationError(f"{args.samples}: expected 'samples:' with a list of base_gripper/camera_target pairs")
    grippers, targets = [], []
    for i, s in enumerate(samples):
        grippers.append(transform_from_yaml_dict(s.get("base_gripper"), f"{args.samples}: samples[{i}].base_gripper"))
        targets.append(transform_from_yaml_dict(s.get("camera_target"), f"{args.samples}: samples[{i}].camera_target"))
    X = hand_eye_calibrate(grippers, targets, eye_in_hand=not args.eye_to_hand, method=args.method)
    parent = "base" if args.eye_to_hand else args.gripper_frame
    save_transform(X, args.out, parent, args.camera_frame)
    print(json.dumps({"out": str(args.out), "samples": len(samples), "parent_frame": parent,
                      "child_frame": args.camera_frame, "translation_m": X[:3, 3].round(6).tolist()}, indent=2))
    return 0


def _sim_camera(args: argparse.Namespace) -> int:
    from calibration.extrinsics import save_transform
    from calibration.intrinsics import save_intrinsics
    from calibration.sim_camera import sim_scene_calibration
    from lapa.sim.scene import SceneConfig

    try:
        config = SceneConfig(image_size=args.image_size)
    except ValueError as err:
        raise CalibrationError(str(err)) from None
    cal = sim_scene_calibration(config)
    info = save_intrinsics(cal.intrinsics, args.out_dir / "scene_camera_info.yaml")
    pose = save_transform(cal.T_base_camera, args.out_dir / "scene_extrinsics.yaml", "base", "scene")
    print(json.dumps({"camera_info": str(info), "extrinsics": str(pose)}, indent=2))
    return 0


def _image_paths(inputs: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for p in inputs:
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            paths.append(p)
        else:
            raise CalibrationError(f"no such image or directory: {p}")
    if not paths:
        raise CalibrationError("no images found (looked for " + ", ".join(IMAGE_SUFFIXES) + ")")
    return paths
