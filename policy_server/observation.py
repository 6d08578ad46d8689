"""Turn a decoded request map into the Policy observation, whatever transport it came by.

A request is a map with `image`, `instruction`, optional `state`, optional `wrist_image` (the hand
camera, same forms as `image`; a model with cameras [scene, wrist] needs it) and optional `request_id`.
The image is a raw `uint8 (H, W, 3)` RGB array, or the bytes of a JPEG or PNG file (base64 text in
JSON); an image of another size than the model's is resized (cv2, INTER_AREA) unless resizing is
off. Compressed images are checked from their header before they are decoded, so a small file
that declares a huge image is refused without allocating it.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from lapa.policy_protocol import OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, OBS_WRIST_IMAGE
from lapa.state_history import MAX_STATE_FLOATS

STATE_DIM = 8
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): carry the image size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class RequestError(Exception):
    """A request the server refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class InputLimits:
    max_image_side: int = 4096  # pixels, before resizing
    # pixels: smaller images carry too little to upscale to the model's size (a 1x1 image is refused)
    min_image_side: int = 32
    max_instruction_chars: int = 512
    max_request_id_chars: int = 128
    resize: bool = True  # resize images of another size to the model's; False: answer 422


@dataclass
class ActRequest:
    obs: dict[str, Any]  # the Policy observation: image, instruction, state (optional)
    request_id: Any  # the caller's id (str or int), echoed; server-made when the caller gave none
    client_id: bool  # whether the caller chose the id (only those are deduplicated)
    fingerprint: int  # cheap digest of the observation: a reused id with other content is a conflict


def parse_request(msg: Any, image_size: tuple[int, int], limits: InputLimits, *,
                  text_images: bool = False) -> ActRequest:
    """Validate a decoded request map; raises RequestError (422) naming the field at fault."""
    if not isinstance(msg, dict):
        raise RequestError(422, f"request must be a map, got {type(msg).__name__}")
    msg = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in msg.items()}
    request_id, client_id = _request_id(msg.get("request_id"), limits)
    try:
        if OBS_IMAGE not in msg:
            raise RequestError(422, "request has no 'image'")
        if OBS_INSTRUCTION not in msg:
            raise RequestError(422, "request has no 'instruction'")
        instruction = _instruction(msg[OBS_INSTRUCTION], limits)
        image = to_image(msg[OBS_IMAGE], image_size, limits, text_images=text_images)
        wrist = msg.get(OBS_WRIST_IMAGE)
        if wrist is not None:
            wrist = to_image(wrist, image_size, limits, text_images=text_images, field=OBS_WRIST_IMAGE)
        state = _state(msg.get(OBS_STATE))
    except RequestError as err:
        err.request_id = request_id
        raise
    obs: dict[str, Any] = {OBS_IMAGE: image, OBS_INSTRUCTION: instruction}
    if wrist is not None:
        obs[OBS_WRIST_IMAGE] = wrist
    if state is not None:
        obs[OBS_STATE] = state
    return ActRequest(obs, request_id, client_id, fingerprint(obs) if client_id else 0)


