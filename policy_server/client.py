"""Client of the lapa policy server: sync and async, WebSocket and HTTP.

Light on purpose (the ROS node uses it): numpy + msgpack + `websockets`, a small HTTP/1.1
connection on the standard library's socket for sync HTTP (http.client's header parsing costs
about 0.2 ms a call), and httpx only for async HTTP. Never torch (a test holds it to that).

    with PolicyClient("ws://127.0.0.1:8000") as client:      # or "http://127.0.0.1:8000"
        print(client.metadata["chunk_size"], client.metadata["control_hz"])
        reply = client.act(image, "pick up the red block")   # reply.actions: float32 (K, 7)

Connecting fetches the server's metadata (the first WebSocket frame, or GET /v1/metadata).

Retries: a call that loses its connection, times out, or finds the server not ready (503) is
retried with exponential backoff (with jitter) on a new connection, up to `retries` times, with
the SAME request id. The server remembers recent ids (policy_server/service.py): a retry of a
request it is still running waits for that run, one it has answered gets the same reply again
(`reply.replayed`), so the model runs once per request and each call returns exactly one reply;
replies carrying another id (late answers to an abandoned attempt) are dropped. Errors the server
reports for the request itself (4xx, 500) are raised at once as PolicyServerError, never retried.
After the last retry, PolicyUnavailableError.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import socket
import time
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


class _Common:
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

    def encode_request(self, image: Any, instruction: str, state: Any = None, request_id: Any = None) -> bytes:
        msg: dict[str, Any] = {"request_id": request_id, "instruction": instruction, "image": self._image(image)}
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


def _retryable(err: BaseException) -> bool:
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


def _as_server_error(err: BaseException) -> BaseException:
    """A refused WebSocket handshake (401, 403, 404) is the server's answer: report it as such."""
    status = _handshake_status(err)
    if status is not None and 400 <= status < 500 and (type(err).__module__ or "").startswith("websockets"):
        body = getattr(getattr(err, "response", None), "body", b"") or b""
        message = body.decode("utf-8", "replace")[:200] or "WebSocket handshake refused"
        return PolicyServerError(status, message)
    return err


# ------------------------------------------------------------------------------------- sync


