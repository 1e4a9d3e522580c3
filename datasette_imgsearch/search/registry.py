"""Searchers kept for reuse: one per catalog, model choice and way of opening, so the SQL functions, the
pages and the JSON of one server share its models, vectors and caches."""

from __future__ import annotations

import threading
from pathlib import Path

from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search.searcher import Searcher

SearcherKey = tuple[str, ModelChoice, bool]


class Searchers:
    """The searchers made so far, by (catalog path, model choice, immutable)."""

    def __init__(self) -> None:
        self._made: dict[SearcherKey, Searcher] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(db_path: str | Path, choice: ModelChoice, immutable: bool) -> SearcherKey:
        return str(Path(db_path).resolve()), choice, immutable

    def get(self, db_path: str | Path, choice: ModelChoice = ModelChoice(), immutable: bool = False) -> Searcher:
        """The searcher for a catalog, made at the first call."""
        key = self.key(db_path, choice, immutable)
        with self._lock:
            if key not in self._made:
                self._made[key] = Searcher(db_path, choice, immutable)
            return self._made[key]

    def existing(self, db_path: str | Path, choice: ModelChoice = ModelChoice(), immutable: bool = False) -> Searcher | None:
        """The searcher for a catalog if one was made; never makes one."""
        with self._lock:
            return self._made.get(self.key(db_path, choice, immutable))


SEARCHERS = Searchers()  # this process's
searcher_for = SEARCHERS.get
existing_searcher = SEARCHERS.existing
