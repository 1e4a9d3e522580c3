"""A row's pictures: its stored thumbnail and its original file, served only from inside the catalogued
folder, after the permission check."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from datasette.utils.asgi import Response

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.errors import RequestError
from datasette_imgsearch.images import pixels
from datasette_imgsearch.images.scan import is_video, media_type
from datasette_imgsearch.images.video import moment_of
from datasette_imgsearch.search.parse import MAX_ROW_ID
from datasette_imgsearch.web.ranges import RangedFile
from datasette_imgsearch.web.target import Target, answers_errors, in_thread, resolve

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request


# Images ----------------------------------------------------------------------------------------
def _image_folder(target: Target) -> Path | None:
    with Catalog(target.path, immutable=target.immutable) as catalog:
        return catalog.image_folder()


async def _original_of(target: Target, row: dict[str, Any]) -> Path:
    """The file behind a row (see :func:`original_file`), with the folder read from the catalog."""
    return original_file(await in_thread(_image_folder, target), row["path"])


def original_file(folder: Path | None, relative: str) -> Path:
    """The file a row points at: its catalogued path under the catalogued folder.

    The rule is the build's: whatever the folder holds is catalogued, symlinked folders and files
    (an external drive linked in) included, so the same file is served as thumbnail and original.
    A path that is absolute or climbs out with ``..`` is never followed."""
    if folder is None:
        raise RequestError(404, "the catalog does not record its image folder")
    relative = moment_of(relative)[0]  # a video's frame: the video
    path = PurePosixPath(relative)
    if not path.parts or path.is_absolute() or ".." in path.parts or "\x00" in relative:
        raise RequestError(404, "the row's path is no longer inside the catalogued folder")
    candidate = folder.joinpath(*path.parts)
    try:
        if candidate.is_file():
            return candidate
    except (OSError, ValueError):
        pass
    raise RequestError(404, "the original file is no longer inside the catalogued folder")


def _row_id(request: "Request") -> int:
    value = int(request.url_vars["id"])
    if value > MAX_ROW_ID:
        raise RequestError(404, "no such row")
    return value


Body = Callable[[Target, dict[str, Any], dict[str, str]], Awaitable["Response | RangedFile"]]


async def _row_image(
    datasette: "Datasette", request: "Request", etag_suffix: str, body_of: Body
) -> "Response | RangedFile":
    """Serve one row's picture after the permission check, answering 304 when the browser has it;
    ``body_of`` makes the response from the row and the headers every picture carries."""
    target = await resolve(datasette, request)
    found = await datasette.databases[target.database].execute(
        f"select path, hash, thumbnail from [{TABLE}] where id = ?", [_row_id(request)]
    )
    if not found.rows:
        raise RequestError(404, "no such row")
    row = dict(found.rows[0])
    etag = f'"{row["hash"]}{etag_suffix}"'
    if request.headers.get("if-none-match") == etag:
        return Response("", status=304, headers={"ETag": etag})
    headers = {"X-Content-Type-Options": "nosniff", "ETag": etag, "Cache-Control": "private, max-age=3600"}
    return await body_of(target, row, headers)


@answers_errors(as_json=False)
async def thumbnail_view(datasette: "Datasette", request: "Request") -> "Response | RangedFile":
    """A row's stored thumbnail; made from the original when the catalog was built without thumbnails."""

    async def body(target: Target, row: dict[str, Any], headers: dict[str, str]) -> Response:
        data = row["thumbnail"]
        if data is None:
            if is_video(moment_of(row["path"])[0]):
                raise RequestError(404, "no thumbnail: the catalog was built with --no-thumbnails, and a server "
                                        "decodes no videos")
            file = await _original_of(target, row)
            data = await in_thread(_thumbnail_from_file, file, target.settings.max_megapixels)
        return Response(data, content_type="image/jpeg", headers=headers)

    return await _row_image(datasette, request, "-thumbnail", body)


def _thumbnail_from_file(file: Path, max_megapixels: float) -> bytes:
    data = pixels.read_bytes(file, pixels.max_file_bytes(max_megapixels))
    decoded = pixels.decode(data, max_megapixels, shrink_to=(1, pixels.DEFAULT_THUMBNAIL_SIZE))
    return pixels.thumbnail(decoded.image)


@answers_errors(as_json=False)
async def original_view(datasette: "Datasette", request: "Request") -> "Response | RangedFile":
    """The original file, served only from inside the catalogued folder, streamed from disk in chunks
    (never held whole in memory), with Range requests so a browser seeks in a video; a frame's original
    is its video."""

    async def body(target: Target, row: dict[str, Any], headers: dict[str, str]) -> RangedFile:
        file = await _original_of(target, row)
        if not os.access(file, os.R_OK):
            raise RequestError(404, "the original file cannot be read")
        return RangedFile(file, media_type(file.name), headers, request.headers.get("range"))

    return await _row_image(datasette, request, "", body)
