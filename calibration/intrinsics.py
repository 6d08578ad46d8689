"""Camera intrinsics: the ROS `camera_info_manager` YAML file, checkerboard calibration, MuJoCo cameras.

Pixel convention (OpenCV and ROS): pixel centres sit at integer coordinates, (0, 0) is the centre
of the top-left pixel, u grows to the right and v downwards; the image spans [-0.5, W - 0.5].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from calibration.errors import CalibrationError, read_yaml

# Distortion models OpenCV's pinhole functions understand, and their coefficient counts.
DISTORTION_SIZES: dict[str, int] = {"plumb_bob": 5, "rational_polynomial": 8}
MIN_CHECKERBOARDS = 4


@dataclass(frozen=True)
class CameraIntrinsics:
    """A pinhole camera with lens distortion; focal lengths and principal point in pixels.

    `rectification` (9,) and `projection` (12,) are the row-major R and P of sensor_msgs/CameraInfo;
    None means a monocular camera: R = identity and P = [K | 0].
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # plumb_bob: k1, k2, p1, p2, k3
    distortion_model: str = "plumb_bob"
    camera_name: str = "camera"
    rectification: tuple[float, ...] | None = None
    projection: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise CalibrationError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, _finite(getattr(self, name), name))
        if self.fx <= 0 or self.fy <= 0:
            raise CalibrationError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if self.distortion_model not in DISTORTION_SIZES:
            raise CalibrationError(f"distortion_model must be one of {sorted(DISTORTION_SIZES)}, "
                                   f"got {self.distortion_model!r}")
        n = DISTORTION_SIZES[self.distortion_model]
        object.__setattr__(self, "distortion", _finite_tuple(self.distortion, n, "distortion"))
        # Canonical form: the monocular defaults are stored as None, so equal cameras compare equal.
        if self.rectification is not None:
            R = _finite_tuple(self.rectification, 9, "rectification")
            object.__setattr__(self, "rectification", None if R == tuple(np.eye(3).ravel()) else R)
        if self.projection is not None:
            P = _finite_tuple(self.projection, 12, "projection")
            monocular = np.hstack([self.K, np.zeros((3, 1))]).ravel()
            object.__setattr__(self, "projection", None if np.array_equal(P, monocular) else P)

    @property
    def K(self) -> np.ndarray:
        """(3, 3) camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist(self) -> np.ndarray:
        """(5,) or (8,) distortion coefficients in OpenCV's order."""
        return np.array(self.distortion, dtype=float)

    @property
    def R(self) -> np.ndarray:
        """(3, 3) rectification matrix."""
        return np.eye(3) if self.rectification is None else np.array(self.rectification).reshape(3, 3)

    @property
    def P(self) -> np.ndarray:
        """(3, 4) projection matrix."""
        if self.projection is None:
            return np.hstack([self.K, np.zeros((3, 1))])
        return np.array(self.projection).reshape(3, 4)

    def resized(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera after resizing its images to width x height (distortion is scale-free)."""
        sx, sy = width / self.width, height / self.height
        P = self.P * np.array([[sx], [sy], [1.0]])  # (3, 4)
        P[0, 2] = (self.P[0, 2] + 0.5) * sx - 0.5  # resizing scales pixel edges, not centres
        P[1, 2] = (self.P[1, 2] + 0.5) * sy - 0.5
        return CameraIntrinsics(
            width, height, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
            self.distortion, self.distortion_model, self.camera_name, self.rectification,
            None if self.projection is None else tuple(P.ravel()))

    def to_camera_info_dict(self) -> dict:
        """The fields of sensor_msgs/CameraInfo as plain Python values (no ROS import)."""
        return {
            "width": self.width,
            "height": self.height,
            "distortion_model": self.distortion_model,
            "d": [float(v) for v in self.distortion],
            "k": [float(v) for v in self.K.ravel()],
            "r": [float(v) for v in self.R.ravel()],
            "p": [float(v) for v in self.P.ravel()],
        }

    def to_yaml_dict(self) -> dict:
        """The `camera_info_manager` YAML layout."""
        def matrix(rows: int, cols: int, values: np.ndarray) -> dict:
            return {"rows": rows, "cols": cols, "data": [float(v) for v in np.ravel(values)]}

        return {
            "image_width": self.width,
            "image_height": self.height,
            "camera_name": self.camera_name,
            "camera_matrix": matrix(3, 3, self.K),
            "distortion_model": self.distortion_model,
            "distortion_coefficients": matrix(1, len(self.distortion), self.dist),
            "rectification_matrix": matrix(3, 3, self.R),
            "projection_matrix": matrix(3, 4, self.P),
        }

    @classmethod
    def from_yaml_dict(cls, doc: object, source: str = "<dict>") -> CameraIntrinsics:
        """Parse the `camera_info_manager` layout; raise CalibrationError naming the bad field."""
        if not isinstance(doc, dict):
            raise CalibrationError(f"{source}: expected a YAML mapping of camera_info fields, got {type(doc).__name__}")
        for key in ("image_width", "image_height", "camera_matrix", "distortion_model", "distortion_coefficients"):
            if key not in doc:
                raise CalibrationError(f"{source}: missing key {key!r}")
        model = doc["distortion_model"]
        if model not in DISTORTION_SIZES:
            raise CalibrationError(f"{source}: distortion_model must be one of {sorted(DISTORTION_SIZES)}, "
                                   f"got {model!r}")
        K = _yaml_matrix(doc, "camera_matrix", 3, 3, source)
        if abs(K[0, 1]) > 1e-9 or abs(K[1, 0]) > 1e-9 or not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9):
            raise CalibrationError(f"{source}: camera_matrix must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "
                                   f"got {K.tolist()}")
        D = _yaml_matrix(doc, "distortion_coefficients", 1, DISTORTION_SIZES[model], source)
        R = _yaml_matrix(doc, "rectification_matrix", 3, 3, source) if "rectification_matrix" in doc else None
        P = _yaml_matrix(doc, "projection_matrix", 3, 4, source) if "projection_matrix" in doc else None
        try:
            return cls(
                width=doc["image_width"], height=doc["image_height"],
                fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2],
                distortion=tuple(D.ravel()), distortion_model=model,
                camera_name=str(doc.get("camera_name", "camera")),
                rectification=None if R is None else tuple(R.ravel()),
                projection=None if P is None else tuple(P.ravel()),
            )
        except CalibrationError as err:
            raise CalibrationError(f"{source}: {err}") from None


def load_intrinsics(path: str | Path) -> CameraIntrinsics:
    """Read a `camera_info_manager` YAML file (yaml.safe_load only)."""
    return CameraIntrinsics.from_yaml_dict(read_yaml(path, "camera intrinsics"), str(path))


def save_intrinsics(intrinsics: CameraIntrinsics, path: str | Path) -> Path:
    """Write a `camera_info_manager` YAML file that ROS camera drivers load as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(intrinsics.to_yaml_dict(), sort_keys=False, default_flow_style=None))
    return path


