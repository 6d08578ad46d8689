"""Who may talk to the server: loopback by default, an API key for anything else.

The key travels as `Authorization: Api-Key <key>` (openpi's client), `Authorization: Bearer <key>`,
`X-API-Key: <key>`, or `?api_key=<key>`. Once a key is set it is checked on every endpoint but
`/healthz`, over HTTP and at the WebSocket handshake (refused handshakes get a 401 when the server
supports denial responses, else a 403).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

API_KEY_ENV = "LAPA_API_KEY"
OPEN_PATHS = frozenset({"/healthz"})


class InsecureBindError(ValueError):
    """Binding a non-loopback address without an API key."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def resolve_api_key(cli_key: str | None) -> str | None:
    key = cli_key if cli_key is not None else os.environ.get(API_KEY_ENV)
    return key or None


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without a key."""
    if not is_loopback(host) and not api_key:
        raise InsecureBindError(
            f"binding {host!r} exposes the robot policy beyond this machine: give an API key with --api-key "
            f"or ${API_KEY_ENV}, or bind 127.0.0.1")


def key_from_scope(scope: dict[str, Any]) -> str | None:
    """The API key an HTTP or WebSocket request carries, if any."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() in ("api-key", "bearer") and token.strip():
                return token.strip()
        elif name == b"x-api-key":
            return value.decode("latin-1").strip()
    query = scope.get("query_string", b"")
    if b"api_key=" in query:
        values = parse_qs(query.decode("latin-1")).get("api_key")
        if values:
            return values[0]
    return None


class ApiKeyMiddleware:
    """Pure ASGI (a few microseconds): refuses requests without the right key before any route runs."""

    def __init__(self, app: Callable, api_key: str | None, on_failure: Callable[[], None] | None = None,
                 open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.on_failure = on_failure
        self.open_paths = open_paths  # served without a key (they must carry no data)

    def _allowed(self, scope: dict[str, Any]) -> bool:
        if self.api_key is None or scope.get("path") in self.open_paths:
            return True
        key = key_from_scope(scope)
        return key is not None and hmac.compare_digest(key.encode(), self.api_key)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if self.on_failure:
            self.on_failure()
        body = json.dumps({"error": "missing or wrong API key", "status": 401}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"www-authenticate", b"Api-Key")]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in scope.get("extensions", {}):
            await receive()  # websocket.connect
            await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await receive()
            await send({"type": "websocket.close", "code": 1008})
