"""A catalog's vectors held in memory and kept in step with the file on disk, and exact top-k over them.

The store reads the sibling FAISS index when that is fresh and the stored embeddings when it is stale
or missing, so it never returns rows that are not there. Whatever changes on disk (a build commits, the
index is rewritten, a re-embed switches models) changes the *fingerprint*, and the next query reloads.
Connections are read-only (``immutable`` for files Datasette serves with ``-i``): the store never
writes, and never creates a file beside the catalog.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batcher import Batcher
from .catalog import Catalog, index_path
from .errors import CatalogError
from .index import flat_vectors, index_state, read_index
from .strength import STRONG


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    strength: float | None = None  # see strength.py; None for picture queries

    @property
    def strong(self) -> bool | None:
        return None if self.strength is None else self.strength >= STRONG

    def as_dict(self) -> dict[str, Any]:
        found = {"id": self.id, "score": round(self.score, 6)}
        if self.strength is not None:
            found["strength"] = round(self.strength, 3)
        return found


def top_k(ids: np.ndarray, scores: np.ndarray, k: int, exclude: set[int], min_score: float | None) -> list[Hit]:
    """The ``k`` best (id, score) pairs, best first, skipping ``exclude`` and scores under ``min_score``."""
    want = min(len(ids), k + len(exclude))
    if want == 0:
        return []
    if want < len(ids):
        cutoff = scores[np.argpartition(-scores, want - 1)[want - 1]]
        candidates = np.flatnonzero(scores >= cutoff)  # every row tied at the cut-off too
    else:
        candidates = np.arange(len(ids))
    # Ties break on the lower id, so every door onto the same query lists the same rows.
    order = candidates[np.lexsort((ids[candidates], -scores[candidates]))]
    hits = []
    for position in order:
        id_, score = int(ids[position]), float(scores[position])
        if id_ in exclude:
            continue
        if min_score is not None and score < min_score:
            break
        hits.append(Hit(id_, score))
        if len(hits) == k:
            break
    return hits


def exact_scores(matrix: Any, vectors: list[np.ndarray]) -> np.ndarray:
    """One row of scores per query vector against ``matrix`` (numpy, or a torch tensor), on torch's threads.

    numpy's BLAS threads would spin against the model's threads on the same cores and slow the text
    encoder down by half. Scoring several queries at once costs little more than one, since reading
    the matrix from memory is the work."""
    import torch

    table = matrix if isinstance(matrix, torch.Tensor) else torch.from_numpy(matrix)
    queries = torch.from_numpy(np.ascontiguousarray(np.stack(vectors), dtype=np.float32)).to(table.dtype)
    if len(vectors) == 1:
        return torch.mv(table, queries[0]).float().numpy()[None]
    return torch.mm(queries, table.T).float().numpy()


# From this many rows, exact search reads a bfloat16 copy of the matrix first (half the memory
# traffic) and re-scores in float32 every row that could still be in the top k. Rounding both unit
# vectors to bfloat16 moves their dot product by at most 2**-8 (about 0.004); the margin is 2.5 times that.
FIRST_PASS_ROWS = 250_000
# Filtered search gathers the candidates' vectors when they are under 1/GATHER_FRACTION of the rows,
# and otherwise scores every row and picks theirs (a full pass costs about as much as gathering a quarter).
GATHER_FRACTION = 4
FIRST_PASS_MARGIN = 0.01
ID_TABLE_SLACK = 4
BEST_SCORE_SLICE = 65_536


def rescored_top_k(
    ids: np.ndarray, matrix: np.ndarray, vector: np.ndarray, rough: np.ndarray, k: int, exclude: set[int],
    min_score: float | None,
) -> list[Hit]:
    """The exact top k, given rough scores that are within ``FIRST_PASS_MARGIN`` of the exact ones."""
    want = min(len(ids), k + len(exclude))
    if want == 0:
        return []
    cutoff = np.partition(rough, len(rough) - want)[len(rough) - want] - 2 * FIRST_PASS_MARGIN
    candidates = np.flatnonzero(rough >= cutoff)
    return top_k(ids[candidates], matrix[candidates] @ vector, k, exclude, min_score)


@dataclass
class Loaded:
    """One consistent load of a catalog: the model facts and the vectors they belong to."""

    fingerprint: tuple[Any, ...]
    model: str
    text_model: str | None
    dimension: int
    multilingual_model: str | None = None  # as recorded; languages.multilingual_model resolves the default
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    matrix: np.ndarray | None = None
    first_pass: Any = None  # a bfloat16 torch copy of ``matrix`` for large catalogs
    faiss: Any = None
    vectors_from: str = "not loaded"  # the index file, or the stored embeddings and why
    row_of_id: np.ndarray | None = None  # id -> position in ``ids`` (-1: none), for ids dense enough to index

    @property
    def size(self) -> int:
        return int(self.faiss.ntotal) if self.faiss is not None else len(self.ids)


class VectorStore:
    """The vectors of one catalog, reloaded when the catalog or its index changes."""

    def __init__(self, db_path: str | Path, immutable: bool = False) -> None:
        self.db_path = Path(db_path)
        self.immutable = immutable
        self.first_pass_rows = FIRST_PASS_ROWS
        self._lock = threading.Lock()
        self._local = threading.local()
        self._loaded: Loaded | None = None
        # Concurrent exact searches share one pass over the matrix.
        self._exact_batcher = Batcher(_score_batch)

    def catalog(self) -> Catalog:
        """This thread's read-only connection to the catalog."""
        catalog = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = Catalog(self.db_path, immutable=self.immutable)
        return catalog

    def fingerprint(self) -> tuple[Any, ...]:
        version = self.catalog().catalog_version
        try:
            info = index_path(self.db_path).stat()
            return version, info.st_mtime_ns, info.st_size, info.st_ino
        except OSError:
            return (version,)

    def current(self) -> Loaded:
        """What is loaded, reloaded first if the catalog changed since."""
        fingerprint = self.fingerprint()
        loaded = self._loaded
        if loaded is not None and loaded.fingerprint == fingerprint:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.fingerprint != fingerprint:
                self._loaded = self._load(fingerprint)
            return self._loaded

    def _load(self, fingerprint: tuple[Any, ...]) -> Loaded:
        with Catalog(self.db_path, immutable=self.immutable) as catalog:
            meta = catalog.all_meta()
            if not meta.get("model") or not meta.get("dimension"):
                raise CatalogError(f"{self.db_path} has no embeddings yet: run 'datasette-imgsearch build' on it first")
            loaded = Loaded(
                fingerprint, meta["model"], meta.get("text_model"), int(meta["dimension"]), meta.get("multilingual_model")
            )
            state = index_state(catalog)
            if state.fresh:
                index = read_index(index_path(self.db_path))
                flat = flat_vectors(index)
                if flat is not None:  # exact search is fastest as one BLAS matrix-vector product
                    loaded.ids, loaded.matrix = flat
                    loaded.vectors_from = f"{index_path(self.db_path).name} (exact)"
                else:
                    loaded.faiss = index
                    loaded.vectors_from = f"{index_path(self.db_path).name} ({meta.get('index_type')})"
            else:
                loaded.ids, loaded.matrix = catalog.embeddings()
                loaded.vectors_from = f"stored embeddings (exact; index {state.reason})"
        if loaded.matrix is not None and len(loaded.ids) > 1 and not bool(np.all(loaded.ids[1:] > loaded.ids[:-1])):
            order = np.argsort(loaded.ids, kind="stable")  # filtered search looks rows up by binary search
            loaded.ids, loaded.matrix = loaded.ids[order], loaded.matrix[order]
        return loaded

    def _first_pass(self, loaded: Loaded) -> Any:
        """The bfloat16 copy of a large matrix, made the first time a search needs it."""
        if loaded.matrix is None or len(loaded.matrix) < self.first_pass_rows:
            return None
        with self._lock:
            if loaded.first_pass is None:
                import torch

                loaded.first_pass = torch.from_numpy(loaded.matrix).bfloat16()
            return loaded.first_pass

    def embedding(self, id_: int) -> np.ndarray | None:
        return self.catalog().embedding(id_)

    def _search_among(
        self, loaded: Loaded, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, candidates: np.ndarray
    ) -> list[Hit]:
        """Exact top k among the candidate rows, in one vectorised pass.

        When most rows are candidates, the whole matrix is scored (the pass every query makes anyway,
        shared with concurrent queries) and the candidates' scores are picked out; when few are, only
        their vectors are gathered. A catalog served from an approximate index has no matrix in
        memory: the candidates' stored embeddings are read instead, so the ranking is exact either way."""
        if loaded.matrix is None:
            ids, matrix = self.catalog().embeddings_of(np.unique(candidates))
            return top_k(ids, matrix @ vector if len(ids) else np.zeros(0, np.float32), k, exclude, min_score)
        positions = self._positions(loaded, candidates)
        if len(positions) * GATHER_FRACTION < len(loaded.ids):
            scores = loaded.matrix[positions] @ vector
        else:
            scores = self._exact_batcher((vector, loaded.matrix))[positions]
        return top_k(loaded.ids[positions], scores, k, exclude, min_score)

    def best_scores(self, vectors: np.ndarray, loaded: Loaded) -> np.ndarray:
        """Each vector's best score anywhere in the catalog, in one pass over it (in slices of rows, so a
        large catalog never holds a rows x vectors table)."""
        if loaded.faiss is not None:
            scores, _ = loaded.faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
            return scores[:, 0]
        if loaded.matrix is None or len(loaded.ids) == 0:
            return np.full(len(vectors), -1.0, dtype=np.float32)
        best = np.full(len(vectors), -np.inf, dtype=np.float32)
        for start in range(0, len(loaded.matrix), BEST_SCORE_SLICE):
            scores = exact_scores(loaded.matrix[start:start + BEST_SCORE_SLICE], list(vectors))
            best = np.maximum(best, scores.max(axis=1))
        return best

    def _positions(self, loaded: Loaded, wanted: np.ndarray) -> np.ndarray:
        """Where the wanted row ids (any order, repeats allowed) sit in ``loaded.ids``, ascending and unique;
        ids that are not there are left out.

        Ids are looked up in a table from id to position when they are dense enough (at most
        ``ID_TABLE_SLACK`` times as many possible ids as rows), else by binary search; repeats go by a
        mask over the rows, never by sorting the candidates, which cost 25 ms for 80,000 ids in the
        order an index on ``taken`` gives them."""
        ids = loaded.ids
        if len(ids) == 0 or len(wanted) == 0:
            return np.zeros(0, dtype=np.int64)
        largest = int(ids[-1])
        if loaded.row_of_id is None and 0 <= int(ids[0]) and largest < ID_TABLE_SLACK * len(ids):
            with self._lock:
                if loaded.row_of_id is None:
                    table = np.full(largest + 1, -1, dtype=np.int32 if len(ids) < 2**31 else np.int64)
                    table[ids] = np.arange(len(ids))
                    loaded.row_of_id = table
        if loaded.row_of_id is not None:
            inside = wanted[(wanted >= 0) & (wanted <= largest)]
            found = loaded.row_of_id[inside]
            found = found[found >= 0]
        else:
            found = np.searchsorted(ids, wanted)
            inside = found < len(ids)
            found = found[inside]
            found = found[ids[found] == wanted[inside]]
        chosen = np.zeros(len(ids), dtype=bool)
        chosen[found] = True
        return np.flatnonzero(chosen)

    def search(
        self, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, candidates: np.ndarray | None = None,
        loaded: Loaded | None = None,
    ) -> list[Hit]:
        """The k best rows for a unit vector, best first; only among ``candidates`` (row ids, any order) when
        given. ``loaded`` is the snapshot the vector was made against (the current one if not given)."""
        loaded = loaded or self.current()
        if candidates is not None:
            return self._search_among(loaded, vector, k, exclude, min_score, candidates)
        if loaded.faiss is not None:
            want = min(loaded.faiss.ntotal, k + len(exclude))
            if want == 0:
                return []
            scores, ids = loaded.faiss.search(vector.reshape(1, -1), want)
            keep = ids[0] >= 0
            return top_k(ids[0][keep], scores[0][keep], k, exclude, min_score)
        if loaded.matrix is None or len(loaded.ids) == 0:
            return []
        first_pass = self._first_pass(loaded)
        if first_pass is None:
            return top_k(loaded.ids, self._exact_batcher((vector, loaded.matrix)), k, exclude, min_score)
        rough = self._exact_batcher((vector, first_pass))
        return rescored_top_k(loaded.ids, loaded.matrix, vector, rough, k, exclude, min_score)


def _score_batch(items: list[tuple[np.ndarray, Any]]) -> list[np.ndarray]:
    """Score queued (vector, matrix) pairs, one matrix product per distinct matrix."""
    results: list[tuple[int, np.ndarray]] = []
    for matrix in {id(m): m for _, m in items}.values():
        mine = [i for i, (_, m) in enumerate(items) if m is matrix]
        scores = exact_scores(matrix, [items[i][0] for i in mine])
        results.extend(zip(mine, scores))
    return [row for _, row in sorted(results, key=lambda pair: pair[0])]