def checkerboard_points(pattern: tuple[int, int], square_m: float) -> np.ndarray:
    """(cols * rows, 3) inner-corner positions on the board plane z = 0, in OpenCV's detection order."""
    cols, rows = pattern
    grid = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2)  # (rows * cols, 2): x varies fastest
    return np.hstack([grid * square_m, np.zeros((len(grid), 1))]).astype(np.float32)


def calibrate_checkerboard(images: Sequence[np.ndarray], pattern: tuple[int, int], square_m: float,
                           min_boards: int = MIN_CHECKERBOARDS, flags: int = 0,
                           camera_name: str = "camera") -> tuple[CameraIntrinsics, float]:
    """Intrinsics and RMS reprojection error (pixels) from views of a checkerboard.

    images: uint8 (H, W) grey or (H, W, 3) RGB, all one size. pattern: inner corners (cols, rows).
    square_m: the side of one square. flags: extra cv2.calibrateCamera flags (e.g. CALIB_FIX_K3).
    """
    import cv2

    cols, rows = (int(v) for v in pattern)
    if cols < 2 or rows < 2:
        raise CalibrationError(f"pattern must be (cols, rows) inner corners, both >= 2, got {pattern}")
    if not (math.isfinite(square_m) and square_m > 0):
        raise CalibrationError(f"square_m must be a positive length in metres, got {square_m}")
    if len(images) == 0:
        raise CalibrationError("no images to calibrate from")
    if flags & (cv2.CALIB_THIN_PRISM_MODEL | cv2.CALIB_TILTED_MODEL):
        raise CalibrationError("thin-prism and tilted distortion models have no camera_info_manager form; "
                               "use plumb_bob (default) or CALIB_RATIONAL_MODEL")
    board = checkerboard_points((cols, rows), square_m)  # (N, 3)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
    size: tuple[int, int] | None = None
    object_points, image_points = [], []
    for i, image in enumerate(images):
        grey = _grey(image, i)
        if size is None:
            size = grey.shape[::-1]  # (W, H)
        elif grey.shape[::-1] != size:
            raise CalibrationError(f"image {i} is {grey.shape[1]}x{grey.shape[0]}, the first was {size[0]}x{size[1]}")
        found, corners = cv2.findChessboardCorners(
            grey, (cols, rows), flags=cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE)
        if not found:
            continue
        # Refinement window: about a third of the corner spacing, so it never reaches the next corner.
        spacing = float(np.min(np.linalg.norm(np.diff(corners.reshape(rows, cols, 2), axis=1), axis=-1)))
        half = int(np.clip(spacing / 3, 2, 11))
        corners = cv2.cornerSubPix(grey, corners, (half, half), (-1, -1), criteria)  # (N, 1, 2)
        object_points.append(board)
        image_points.append(corners)
    if len(image_points) < min_boards:
        raise CalibrationError(f"found the {cols}x{rows} checkerboard in {len(image_points)} of {len(images)} "
                               f"images; need at least {min_boards} (check the pattern's inner-corner count, "
                               "and that the whole board with a white border is in view)")
    rms, K, dist, _rvecs, _tvecs = cv2.calibrateCamera(object_points, image_points, size, None, None, flags=flags)
    dist = np.ravel(dist)
    model = "rational_polynomial" if flags & cv2.CALIB_RATIONAL_MODEL else "plumb_bob"
    intrinsics = CameraIntrinsics(
        width=size[0], height=size[1], fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]),
        distortion=tuple(float(v) for v in dist[:DISTORTION_SIZES[model]]), distortion_model=model,
        camera_name=camera_name)
    return intrinsics, float(rms)


