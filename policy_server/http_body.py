"""Reading an HTTP request body under a size limit, refusing early on a declared Content-Length."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


async def read_limited_body(request: Any, limit: int, error: Callable[[int, str], Exception]) -> bytes:
    """The body of a Starlette `request`, at most `limit` bytes; `error(status, message)` is raised
    on a malformed Content-Length (400) or a body over the limit (413), declared or streamed."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise error(400, "Content-Length is not a number")
        if int(length) > limit:
            raise error(413, f"body of {length} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise error(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
