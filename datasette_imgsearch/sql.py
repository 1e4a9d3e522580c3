"""The SQL functions ``imgsearch()`` and ``imgsearch_score()``.

They take only a query string (and the row's own embedding): no file path ever reaches the
filesystem from SQL.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .catalog import CatalogError
from .embed import ModelError
from .query import QueryError, check_k, searcher_for
from .settings import Settings
from .sqlite_functions import create_function

DEFAULT_K = 10
EXPECTED_ERRORS = (QueryError, ModelError, CatalogError)


def register_functions(conn: sqlite3.Connection, db_path: str, settings: Settings) -> None:
    """Add imgsearch(query [, k [, min_score]]) and imgsearch_score(embedding, query) to a connection."""

    def searcher():  # looked up per call: cheap, and it follows a catalog replaced on disk
        found = searcher_for(db_path, settings.model, settings.text_model, settings.device)
        found.wait_until_loaded(settings.sql_wait_seconds)
        return found

    def imgsearch(query: Any, k: Any = DEFAULT_K, min_score: Any = None) -> str:
        count = check_k(k, settings.max_k)
        if min_score is not None and not isinstance(min_score, (int, float)):
            raise QueryError(f"min_score must be a number, not {min_score!r}")
        hits = searcher().search(query, count, None if min_score is None else float(min_score))
        return json.dumps([hit.as_dict() for hit in hits])

    def imgsearch_score(embedding: Any, query: Any) -> float | None:
        if embedding is None:
            return None
        if not isinstance(embedding, bytes):
            raise QueryError("imgsearch_score() takes the embedding BLOB column first, as in imgsearch_score(embedding, 'a dog')")
        return searcher().scorer(query)(embedding)

    for arguments in (1, 2, 3):
        create_function(conn, db_path, "imgsearch", arguments, imgsearch, EXPECTED_ERRORS)
    create_function(conn, db_path, "imgsearch_score", 2, imgsearch_score, EXPECTED_ERRORS)
