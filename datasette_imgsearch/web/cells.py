"""Cells in Datasette's own table, row and query pages: thumbnails as pictures, paths with their picture
and links."""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.web.routes import search_url

if TYPE_CHECKING:
    from datasette.app import Datasette


# Cells in Datasette's own pages ---------------------------------------------------------------------
def render_cell(value: Any, column: str, table: str | None, database: str, datasette: "Datasette", row: Any) -> Markup | None:
    """Photos as a photographer reads a table: the ``path`` cell leads with the picture and stays on one
    line, with links to the original and to "more like this"; the ``thumbnail`` and ``embedding`` BLOBs are
    short labels (a page never carries their bytes, as ``data:`` URLs or otherwise); the ``thumbnail_url``
    links of the search's SQL page are pictures; ``text_lines`` (the boxes of the words read in a picture)
    is a count with the lines and their confidence on hover, not a wall of JSON. Called for every cell of
    every page, so any other column returns at once."""
    if column not in ("thumbnail", "path", "thumbnail_url", "embedding", "text_lines"):
        return None
    if column == "text_lines":
        return _text_lines(value) if table == TABLE else None
    base = search_url(datasette, database, TABLE)
    row_id = _row_id_of(row)
    if column == "embedding" and isinstance(value, bytes):
        return Markup(f'<span class="imgsearch-vector" title="the CLIP embedding">{len(value) // 4}-d vector</span>')
    if column == "thumbnail" and isinstance(value, bytes):
        label = f"JPEG, {max(1, round(len(value) / 1000))} KB"
        if table == TABLE and row_id is not None:
            return Markup(f'<a href="{escape(base)}/thumbnail/{row_id}">{label}</a>')
        return Markup(escape(label))
    if column == "path" and table == TABLE and isinstance(value, str) and row_id is not None:
        more = f"{base}?{urllib.parse.urlencode({'q': f'row:{row_id}'})}"
        return Markup(
            f'<span class="imgsearch-path" style="white-space: nowrap">'
            f'<img src="{escape(base)}/thumbnail/{row_id}" alt="" loading="lazy" width="48" height="48" '
            f'style="object-fit: cover; vertical-align: middle; margin-right: 0.4em">'
            f'<a href="{escape(base)}/original/{row_id}">{escape(value)}</a> · <a href="{escape(more)}">more like this</a>'
            f"</span>"
        )
    if column == "thumbnail_url" and table is None and isinstance(value, str) and value.startswith(base + "/thumbnail/"):
        return _picture(value)
    return None


def _text_lines(value: Any) -> Markup | None:
    try:
        lines = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if not isinstance(lines, list):
        return None
    if not lines:
        return Markup('<span class="imgsearch-lines">no words read</span>')
    said = "\n".join(f"{line.get('text', '')} ({_number(line.get('confidence')):.2f})"
                     for line in lines if isinstance(line, dict))
    count = f"{len(lines)} line{'s' * (len(lines) != 1)} read"
    return Markup(f'<span class="imgsearch-lines" title="{escape(said)}">{count}</span>')


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def _picture(source: str) -> Markup:
    return Markup(f'<img src="{escape(source)}" alt="thumbnail" loading="lazy" style="max-width: 128px; max-height: 128px">')


def _row_id_of(row: Any) -> int | None:
    try:
        value = row["id"] if row is not None else None
    except (KeyError, IndexError):
        return None
    return int(value) if isinstance(value, int) else None