class PolicyClient(_Common):
    """Blocking client; one request at a time per client (use one client per thread)."""

    def __init__(self, url: str = "ws://127.0.0.1:8000", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._ws: Any = None
        self._http: _Http11 | None = None

    def __enter__(self) -> PolicyClient:
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        if self.transport == "websocket":
            return self._ws is not None
        return self._http is not None and self.metadata is not None

    def connect(self) -> dict[str, Any]:
        """Connect (with retries) and return the server's metadata."""
        return self._retrying(lambda: self.metadata, "connect")

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._ws = None
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.transport == "http":
            self.metadata = None  # fetched again on reconnect: the server may have restarted with another model

    def act(self, image: Any, instruction: str, state: Any = None, *, request_id: Any = None,
            timeout_s: float | None = None) -> ActReply:
        """One observation -> one reply; retried with the same request id (see the module doc)."""
        rid = request_id if request_id is not None else new_request_id()
        payload = self.encode_request(image, instruction, state, rid)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        t0 = time.perf_counter()
        send = self._ws_act if self.transport == "websocket" else self._http_act
        attempts = [0]

        def once() -> ActReply:
            attempts[0] += 1
            return send(payload, rid, timeout)

        reply = self._retrying(once, f"request {rid}")
        reply.round_trip_ms = 1e3 * (time.perf_counter() - t0)
        reply.attempts = attempts[0]
        return reply

    def reset(self) -> None:
        """policy.reset() on the server (start of an episode)."""
        def once() -> None:
            status, body = self._http_call("POST", "/v1/reset", b"", "application/json", self.timeout_s)
            if status != 200:
                raise self._http_error(status, body)

        self._retrying(once, "reset", connect=False)

    # --------------------------------------------------------------------------- plumbing

    def _retrying(self, fn: Any, what: str, connect: bool = True) -> Any:
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt))
            try:
                if connect and not self.connected:
                    self._open()
                return fn()
            except Exception as err:  # noqa: BLE001 - sorted into retry or raise below
                err = _as_server_error(err)
                if not _retryable(err):
                    raise err
                last = err
                self.close()
        raise PolicyUnavailableError(f"{what}: no answer from {self.url} after {self.retries + 1} attempts: "
                                     f"{type(last).__name__}: {last}") from last

    def _open(self) -> None:
        if self.transport == "websocket":
            ws = _SyncWebSocket(self.stream_url, self._headers(), self.limits.max_message_bytes,
                                self.connect_timeout_s)
            try:
                self._check_metadata(codec.unpackb(ws.recv(timeout=self.connect_timeout_s), self.limits))
            except BaseException:
                ws.close()
                raise
            self._ws = ws
        else:
            status, body = self._http_call("GET", "/v1/metadata", None, None, self.connect_timeout_s)
            if status != 200:
                raise self._http_error(status, body)
            self._check_metadata(json.loads(body))

    def _ws_act(self, payload: bytes, rid: Any, timeout: float) -> ActReply:
        deadline = time.monotonic() + timeout
        self._ws.send(payload)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply within {timeout} s")
            reply = self._decode_frame(self._ws.recv(timeout=remaining), rid)
            if reply is not None:
                return reply

    def _http_act(self, payload: bytes, rid: Any, timeout: float) -> ActReply:
        status, body = self._http_call("POST", "/v1/act", payload, MSGPACK, timeout)
        if status != 200:
            raise self._http_error(status, body)
        msg = codec.unpackb(body, self.limits)
        if not isinstance(msg, dict) or msg.get("request_id") != rid:
            raise PolicyClientError("server replied to another request")
        return self._reply(msg)

    def _http_call(self, method: str, path: str, body: bytes | None, content_type: str | None,
                   timeout: float) -> tuple[int, bytes]:
        if self._http is None:
            self._http = _Http11(self.host, self.port, self.secure, self.connect_timeout_s,
                                 self.limits.max_message_bytes)
        headers = {"Accept": MSGPACK if path == "/v1/act" else "application/json", **self._headers()}
        if content_type:
            headers["Content-Type"] = content_type
        status, data, keep_alive = self._http.request(method, path, body, headers, timeout)
        if not keep_alive:
            self._http.close()
            self._http = None
        return status, data


# Replies are a few hundred bytes: a 64 KiB read buffer is plenty (a larger one costs an mmap per read).
RECV_CHUNK = 1 << 16
# A 224x224 image is 150 KB: a send buffer that holds a whole request lets sendall return at once
# instead of waiting for the server to drain it piece by piece (-0.1 to -0.2 ms a round trip here).
SEND_BUFFER = 1 << 20


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


