"""`AsyncPolicyClient`: the policy client on asyncio (WebSocket through `websockets`, HTTP through httpx);
see policy_server/client.py for retries and request ids."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from policy_server import codec
from policy_server.client_base import (
    MSGPACK,
    ActReply,
    ClientBase,
    PolicyClientError,
    PolicyUnavailableError,
    as_server_error,
    new_request_id,
    retryable,
)


class AsyncPolicyClient(ClientBase):
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
                  wrist_image: Any = None, timeout_s: float | None = None) -> ActReply:
        rid = request_id if request_id is not None else new_request_id()
        payload = self.encode_request(image, instruction, state, rid, wrist_image)
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
                err = as_server_error(err)
                if not retryable(err):
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
