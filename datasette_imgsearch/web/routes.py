"""The plugin's URLs, spelled once: the routes Datasette serves and the links the pages make to them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasette.app import Datasette

SEGMENT = "/-/imgsearch"  # after a table's URL: its search page; after the instance's root: the status
_TABLE = r"^/(?P<database>[^/]+)/(?P<table>[^/]+)" + SEGMENT
UPLOAD_ROUTES = re.compile(_TABLE + r"(\.json)?$")  # the search page and its JSON take POSTed pictures


def routes() -> list[tuple[str, Any]]:
    """Datasette's ``register_routes``: each pattern and its view."""
    from datasette_imgsearch.web import duplicates, images, search, status

    return [
        (_TABLE + r"$", search.search_page),
        (_TABLE + r"\.json$", search.search_json),
        (_TABLE + r"/duplicates$", duplicates.duplicates_page),
        (_TABLE + r"/duplicates\.json$", duplicates.duplicates_json),
        (_TABLE + r"/thumbnail/(?P<id>[0-9]+)$", images.thumbnail_view),
        (_TABLE + r"/original/(?P<id>[0-9]+)$", images.original_view),
        ("^" + SEGMENT + r"(\.json)?$", status.status_view),
    ]


def search_url(datasette: "Datasette", database: str, table: str) -> str:
    """The search page of a table; its JSON, thumbnails and originals hang below it."""
    return datasette.urls.table(database, table) + SEGMENT