class _SyncWebSocket:
    """A blocking WebSocket connection on websockets' sans-I/O protocol, without the reader thread of
    websockets.sync (which hands each message between threads: 0.1-0.2 ms a round trip here).
    Pings are answered whenever the connection is read; a connection left idle past the server's
    ping timeout is closed by the server, and the next call reconnects."""

    def __init__(self, url: str, headers: dict[str, str], max_size: int, timeout_s: float) -> None:
        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        self._closed_states = (State.CLOSING, State.CLOSED)
        uri = parse_uri(url)
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout_s)
        _tune(sock)
        if uri.secure:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=uri.host)
        self.sock = sock
        self.proto = ClientProtocol(uri, max_size=max_size)  # no extensions: no per-message compression
        self._events: collections.deque = collections.deque()
        self._parts: list[bytes] = []
        self._text = False
        request = self.proto.connect()
        for name, value in headers.items():
            request.headers[name] = value
        self.proto.send_request(request)
        self._flush()
        deadline = time.monotonic() + timeout_s
        while self.proto.state is State.CONNECTING:
            self._read(deadline)
        if self.proto.handshake_exc is not None:
            self.sock.close()
            raise self.proto.handshake_exc

    def send(self, data: bytes) -> None:
        self.proto.send_binary(data)
        self._flush()

    def recv(self, timeout: float) -> bytes | str:
        from websockets.frames import Frame, Opcode

        deadline = time.monotonic() + timeout
        while True:
            while self._events:
                frame = self._events.popleft()
                if not isinstance(frame, Frame):
                    continue  # the handshake response
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    self._parts, self._text = [frame.data], frame.opcode is Opcode.TEXT
                elif frame.opcode is Opcode.CONT:
                    self._parts.append(frame.data)
                else:
                    continue  # ping, pong, close: the protocol answers them
                if frame.fin:
                    data = b"".join(self._parts)
                    self._parts = []
                    return data.decode() if self._text else data
            if self.proto.state in self._closed_states:
                raise self.proto.close_exc
            self._read(deadline)

    def close(self) -> None:
        try:
            if self.proto.state not in self._closed_states:
                self.proto.send_close()
                self._flush()
        finally:
            self.sock.close()

    def _read(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no WebSocket message in time")
        self.sock.settimeout(remaining)
        data = self.sock.recv(RECV_CHUNK)
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        self._events.extend(self.proto.events_received())
        self._flush()  # pongs and close replies

    def _flush(self) -> None:
        chunks = [c for c in self.proto.data_to_send() if c]  # frame header + payload: one send
        if chunks:
            self.sock.sendall(chunks[0] if len(chunks) == 1 else b"".join(chunks))


class _Http11:
    """A minimal keep-alive HTTP/1.1 client connection: the request in one send, a Content-Length or
    chunked response. Errors are OSErrors (ConnectionError, TimeoutError), which the client retries."""

    def __init__(self, host: str, port: int, secure: bool, connect_timeout_s: float, max_bytes: int) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        _tune(sock)
        if secure:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.host_header = f"{host}:{port}"
        self.max_bytes = max_bytes

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> tuple[int, bytes, bool]:
        """(status, body, keep_alive)."""
        self.sock.settimeout(timeout)
        body = body or b""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status_line = self.file.readline(65537)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"bad HTTP status line {status_line[:80]!r}" if status_line else
                                  "the server closed the connection")
        response_headers: dict[str, str] = {}
        while True:
            line = self.file.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            if len(response_headers) > 100:
                raise ConnectionError("too many HTTP response headers")
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        keep_alive = response_headers.get("connection", "").lower() != "close"
        if "content-length" in response_headers:
            data = self._read(int(response_headers["content-length"]))
        elif response_headers.get("transfer-encoding", "").lower() == "chunked":
            data = self._read_chunked()
        else:
            data, keep_alive = self.file.read(self.max_bytes + 1), False
        if len(data) > self.max_bytes:
            raise ConnectionError(f"response over {self.max_bytes} bytes")
        return int(parts[1]), data, keep_alive

    def _read(self, n: int) -> bytes:
        if n > self.max_bytes:
            raise ConnectionError(f"response of {n} bytes is over the limit of {self.max_bytes}")
        data = self.file.read(n)
        if len(data) != n:
            raise ConnectionError("the server closed the connection mid-response")
        return data

    def _read_chunked(self) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.file.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while self.file.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > self.max_bytes:
                raise ConnectionError(f"response over {self.max_bytes} bytes")
            chunks.append(self._read(size))
            self.file.readline(3)  # the CRLF after each chunk


# ------------------------------------------------------------------------------------ async


