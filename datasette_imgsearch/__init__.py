"""datasette-imgsearch: semantic image search (CLIP + FAISS) in a SQLite catalog, as a Datasette plugin.

The hook functions here are thin: each hands over to plain library code in this package.
"""

from __future__ import annotations

import base64
import sqlite3
from typing import Any

from datasette import hookimpl
from markupsafe import Markup, escape

from . import csrf, web
from .catalog import REMOVED_TABLE, TABLE, has_embeddings, is_catalog
from .query import searcher_for
from .settings import Settings
from .sql import register_functions

_ROUTE = r"^/(?P<database>[^/]+)/(?P<table>[^/]+)/-/imgsearch"


def _catalog_path(datasette: Any, database: str) -> str | None:
    db = datasette.databases.get(database)
    return db.path if db is not None and getattr(db, "path", None) and not db.is_memory else None


@hookimpl
def prepare_connection(conn: sqlite3.Connection, database: str, datasette: Any) -> None:
    path = _catalog_path(datasette, database)
    if path and is_catalog(conn):
        register_functions(conn, path, Settings.for_database(datasette, database))


@hookimpl
def startup(datasette: Any) -> None:
    """Start loading each catalog's model and vectors in the background, so the first query is fast."""
    for name in list(datasette.databases):
        path = _catalog_path(datasette, name)
        if path and has_embeddings(path):
            settings = Settings.for_database(datasette, name)
            searcher_for(path, settings.model, settings.text_model, settings.device).start_loading()


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    return [
        (_ROUTE + r"$", web.search_page),
        (_ROUTE + r"\.json$", web.search_json),
        (_ROUTE + r"/thumbnail/(?P<id>\d+)$", web.thumbnail_view),
        (_ROUTE + r"/original/(?P<id>\d+)$", web.original_view),
    ]


@hookimpl
def table_actions(datasette: Any, database: str, table: str) -> list[dict[str, str]] | None:
    if table != TABLE or not _catalog_path(datasette, database):
        return None
    return [{
        "href": web.image_routes_base(datasette, database, table),
        "label": "Search images by text or example",
        "description": "Semantic search with CLIP: type a description or upload a reference image",
    }]


@hookimpl
def render_cell(value: Any, column: str, table: str | None, database: str, datasette: Any, row: Any) -> Markup | None:
    """Show thumbnails as pictures and link paths to the original files."""
    if table not in (TABLE, REMOVED_TABLE, None) or not _catalog_path(datasette, database):
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
