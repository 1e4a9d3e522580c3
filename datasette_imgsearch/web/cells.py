"""Cells in Datasette's own table, row and query pages: thumbnails as pictures, paths with their picture
and links."""

from __future__ import annotations

import base64
import urllib.parse
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.web.routes import search_url

if TYPE_CHECKING:
    from datasette.app import Datasette
    pass


# Cells in Datasette's own pages ---------------------------------------------------------------------
def render_cell(value: Any, column: str, table: str | None, database: str, datasette: "Datasette", row: Any) -> Markup | None:
    """Thumbnails as pictures (by their route where the row is known, so pages stay small); a path with
    its picture, a link to the original and "more like this", on table and row pages; and the short
    ``thumbnail_url`` links of the search's SQL page as pictures. Called for every cell of every page,
    so any other column returns at once."""
    if column not in ("thumbnail", "path", "thumbnail_url"):
        return None
    base = search_url(datasette, database, TABLE)
    row_id = _row_id_of(row)
    if column == "thumbnail" and isinstance(value, bytes) and value[:2] == b"\xff\xd8":
        if table == TABLE and row_id is not None:
            return _picture(f"{base}/thumbnail/{row_id}")
        return _picture(f"data:image/jpeg;base64,{base64.b64encode(value).decode()}")
    if column == "path" and table == TABLE and isinstance(value, str) and row_id is not None:
        more = f"{base}?{urllib.parse.urlencode({'q': f'row:{row_id}'})}"
        return Markup(
            f'<img src="{escape(base)}/thumbnail/{row_id}" alt="" loading="lazy" '
            f'style="max-width: 64px; max-height: 64px; vertical-align: middle; margin-right: 0.4em">'
            f'<a href="{escape(base)}/original/{row_id}">{escape(value)}</a> · <a href="{escape(more)}">more like this</a>'
        )
    if column == "thumbnail_url" and table is None and isinstance(value, str) and value.startswith(base + "/thumbnail/"):
        return _picture(value)
    return None


def _picture(source: str) -> Markup:
    return Markup(f'<img src="{escape(source)}" alt="thumbnail" loading="lazy" style="max-width: 128px; max-height: 128px">')


def _row_id_of(row: Any) -> int | None:
    try:
        value = row["id"] if row is not None else None
    except (KeyError, IndexError):
        return None
    return int(value) if isinstance(value, int) else None