def _grey(image: np.ndarray, index: int) -> np.ndarray:
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise CalibrationError(f"image {index} must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise CalibrationError(f"image {index} must be (H, W) grey or (H, W, 3) RGB, got shape {image.shape}")


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise CalibrationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise CalibrationError(f"{name} must be finite, got {value!r}")
    return float(value)


def _finite_tuple(values: object, n: int, name: str) -> tuple[float, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence | np.ndarray) or len(values) != n:
        raise CalibrationError(f"{name} must be {n} numbers, got {values!r}")
    return tuple(_finite(v, f"{name}[{i}]") for i, v in enumerate(values))


def _yaml_matrix(doc: dict, key: str, rows: int, cols: int, source: str) -> np.ndarray:
    """One `{rows, cols, data}` block as a (rows, cols) float array, validated."""
    block = doc[key]
    if not isinstance(block, dict) or not {"rows", "cols", "data"} <= set(block):
        raise CalibrationError(f"{source}: {key} must be a mapping with rows, cols and data")
    if block["rows"] != rows or block["cols"] != cols:
        raise CalibrationError(f"{source}: {key} must be {rows}x{cols}, got {block['rows']}x{block['cols']}")
    data = block["data"]
    if not isinstance(data, list) or len(data) != rows * cols:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise CalibrationError(f"{source}: {key}.data must be a list of {rows * cols} numbers, got {got}")
    try:
        values = [_finite(v, f"{key}.data[{i}]") for i, v in enumerate(data)]
    except CalibrationError as err:
        raise CalibrationError(f"{source}: {err}") from None
    return np.array(values).reshape(rows, cols)