def fingerprint(obs: dict[str, Any]) -> int:
    """A cheap digest (a strided sample of the image, the instruction and the state), not a hash of all bytes."""
    image = obs[OBS_IMAGE]
    sample = image.reshape(-1)[:: max(1, image.size // 1024)].tobytes()
    state = obs.get(OBS_STATE)
    extra = state.tobytes() if state is not None else b""
    wrist = obs.get(OBS_WRIST_IMAGE)
    if wrist is not None:
        extra += wrist.reshape(-1)[:: max(1, wrist.size // 1024)].tobytes()
    return zlib.crc32(sample + obs[OBS_INSTRUCTION].encode() + extra + repr(image.shape).encode())


def _request_id(value: Any, limits: InputLimits) -> tuple[Any, bool]:
    if value is None:
        return "srv-" + uuid.uuid4().hex, False
    if isinstance(value, str) and 0 < len(value) <= limits.max_request_id_chars and value.isprintable():
        return value, True
    if type(value) is int and abs(value) < 2**63:
        return value, True
    raise RequestError(422, f"'request_id' must be a printable string of 1 to {limits.max_request_id_chars} "
                            f"characters or an integer, got {type(value).__name__}")


def _instruction(value: Any, limits: InputLimits) -> str:
    if not isinstance(value, str):
        raise RequestError(422, f"'instruction' must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise RequestError(422, "'instruction' is empty")
    if len(value) > limits.max_instruction_chars:
        raise RequestError(422, f"'instruction' has {len(value)} characters, "
                                f"the limit is {limits.max_instruction_chars}")
    return value


def _state(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, list) and all(type(v) in (int, float) for v in value):
        value = np.asarray(value, dtype=np.float64)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise RequestError(422, f"'state' must be {STATE_DIM} numbers, got {type(value).__name__}")
    if value.ndim != 1 or not 0 < value.shape[0] <= MAX_STATE_FLOATS or value.shape[0] % STATE_DIM:
        raise RequestError(422, f"'state' must have shape ({STATE_DIM},) (or {STATE_DIM} per state for a model "
                                f"with a state history, see /v1/metadata state_dim), got {tuple(value.shape)}")
    if not np.all(np.isfinite(value)):
        raise RequestError(422, "'state' has non-finite values")
    return value.astype(np.float32)


# ----------------------------------------------------------------------------------------- images


def to_image(value: Any, image_size: tuple[int, int], limits: InputLimits, *, text_images: bool = False,
             field: str = OBS_IMAGE) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image of the model's size from an array, JPEG/PNG bytes or (JSON) base64
    text; a refusal names `field` (image or wrist_image)."""
    try:
        return _to_image(value, image_size, limits, text_images)
    except RequestError as err:
        if field != OBS_IMAGE:
            err.message = err.message.replace(f"'{OBS_IMAGE}'", f"'{field}'", 1)
            err.args = (err.message,)
        raise


def _to_image(value: Any, image_size: tuple[int, int], limits: InputLimits, text_images: bool) -> np.ndarray:
    if isinstance(value, str) and text_images:
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(422, "'image' text must be base64 of a JPEG or PNG file") from err
    if isinstance(value, list) and text_images:
        value = _image_from_lists(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        image = decode_image_file(bytes(value), limits)
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise RequestError(422, f"'image' must be uint8, got {value.dtype}")
        if value.ndim != 3 or value.shape[2] != 3:
            raise RequestError(422, f"'image' must have shape (H, W, 3), got {tuple(value.shape)}")
        _check_size(value.shape[0], value.shape[1], limits)
        image = value
    else:
        raise RequestError(422, f"'image' must be a uint8 array or JPEG/PNG bytes, got {type(value).__name__}")
    h, w = image_size
    if image.shape[:2] != (h, w):
        if not limits.resize:
            raise RequestError(422, f"'image' must be {h}x{w}, got {image.shape[0]}x{image.shape[1]}")
        import cv2

        shrink = image.shape[0] >= h and image.shape[1] >= w
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    # Otherwise the image may be a read-only view of the message (no copy): backends that need a
    # writable array copy it themselves.
    return image


def _image_from_lists(value: list) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise RequestError(422, "'image' lists are ragged") from err
    if array.dtype.kind not in "iu" or array.size == 0 or array.min() < 0 or array.max() > 255:
        raise RequestError(422, "'image' lists must hold integers 0..255")
    return array.astype(np.uint8)


def _check_size(h: int, w: int, limits: InputLimits) -> None:
    if h < limits.min_image_side or w < limits.min_image_side or h > limits.max_image_side or w > limits.max_image_side:
        raise RequestError(422, f"'image' of {h}x{w} pixels is outside {limits.min_image_side}.."
                                f"{limits.max_image_side} per side (minimum side {limits.min_image_side})")


def image_file_size(data: bytes) -> tuple[str, int, int]:
    """(format, height, width) read from a JPEG or PNG header; RequestError for anything else."""
    if data.startswith(_PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise RequestError(422, "'image' PNG is truncated")
        w, h = struct.unpack(">II", data[16:24])
        return "png", h, w
    if data.startswith(_JPEG_MAGIC):
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                raise RequestError(422, "'image' JPEG is malformed")
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in _JPEG_SOF:
                if i + 9 > len(data):
                    break
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return "jpeg", h, w
            if length < 2:
                raise RequestError(422, "'image' JPEG is malformed")
            i += 2 + length
        raise RequestError(422, "'image' JPEG has no frame header")
    raise RequestError(422, "'image' bytes are neither JPEG nor PNG")


def decode_image_file(data: bytes, limits: InputLimits) -> np.ndarray:
    """Decode JPEG or PNG bytes to RGB uint8 (H, W, 3), checking the declared size first."""
    import cv2

    _, h, w = image_file_size(data)
    _check_size(h, w, limits)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[:2] != (h, w):
        raise RequestError(422, "'image' file could not be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
