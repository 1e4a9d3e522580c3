"""The SQL functions ``imgsearch()`` and ``imgsearch_score()``.

They take only a query string (and the row's own embedding): no file path ever reaches the
filesystem from SQL.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Callable

from datasette_imgsearch.errors import ImgsearchError, QueryError
from datasette_imgsearch.search.arguments import check_candidates, check_k, check_min_score
from datasette_imgsearch.search.registry import searcher_for
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.settings import Settings
from datasette_imgsearch.sql.binding import create_function

DEFAULT_K = 10
SCORER_RECHECK_SECONDS = 1.0


def register_functions(conn: Any, db_path: str, settings: Settings, immutable: bool = False) -> None:
    """Add imgsearch(query [, k [, min_score [, candidates]]]) and imgsearch_score(embedding, query) to a connection."""

    # imgsearch_score runs once per row, so it keeps the scorer of the last query it saw and looks
    # again (at the catalog, for row: terms) only once a second.
    current_scorer: dict[str, Any] = {"query": None, "score": None, "checked": 0.0}

    def imgsearch_score(embedding: Any, query: Any) -> float | None:
        if embedding is None:
            return None
        if not isinstance(embedding, bytes):
            raise QueryError("imgsearch_score() takes the embedding BLOB column first, as in imgsearch_score(embedding, 'a dog')")
        now = time.monotonic()
        if query != current_scorer["query"] or now - current_scorer["checked"] > SCORER_RECHECK_SECONDS:
            current_scorer.update(score=_searcher(db_path, settings, immutable).scorer(query), query=query, checked=now)
        score: Callable[[bytes], float] = current_scorer["score"]
        return score(embedding)

    create_function(conn, "imgsearch", -1, _imgsearch_for(db_path, settings, immutable), (ImgsearchError,))
    # Python's own registration is several times faster per call than the one that carries error
    # messages, and this function is called for every row; its errors read "user-defined function
    # raised exception" (the README says how to see the reason).
    conn.create_function("imgsearch_score", 2, imgsearch_score)


def _searcher(db_path: str, settings: Settings, immutable: bool) -> Searcher:
    found = searcher_for(db_path, settings.models, immutable)
    found.wait_until_loaded(settings.sql_wait_seconds)
    return found


@functools.lru_cache(maxsize=None)
def _imgsearch_for(db_path: str, settings: Settings, immutable: bool) -> Callable[..., str]:
    """imgsearch() for one catalog: one function shared by all its connections (each registration
    through SQLite's C API keeps its callback for good, so it must not be one per connection)."""

    def imgsearch(*arguments: Any) -> str:
        if not 1 <= len(arguments) <= 4:
            raise QueryError(f"takes 1 to 4 arguments (query, k, min_score, candidates), not {len(arguments)}")
        query, k, min_score, candidates = list(arguments) + [None, DEFAULT_K, None, None][len(arguments):]
        count = check_k(DEFAULT_K if k is None else k, settings.max_k)
        hits = _searcher(db_path, settings, immutable).search(
            query, count, check_min_score(min_score), check_candidates(candidates)
        )
        return json.dumps([hit.as_dict() for hit in hits])

    return imgsearch
