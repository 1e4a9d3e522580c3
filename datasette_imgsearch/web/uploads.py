"""Reading an uploaded reference image from a multipart POST, in memory, under a size cap, off the event loop.

Neither Datasette line caps an upload for us (0.65 has no form parser at all), so the body is read
here chunk by chunk and refused as soon as it passes the cap. python-multipart then parses it in a
worker thread, so a hostile form can never stall the pages other people are loading, and a form with
more parts than the search form has is refused as soon as the extra part begins. Every part is kept
in memory: an upload is never written to disk.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from python_multipart.multipart import FormParser, parse_options_header

from datasette_imgsearch.errors import RequestError

if TYPE_CHECKING:
    from datasette.utils.asgi import Request
MULTIPART_OVERHEAD = 64 * 1024  # room for the boundaries, headers and the other small fields
MAX_PARTS = 16  # the search form has five fields
MAX_BOUNDARY_LENGTH = 70  # RFC 2046


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


class _TooManyParts(Exception):
    pass


def _too_large(limit: int) -> RequestError:
    return RequestError(413, f"the upload is larger than the {limit / 1e6:g} MB limit; send a smaller image")


async def read_body(request: "Request", limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit - MULTIPART_OVERHEAD)
    body = bytearray()
    while True:
        message = await request.receive()
        body.extend(message.get("body", b""))
        if len(body) > limit:
            raise _too_large(limit - MULTIPART_OVERHEAD)
        if not message.get("more_body", False):
            return bytes(body)


async def read_upload(request: "Request", max_file_bytes: int) -> Upload:
    """Parse a ``multipart/form-data`` POST into its text fields and in-memory files."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise RequestError(400, "send the image as multipart/form-data, in a field named 'image'")
    boundary = options[b"boundary"]
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise RequestError(400, f"the multipart boundary is longer than {MAX_BOUNDARY_LENGTH} characters")
    body = await read_body(request, max_file_bytes + MULTIPART_OVERHEAD)
    upload = await asyncio.get_running_loop().run_in_executor(None, parse_multipart, body, boundary)
    for data in upload.files.values():
        if len(data) > max_file_bytes:
            raise _too_large(max_file_bytes)
    return upload


def parse_multipart(body: bytes, boundary: bytes) -> Upload:
    """Parse a multipart body (in a worker thread); refuse forms with more than :data:`MAX_PARTS` parts."""
    upload = Upload()
    parts = 0

    def count_part() -> None:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS:
            raise _TooManyParts

    def on_field(item: Any) -> None:
        count_part()
        if item.field_name:
            upload.fields[item.field_name.decode("utf-8", "replace")] = (item.value or b"").decode("utf-8", "replace")

    def on_file(item: Any) -> None:
        count_part()
        if item.field_name:
            item.file_object.seek(0)
            upload.files[item.field_name.decode("utf-8", "replace")] = item.file_object.read()

    try:
        parser = FormParser(
            "multipart/form-data", on_field, on_file, boundary=boundary, config={"MAX_MEMORY_FILE_SIZE": float("inf")},
        )
        # Fed in slices, so a form with too many parts is stopped near where its extra part begins.
        for start in range(0, len(body), 64 * 1024):
            parser.write(body[start:start + 64 * 1024])
        parser.finalize()
    except _TooManyParts:
        raise RequestError(400, f"the form has more than {MAX_PARTS} parts; the search form sends a handful") from None
    except Exception as error:
        raise RequestError(400, f"the upload could not be parsed as multipart/form-data: {error}") from None
    return upload
