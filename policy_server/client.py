"""Client of the lapa policy server: sync and async, WebSocket and HTTP.

Light on purpose (the ROS node uses it): numpy + msgpack + `websockets` (a blocking connection on
its sans-I/O protocol, policy_server/websocket_connection.py), and the standard library's
http.client for HTTP (kept-alive; the async client uses httpx). Never torch (a test holds it to that).

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

import http.client
import json
import select
import socket
import time
from typing import Any

from policy_server import codec
from policy_server.async_client import AsyncPolicyClient
from policy_server.client_base import (
    MSGPACK,
    ActReply,
    ClientBase,
    PolicyClientError,
    PolicyServerError,
    PolicyUnavailableError,
    as_server_error,
    new_request_id,
    retryable,
)
from policy_server.websocket_connection import SyncWebSocket

__all__ = ["ActReply", "AsyncPolicyClient", "PolicyClient", "PolicyClientError", "PolicyServerError",
           "PolicyUnavailableError", "new_request_id"]


class PolicyClient(ClientBase):
    """Blocking client; one request at a time per client (use one client per thread)."""

    def __init__(self, url: str = "ws://127.0.0.1:8000", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._ws: SyncWebSocket | None = None
        self._http: http.client.HTTPConnection | None = None

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
            wrist_image: Any = None, timeout_s: float | None = None) -> ActReply:
        """One observation -> one reply; retried with the same request id (see the module doc)."""
        rid = request_id if request_id is not None else new_request_id()
        payload = self.encode_request(image, instruction, state, rid, wrist_image)
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
                err = as_server_error(err)
                if not retryable(err):
                    raise err
                last = err
                self.close()
        raise PolicyUnavailableError(f"{what}: no answer from {self.url} after {self.retries + 1} attempts: "
                                     f"{type(last).__name__}: {last}") from last

    def _open(self) -> None:
        if self.transport == "websocket":
            ws = SyncWebSocket(self.stream_url, self._headers(), self.limits.max_message_bytes,
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
        """(status, body) of one HTTP/1.1 call on a kept-alive connection; the body at most
        max_message_bytes long (a longer one is a ConnectionError, retried like a lost connection).

        The standard library's http.client, not httpx: it parses the same protocol (no HTTP code of
        our own) for about 0.4 ms less per call, which is most of the serving overhead budget."""
        conn = self._http_connection()
        conn.sock.settimeout(timeout)
        headers = {"Accept": MSGPACK if path == "/v1/act" else "application/json", **self._headers()}
        if content_type:
            headers["Content-Type"] = content_type
        limit = self.limits.max_message_bytes
        try:
            conn.request(method, path, body=body, headers=headers)  # headers and a bytes body: one send
            response = conn.getresponse()
            data = response.read(limit + 1)
        except http.client.HTTPException as err:  # a malformed or cut reply: the connection is unusable
            raise ConnectionError(f"HTTP: {type(err).__name__}: {err}") from err
        if len(data) > limit:
            raise ConnectionError(f"response over {limit} bytes")
        return response.status, data

    def _http_connection(self) -> http.client.HTTPConnection:
        """The kept-alive connection, opened anew when there is none or the server closed it
        (uvicorn drops idle keep-alive connections after 5 s: a readable idle socket is a closed one)."""
        conn = self._http
        if conn is not None and conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
            conn.close()
        if conn is None:
            cls = http.client.HTTPSConnection if self.secure else http.client.HTTPConnection
            conn = self._http = cls(self.host, self.port, timeout=self.connect_timeout_s)
        if conn.sock is None:
            conn.connect()  # under connect_timeout_s; each call then sets its own
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn
