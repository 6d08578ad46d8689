"""What the sync and async policy clients share: the errors, the reply, the URL and request
encoding, reply decoding, and which failures are retried (see policy_server/client.py)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from policy_server import codec

STREAM_PATH = "/v1/stream"
MSGPACK = "application/msgpack"


class PolicyClientError(Exception):
    """Base class of the client's errors."""


class PolicyServerError(PolicyClientError):
    """The server answered with an error (status as in HTTP: 4xx the request's fault, 5xx the server's)."""

    def __init__(self, status: int, message: str, request_id: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.request_id = status, message, request_id


class PolicyUnavailableError(PolicyClientError):
    """No answer after every retry (server down, unreachable, too slow or not ready)."""


@dataclass
class ActReply:
    actions: np.ndarray  # float32 (K, 7), the first to execute now
    request_id: Any
    model_ms: float
    server_ms: float
    queue_ms: float = 0.0
    round_trip_ms: float = 0.0  # the whole call as the client saw it, retries included
    replayed: bool = False  # answered from the server's request-id cache (a retry)
    attempts: int = 1
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def new_request_id() -> str:
    return uuid.uuid4().hex


class ClientBase:
    """URL, headers, request encoding and reply decoding shared by the sync and async clients."""

    def __init__(self, url: str = "ws://127.0.0.1:8000", *, api_key: str | None = None, timeout_s: float = 2.0,
                 connect_timeout_s: float = 2.0, retries: int = 5, backoff_s: float = 0.05,
                 max_backoff_s: float = 1.0, image_format: str = "raw", jpeg_quality: int = 90,
                 max_message_bytes: int = 64 << 20) -> None:
        parts = urlsplit(url if "://" in url else "ws://" + url)
        if parts.scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"url must start with ws://, wss://, http:// or https://, got {url!r}")
        if image_format not in ("raw", "jpeg", "png"):
            raise ValueError(f"image_format must be raw, jpeg or png, got {image_format!r}")
        self.url = url
        self.transport = "websocket" if parts.scheme in ("ws", "wss") else "http"
        self.secure = parts.scheme in ("wss", "https")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.secure else 80)
        base = parts.path.rstrip("/")
        self.stream_url = f"{parts.scheme}://{parts.netloc}{base or STREAM_PATH}"
        self.http_base = f"{'https' if self.secure else 'http'}://{parts.netloc}"
        self.api_key = api_key
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.limits = codec.Limits(max_message_bytes=max_message_bytes, max_array_bytes=max_message_bytes)
        self.metadata: dict[str, Any] | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else {}

    def _backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)

    def encode_request(self, image: Any, instruction: str, state: Any = None, request_id: Any = None,
                       wrist_image: Any = None) -> bytes:
        msg: dict[str, Any] = {"request_id": request_id, "instruction": instruction, "image": self._image(image)}
        if wrist_image is not None:  # the hand camera, for a model with cameras [scene, wrist]
            msg["wrist_image"] = self._image(wrist_image)
        if state is not None:
            msg["state"] = np.asarray(state, dtype=np.float32)
        return codec.packb(msg)

    def _image(self, image: Any) -> Any:
        if isinstance(image, (bytes, bytearray)):
            return bytes(image)  # already a JPEG or PNG file
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if self.image_format == "raw":
            return image
        import cv2  # only when asked to compress

        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality] if self.image_format == "jpeg" else []
        ok, data = cv2.imencode("." + self.image_format, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError(f"could not encode the image as {self.image_format}")
        return data.tobytes()

    def _decode_frame(self, data: bytes | str, request_id: Any) -> ActReply | None:
        """A stream frame -> ActReply; None for a reply to another request; raises for errors."""
        if isinstance(data, str):
            raise PolicyServerError(400, f"server sent text: {data[:200]}")
        msg = codec.unpackb(data, self.limits)
        if not isinstance(msg, dict):
            raise PolicyClientError(f"server sent a {type(msg).__name__}, expected a map")
        if "error" in msg:
            rid = msg.get("request_id")
            if rid is not None and rid != request_id:
                return None
            raise PolicyServerError(int(msg.get("status", 500)), str(msg["error"]), rid)
        if msg.get("request_id") != request_id:
            return None
        return self._reply(msg)

    @staticmethod
    def _reply(msg: dict[str, Any]) -> ActReply:
        actions = np.asarray(msg["actions"], dtype=np.float32)
        return ActReply(actions=actions, request_id=msg.get("request_id"), model_ms=float(msg.get("model_ms", 0.0)),
                        server_ms=float(msg.get("server_ms", 0.0)), queue_ms=float(msg.get("queue_ms", 0.0)),
                        replayed=bool(msg.get("replayed", False)), raw=msg)

    def _http_error(self, status: int, body: bytes) -> PolicyServerError:
        try:
            info = json.loads(body)
            return PolicyServerError(status, str(info.get("error", info)), info.get("request_id"))
        except (ValueError, AttributeError):
            return PolicyServerError(status, body[:200].decode("utf-8", "replace"))

    def _check_metadata(self, meta: Any) -> dict[str, Any]:
        if isinstance(meta, dict) and "error" in meta:
            raise PolicyServerError(int(meta.get("status", 500)), str(meta["error"]))
        if not isinstance(meta, dict):
            raise PolicyClientError(f"server metadata is a {type(meta).__name__}, expected a map")
        self.metadata = meta
        return meta


def retryable(err: BaseException) -> bool:
    if isinstance(err, PolicyServerError):
        return err.status in (502, 503, 504)
    if isinstance(err, (OSError, TimeoutError, asyncio.TimeoutError, EOFError)):
        return True
    module = type(err).__module__ or ""
    if module.startswith("websockets") or module.startswith("httpx"):
        status = _handshake_status(err)
        return status is None or status >= 500
    return False


def _handshake_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if status is not None else None


def as_server_error(err: BaseException) -> BaseException:
    """A refused WebSocket handshake (401, 403, 404) is the server's answer: report it as such."""
    status = _handshake_status(err)
    if status is not None and 400 <= status < 500 and (type(err).__module__ or "").startswith("websockets"):
        body = getattr(getattr(err, "response", None), "body", b"") or b""
        message = body.decode("utf-8", "replace")[:200] or "WebSocket handshake refused"
        return PolicyServerError(status, message)
    return err