class AsyncPolicyClient(_Common):
    """asyncio client; one request at a time per client (calls are serialised by a lock)."""

    def __init__(self, url: str = "ws://127.0.0.1:8000", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._ws: Any = None
        self._http: Any = None  # httpx.AsyncClient, imported only for HTTP
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncPolicyClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> dict[str, Any]:
        async with self._lock:
            return await self._retrying(self._current_metadata, "connect")

    async def _current_metadata(self) -> dict[str, Any]:
        return self.metadata

    async def close(self) -> None:
        if self._ws is not None:
            try:
                await self._ws.close()
            except Exception:  # noqa: BLE001
                pass
            self._ws = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def act(self, image: Any, instruction: str, state: Any = None, *, request_id: Any = None,
                  timeout_s: float | None = None) -> ActReply:
        rid = request_id if request_id is not None else new_request_id()
        payload = self.encode_request(image, instruction, state, rid)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        t0 = time.perf_counter()
        attempts = [0]

        async def once() -> ActReply:
            attempts[0] += 1
            if self.transport == "websocket":
                return await asyncio.wait_for(self._ws_act(payload, rid), timeout)
            return await self._http_act(payload, rid, timeout)

        async with self._lock:
            reply = await self._retrying(once, f"request {rid}")
        reply.round_trip_ms = 1e3 * (time.perf_counter() - t0)
        reply.attempts = attempts[0]
        return reply

    async def reset(self) -> None:
        async with self._lock:
            async def once() -> None:
                client = self._http_client()
                r = await client.post(self.http_base + "/v1/reset", headers=self._headers(), timeout=self.timeout_s)
                if r.status_code != 200:
                    raise self._http_error(r.status_code, r.content)

            await self._retrying(once, "reset", connect=False)

    async def _retrying(self, fn: Any, what: str, connect: bool = True) -> Any:
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            try:
                if connect and self._ws is None and (self.transport == "websocket" or self.metadata is None):
                    await self._open()
                return await fn()
            except Exception as err:  # noqa: BLE001 - sorted into retry or raise below
                err = _as_server_error(err)
                if not _retryable(err):
                    raise err
                last = err
                await self._drop()
        raise PolicyUnavailableError(f"{what}: no answer from {self.url} after {self.retries + 1} attempts: "
                                     f"{type(last).__name__}: {last}") from last

    async def _drop(self) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            try:
                await ws.close()
            except Exception:  # noqa: BLE001
                pass
        if self.transport == "http":
            self.metadata = None  # fetch it again: the server may have restarted with another model

    def _http_client(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(timeout=self.timeout_s)
        return self._http

    async def _open(self) -> None:
        if self.transport == "websocket":
            from websockets.asyncio.client import connect

            ws = await connect(self.stream_url, additional_headers=self._headers(), compression=None,
                               max_size=self.limits.max_message_bytes, open_timeout=self.connect_timeout_s,
                               close_timeout=1.0)
            try:
                first = await asyncio.wait_for(ws.recv(), self.connect_timeout_s)
                self._check_metadata(codec.unpackb(first, self.limits))
            except BaseException:
                await ws.close()
                raise
            self._ws = ws
        else:
            r = await self._http_client().get(self.http_base + "/v1/metadata", headers=self._headers(),
                                              timeout=self.connect_timeout_s)
            if r.status_code != 200:
                raise self._http_error(r.status_code, r.content)
            self._check_metadata(r.json())

    async def _ws_act(self, payload: bytes, rid: Any) -> ActReply:
        await self._ws.send(payload)
        while True:
            reply = self._decode_frame(await self._ws.recv(), rid)
            if reply is not None:
                return reply

    async def _http_act(self, payload: bytes, rid: Any, timeout: float) -> ActReply:
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK, **self._headers()}
        r = await self._http_client().post(self.http_base + "/v1/act", content=payload, headers=headers,
                                           timeout=timeout)
        if r.status_code != 200:
            raise self._http_error(r.status_code, r.content)
        msg = codec.unpackb(r.content, self.limits)
        if not isinstance(msg, dict) or msg.get("request_id") != rid:
            raise PolicyClientError("server replied to another request")
        return self._reply(msg)
