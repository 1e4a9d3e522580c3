"""Serving a file with HTTP Range requests (RFC 9110, one range), so a browser can seek in a video and
play it from a moment (``#t=12.5``) without downloading what comes before."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any, Awaitable, Callable

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

Send = Callable[[dict[str, Any]], Awaitable[None]]


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """The (first, last) bytes a ``Range`` header asks of a file of ``size`` bytes; None for the whole file
    (no header, or one this does not serve, such as several ranges, which the RFC lets a server ignore);
    False when it cannot be satisfied (416)."""
    found = _RANGE.match((header or "").strip())
    if not found or found.group(1) == found.group(2) == "":
        return None
    start, end = found.group(1), found.group(2)
    if start == "":  # the last N bytes
        length = int(end)
        return (max(0, size - length), size - 1) if length and size else False
    first = int(start)
    last = min(int(end), size - 1) if end else size - 1
    if first >= size or last < first:
        return False
    return first, last


class RangedFile:
    """A file response that answers ``Range: bytes=...`` with 206 and the slice, and advertises
    ``Accept-Ranges`` on every answer; read in a thread a chunk at a time (never whole in memory)."""

    def __init__(self, path: Path, content_type: str, headers: dict[str, str], range_header: str | None) -> None:
        self.path = path
        self.content_type = content_type
        self.headers = {**headers, "Accept-Ranges": "bytes"}
        self.range_header = range_header

    async def asgi_send(self, send: Send) -> None:
        size = os.stat(self.path).st_size
        wanted = byte_range(self.range_header, size)
        if wanted is False:
            await _start(send, 416, {**self.headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"}, "text/plain")
            await send({"type": "http.response.body", "body": b""})
            return
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        headers = {**self.headers, "Content-Length": str(max(0, last - first + 1))}
        if isinstance(wanted, tuple):
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        await _start(send, 206 if isinstance(wanted, tuple) else 200, headers, self.content_type)
        ended = False
        with open(self.path, "rb") as file:
            file.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = await asyncio.to_thread(file.read, min(CHUNK, left))
                if not chunk:  # the file shrank while it was sent
                    break
                left -= len(chunk)
                ended = left <= 0
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
        if not ended:
            await send({"type": "http.response.body", "body": b""})


async def _start(send: Send, status: int, headers: dict[str, str], content_type: str) -> None:
    encoded = [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [*encoded, (b"content-type", content_type.encode("latin-1"))]})
