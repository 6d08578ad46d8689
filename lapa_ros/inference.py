"""The policy node's network side, in its own thread: the ROS executor never waits on the server.

`FrameBuffer` keeps only the newest camera frame. `InferenceWorker` owns a `PolicyClient` (no
client-side retries: a lost server must stop the robot now, not after a backoff), takes one
request at a time (a newer request replaces one not yet started), waits briefly for a camera
frame taken after the tick so the command is computed from a fresh image, and hands the chunk
back through `on_result`. Between requests it checks that the server is still there: on a
WebSocket it peeks at the socket (a killed server shows as EOF within milliseconds), on HTTP it
opens a TCP connection to the port. `server_time_s` is the monotonic time of the last sign of
life, None while the server is down; the worker reconnects with a backoff by itself.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lapa.realtime import make_thread_realtime
from policy_server.client import ActReply, PolicyClient, PolicyClientError, PolicyServerError

logger = logging.getLogger(__name__)

HTTP_PROBE_PERIOD_S = 0.25
WS_OPCODE_CLOSE = 0x8


@dataclass(frozen=True)
class Frame:
    image: np.ndarray | bytes  # uint8 (H, W, 3) RGB, or a JPEG/PNG file (from a CompressedImage)
    capture_time_s: float  # wall clock (the message's header stamp, or its receipt when unstamped)
    receipt_mono_s: float  # monotonic receipt time in this process
    receipt_wall_s: float = 0.0  # the same instant on the wall clock (capture -> receipt = camera + transport)


class FrameBuffer:
    """The newest frame only; `wait_newer` blocks until one received after a given time.

    A frame whose capture stamp is not later than the last accepted one's (a frozen camera
    republishing its last image, stamps jumping backwards) is not new information: it is dropped
    (`rejected` counts them), so the buffer's frame ages and the safety filter holds the arm.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._frame: Frame | None = None
        self._last_capture_s = float("-inf")
        self.received = 0
        self.rejected = 0

    def put(self, frame: Frame) -> bool:
        """Keep `frame` as the newest; False (dropped) when its capture stamp does not advance."""
        with self._cv:
            if frame.capture_time_s <= self._last_capture_s:
                self.rejected += 1
                return False
            self._last_capture_s = frame.capture_time_s
            self._frame = frame
            self.received += 1
            self._cv.notify_all()
            return True

    def newest(self) -> Frame | None:
        with self._cv:
            return self._frame

    def wait_newer(self, after_mono_s: float, timeout_s: float) -> Frame | None:
        """The newest frame if it was received after after_mono_s, waiting up to timeout_s for one."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cv:
            while self._frame is None or self._frame.receipt_mono_s <= after_mono_s:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cv.wait(remaining)
            return self._frame

    def clear(self) -> None:
        with self._cv:
            self._frame = None


@dataclass(frozen=True)
class Request:
    tick: int
    tick_mono_s: float
    instruction: str
    state: np.ndarray | None = None  # float32 (8,), or (8 * (1 + H),) for a model with a state history
    not_before_mono_s: float = 0.0  # ignore frames received before this (e.g. before a restart)


@dataclass
class Result:
    request: Request
    frame: Frame
    reply: ActReply
    sent_mono_s: float
    done_mono_s: float
    extra: dict[str, Any] = field(default_factory=dict)


class InferenceWorker:
    def __init__(self, url: str, frames: FrameBuffer, on_result: Callable[[Result], None],
                 on_error: Callable[[str, bool], None], *, api_key: str | None = None,
                 timeout_s: float = 0.5, connect_timeout_s: float = 1.0, image_sync_s: float = 0.0,
                 max_image_wait_s: float = 0.05, probe_period_s: float = 0.02,
                 reconnect_backoff_s: tuple[float, float] = (0.1, 1.0),
                 wrist_frames: FrameBuffer | None = None, rt_priority: int = 0) -> None:
        self.url = url
        self.frames = frames
        self.wrist_frames = wrist_frames  # the hand camera, sent to a model with cameras [scene, wrist]
        self.on_result, self.on_error = on_result, on_error
        self.api_key = api_key or None
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.image_sync_s, self.max_image_wait_s = image_sync_s, max_image_wait_s
        self.probe_period_s = probe_period_s
        self.backoff_s = reconnect_backoff_s
        # SCHED_FIFO for this thread (lapa/realtime.py): a reply's first action is executed on it
        self.rt_priority = rt_priority
        self.metadata: dict[str, Any] | None = None
        self.server_time_s: float | None = None
        self.last_error: str | None = None
        self.requests = self.replies = self.failures = 0
        self._cv = threading.Condition()
        self._pending: Request | None = None
        self._closing = False
        self._client: PolicyClient | None = None
        self._thread = threading.Thread(target=self._run, name="lapa-inference", daemon=True)

    # ------------------------------------------------------------------ control side
    def start(self) -> InferenceWorker:
        self._thread.start()
        return self

    def request(self, req: Request) -> None:
        with self._cv:
            self._pending = req  # newest wins: a request not started yet is replaced
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(5.0)
        self._drop_client()

    @property
    def connected(self) -> bool:
        return self._client is not None and self.server_time_s is not None

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        refused = make_thread_realtime(self.rt_priority)
        if refused:
            logger.warning("inference thread stays at normal priority: %s", refused)
        elif self.rt_priority:
            logger.info("inference thread: SCHED_FIFO priority %d", self.rt_priority)
        backoff = self.backoff_s[0]
        while not self._closing:
            if self._client is None:
                if self._connect():
                    backoff = self.backoff_s[0]
                else:
                    with self._cv:
                        self._cv.wait_for(lambda: self._closing, backoff)
                    backoff = min(self.backoff_s[1], backoff * 2)
                    continue
            with self._cv:
                self._cv.wait_for(lambda: self._closing or self._pending is not None, self.probe_period_s)
                req, self._pending = self._pending, None
            if self._closing:
                return
            if req is None:
                self._probe()
            else:
                self._serve(req)

    def _connect(self) -> bool:
        client = PolicyClient(self.url, api_key=self.api_key, timeout_s=self.timeout_s,
                              connect_timeout_s=self.connect_timeout_s, retries=0)
        try:
            self.metadata = client.connect()
        except Exception as e:  # noqa: BLE001 - any failure: down, retried with a backoff
            client.close()
            self._down(f"policy server unavailable at {self.url}: {_short(e)}", fatal=_is_fatal(e))
            return False
        self._client = client
        self.server_time_s = time.monotonic()
        self.last_error = None
        logger.info("connected to the policy server at %s (%s)", self.url, self.metadata.get("model_hash", "?"))
        return True

    def _serve(self, req: Request) -> None:
        after = max(req.tick_mono_s - self.image_sync_s, req.not_before_mono_s)
        frame = self.frames.wait_newer(after, req.tick_mono_s + self.max_image_wait_s - time.monotonic())
        if frame is None:
            frame = self.frames.newest()  # no fresh one in time: the newest (the safety filter judges its age)
            if frame is None or frame.receipt_mono_s <= req.not_before_mono_s:
                return
        wrist = None
        if "wrist" in (self.metadata or {}).get("cameras", ()):
            wrist_frame = self.wrist_frames.newest() if self.wrist_frames is not None else None
            if wrist_frame is None or wrist_frame.receipt_mono_s <= req.not_before_mono_s:
                return  # the control tick holds on a missing or stale hand image
            wrist = wrist_frame.image
        self.requests += 1
        t0 = time.monotonic()
        try:
            reply = self._client.act(frame.image, req.instruction, req.state, wrist_image=wrist,
                                     timeout_s=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - sorted below
            self.failures += 1
            fatal = _is_fatal(e)
            if not fatal:
                self._drop_client()
            self._down(f"policy server request failed: {_short(e)}", fatal=fatal)
            return
        t1 = time.monotonic()
        self.replies += 1
        self.server_time_s = t1
        self.on_result(Result(req, frame, reply, t0, t1))

    def _probe(self) -> None:
        if self._client is None:
            return
        websocket = self._client.transport == "websocket"
        if not websocket and time.monotonic() - (self.server_time_s or 0.0) < HTTP_PROBE_PERIOD_S:
            return  # a TCP connection per probe: not every few milliseconds
        if _link_alive(self._client):
            self.server_time_s = time.monotonic()
        else:
            self._drop_client()
            self._down(f"policy server at {self.url} closed the connection", fatal=False)

    def _down(self, message: str, fatal: bool) -> None:
        if not fatal:
            self.server_time_s = None
        if message != self.last_error:
            logger.warning(message)
        self.last_error = message
        self.on_error(message, fatal)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _is_fatal(err: BaseException) -> bool:
    """The server answered, and the answer is an error of the request or the model (not a 5xx
    meaning "not now"): retrying will not help, the loop must stop and say why."""
    return isinstance(err, PolicyServerError) and err.status not in (502, 503, 504)


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _link_alive(client: PolicyClient) -> bool:
    """Without sending a request: is the server still at the other end of the connection?"""
    ws = getattr(client, "_ws", None)
    sock = getattr(ws, "sock", None)
    if sock is not None:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            head = sock.recv(1, socket.MSG_PEEK)  # b"" = EOF: the peer closed
            # Nothing is sent unasked between requests but control frames: a close frame (opcode 8,
            # a server shutting down gracefully) ends the link as surely as EOF does. It stays unread
            # at the head of the socket, so without this check every later peek would read "alive".
            return head != b"" and (head[0] & 0x0F) != WS_OPCODE_CLOSE
        except (OSError, ValueError):
            return False
    try:  # HTTP (connection per call, or kept alive): can the port still be reached?
        with socket.create_connection((client.host, client.port), timeout=0.2):
            return True
    except OSError:
        return False


__all__ = ["Frame", "FrameBuffer", "InferenceWorker", "PolicyClientError", "Request", "Result"]
