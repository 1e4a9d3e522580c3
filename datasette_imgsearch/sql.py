"""The SQL functions ``imgsearch()`` and ``imgsearch_score()``.

They take only a query string (and the row's own embedding): no file path ever reaches the
filesystem from SQL.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Callable

from .catalog import CatalogError
from .embed import ModelError
from .query import QueryError, Searcher, check_k, searcher_for
from .settings import Settings
from .sqlite_functions import create_function

DEFAULT_K = 10
EXPECTED_ERRORS = (QueryError, ModelError, CatalogError)
SCORER_RECHECK_SECONDS = 1.0


def register_functions(conn: sqlite3.Connection, db_path: str, settings: Settings) -> None:
    """Add imgsearch(query [, k [, min_score]]) and imgsearch_score(embedding, query) to a connection."""

    def searcher() -> Searcher:
        found = searcher_for(db_path, settings.model, settings.text_model, settings.device)
        found.wait_until_loaded(settings.sql_wait_seconds)
        return found

    def imgsearch(query: Any, k: Any = DEFAULT_K, min_score: Any = None) -> str:
        count = check_k(k, settings.max_k)
        if min_score is not None and not isinstance(min_score, (int, float)):
            raise QueryError(f"min_score must be a number, not {min_score!r}")
        hits = searcher().search(query, count, None if min_score is None else float(min_score))
        return json.dumps([hit.as_dict() for hit in hits])

    # imgsearch_score runs once per row, so it keeps the scorer of the last query it saw and looks
    # again (at the catalog, for row: terms) only once a second.
    last: dict[str, Any] = {"query": None, "score": None, "checked": 0.0}

    def imgsearch_score(embedding: Any, query: Any) -> float | None:
        if embedding is None:
            return None
        if not isinstance(embedding, bytes):
            raise QueryError("imgsearch_score() takes the embedding BLOB column first, as in imgsearch_score(embedding, 'a dog')")
        now = time.monotonic()
        if query != last["query"] or now - last["checked"] > SCORER_RECHECK_SECONDS:
            last.update(score=searcher().scorer(query), query=query, checked=now)
        score: Callable[[bytes], float] = last["score"]
        return score(embedding)

    for arguments in (1, 2, 3):
        create_function(conn, db_path, "imgsearch", arguments, imgsearch, EXPECTED_ERRORS)
    # Python's own registration is several times faster per call than the one that carries error
    # messages, and this function is called for every row; its errors read "user-defined function
    # raised exception" (the README says how to see the reason).
    conn.create_function("imgsearch_score", 2, imgsearch_score)
