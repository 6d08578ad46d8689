"""sensor_msgs Image / CompressedImage <-> numpy (no cv_bridge: it is not on PyPI)."""

from __future__ import annotations

import numpy as np

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_rgb(msg) -> np.ndarray:
    """A sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 (H, W, 3) RGB, a copy."""
    enc = msg.encoding.lower()
    if enc not in _CHANNELS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}; use one of {sorted(_CHANNELS)}")
    c = _CHANNELS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h < 1 or w < 1 or step < w * c:
        raise ValueError(f"bad image geometry: {w}x{h}, step {step}, {c} channels")
    data = msg.data
    buf = np.asarray(data, np.uint8) if isinstance(data, list) else np.frombuffer(data, np.uint8)
    if buf.size < h * step:
        raise ValueError(f"image data has {buf.size} bytes, expected {h * step}")
    rows = buf[:h * step].reshape(h, step)[:, :w * c].reshape(h, w, c)  # (H, W, C)
    if enc == "mono8":
        return np.repeat(rows, 3, axis=2)
    if enc.startswith("bgr"):
        rows = rows[:, :, 2::-1]
    return np.ascontiguousarray(rows[:, :, :3])


def rgb_to_image(image: np.ndarray, stamp_s: float, frame_id: str = "camera"):
    """uint8 (H, W, 3) RGB -> sensor_msgs/Image rgb8 with header stamp stamp_s (seconds, wall clock)."""
    from sensor_msgs.msg import Image

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) RGB, got {image.shape}")
    msg = Image()
    set_stamp(msg.header, stamp_s)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = image.tobytes()
    return msg


def set_stamp(header, stamp_s: float) -> None:
    sec = int(stamp_s)
    header.stamp.sec = sec
    header.stamp.nanosec = int(round((stamp_s - sec) * 1e9)) % 1_000_000_000


def camera_info_msg(fields: dict, header):
    """sensor_msgs/CameraInfo from CameraIntrinsics.to_camera_info_dict() fields, sharing the
    header (stamp and frame_id) of the image it describes."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header = header
    msg.width, msg.height = int(fields["width"]), int(fields["height"])
    msg.distortion_model = fields["distortion_model"]
    msg.d = [float(v) for v in fields["d"]]
    msg.k = [float(v) for v in fields["k"]]
    msg.r = [float(v) for v in fields["r"]]
    msg.p = [float(v) for v in fields["p"]]
    return msg


def stamp_seconds(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def compressed_format_ok(fmt: str) -> bool:
    """Whether a CompressedImage's format is one the policy server decodes (JPEG or PNG)."""
    f = fmt.lower()
    return "jpeg" in f or "jpg" in f or "png" in f
