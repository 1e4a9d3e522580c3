"""datasette-imgsearch: semantic image search (CLIP + FAISS) in a SQLite catalog, as a Datasette plugin.

The hook functions here are thin: each hands over to plain library code in this package.
"""

from __future__ import annotations

import base64
import weakref
from typing import Any

from datasette import hookimpl
from markupsafe import Markup, escape

from . import csrf, web
from .catalog import REMOVED_TABLE, TABLE, has_embeddings, is_catalog
from .query import searcher_for
from .settings import Settings
from .sql import register_functions

_ROUTE = r"^/(?P<database>[^/]+)/(?P<table>[^/]+)/-/imgsearch"
# Per Datasette instance, the databases found to hold a catalog when their first connection opened:
# the table action and the cell links appear only there, never on any other table called images.
_catalogs: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _catalog_file(datasette: Any, database: str) -> tuple[str, bool] | None:
    """(path, immutable) of a file-backed database; None for in-memory ones."""
    db = datasette.databases.get(database)
    if db is None or not getattr(db, "path", None) or db.is_memory:
        return None
    return db.path, not db.is_mutable


def _is_catalog(datasette: Any, database: str) -> bool:
    return database in _catalogs.get(datasette, ())


@hookimpl
def prepare_connection(conn: Any, database: str, datasette: Any) -> None:
    found = _catalog_file(datasette, database)
    if found and is_catalog(conn):
        _catalogs.setdefault(datasette, set()).add(database)
        path, immutable = found
        register_functions(conn, path, Settings.for_database(datasette, database), immutable)


@hookimpl
def startup(datasette: Any) -> None:
    """Start loading each catalog's model and vectors in the background, so the first query is fast."""
    for name in list(datasette.databases):
        found = _catalog_file(datasette, name)
        if found and has_embeddings(*found):
            settings = Settings.for_database(datasette, name)
            searcher_for(found[0], settings.model, settings.text_model, settings.device, found[1]).start_loading()


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return [
        (_ROUTE + r"$", web.search_page),
        (_ROUTE + r"\.json$", web.search_json),
        (_ROUTE + r"/thumbnail/(?P<id>\d+)$", web.thumbnail_view),
        (_ROUTE + r"/original/(?P<id>\d+)$", web.original_view),
        (r"^/-/imgsearch(\.json)?$", web.status_view),
    ]


@hookimpl
def table_actions(datasette: Any, database: str, table: str) -> list[dict[str, str]] | None:
    if table != TABLE or not _is_catalog(datasette, database):
        return None
    return [{
        "href": web.image_routes_base(datasette, database, table),
        "label": "Search images by text or example",
        "description": "Semantic search with CLIP: type a description or upload a reference image",
    }]


@hookimpl
def render_cell(value: Any, column: str, table: str | None, database: str, datasette: Any, row: Any) -> Markup | None:
    """Show thumbnails as pictures and link paths to the original files."""
    if table not in (TABLE, REMOVED_TABLE, None) or not _is_catalog(datasette, database):
        return None
    if column == "thumbnail" and isinstance(value, bytes) and value[:2] == b"\xff\xd8":
        source = f"data:image/jpeg;base64,{base64.b64encode(value).decode()}"
        if table == TABLE and row is not None and _has(row, "id"):
            source = f"{web.image_routes_base(datasette, database, table)}/thumbnail/{int(row['id'])}"
        return Markup(f'<img src="{escape(source)}" alt="thumbnail" loading="lazy" style="max-width: 128px; max-height: 128px">')
    if column == "path" and table == TABLE and isinstance(value, str) and row is not None and _has(row, "id"):
        href = f"{web.image_routes_base(datasette, database, table)}/original/{int(row['id'])}"
        return Markup(f'<a href="{escape(href)}">{escape(value)}</a>')
    return None


def _has(row: Any, key: str) -> bool:
    try:
        return row[key] is not None
    except (KeyError, IndexError):
        return False


@hookimpl
def skip_csrf(scope: dict[str, Any]) -> bool | None:
    return True if csrf.skip_asgi_csrf(scope) else None


@hookimpl
def register_commands(cli: Any) -> None:
    from .cli import cli as imgsearch_cli

    cli.add_command(imgsearch_cli, name="imgsearch")
