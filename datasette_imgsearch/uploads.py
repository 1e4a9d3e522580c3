"""Reading an uploaded reference image from a multipart POST, in memory and under a size cap.

Neither Datasette line caps an upload for us (0.65 has no form parser at all), so the body is read
here chunk by chunk and refused as soon as it passes the cap; python-multipart then parses it with
every part kept in memory, so an upload is never written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import FormParser, parse_options_header

MULTIPART_OVERHEAD = 64 * 1024  # room for the boundaries, headers and the other small fields


class RequestError(Exception):
    """A request to refuse, with the HTTP status and a message for the person who sent it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def _too_large(limit: int) -> RequestError:
    return RequestError(413, f"the upload is larger than the {limit / 1e6:g} MB limit; send a smaller image")


async def read_body(request: Any, limit: int) -> bytes:
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


async def read_upload(request: Any, max_file_bytes: int) -> Upload:
    """Parse a ``multipart/form-data`` POST into its text fields and in-memory files."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise RequestError(400, "send the image as multipart/form-data, in a field named 'image'")
    body = await read_body(request, max_file_bytes + MULTIPART_OVERHEAD)
    upload = Upload()

    def on_field(item: Any) -> None:
        if item.field_name:
            upload.fields[item.field_name.decode("utf-8", "replace")] = (item.value or b"").decode("utf-8", "replace")

    def on_file(item: Any) -> None:
        if item.field_name:
            item.file_object.seek(0)
            upload.files[item.field_name.decode("utf-8", "replace")] = item.file_object.read()

    parser = FormParser(
        "multipart/form-data", on_field, on_file, boundary=options[b"boundary"],
        config={"MAX_MEMORY_FILE_SIZE": float("inf")},
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:
        raise RequestError(400, f"the upload could not be parsed as multipart/form-data: {error}") from None
    for data in upload.files.values():
        if len(data) > max_file_bytes:
            raise _too_large(max_file_bytes)
    return upload
