"""Which rows a search scores, over one snapshot of a catalog's vectors (snapshot.py): a full pass over
the matrix that concurrent queries share, the rows a filter passed, the FAISS index (restricted to a
filter, or hiding the rows changed since it was written), and the delta since the base. It never
returns rows that are not there.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.models.batcher import Batcher
from datasette_imgsearch.models.hardware import cpu_computes_bf16
from datasette_imgsearch.vectors.index import Restriction, hiding, restricted_to
from datasette_imgsearch.vectors.kinds import kind_of
from datasette_imgsearch.vectors.ranking import (
    Hit,
    exact_scores,
    rescored_top_k,
    score_batch,
    scores_of,
    top_k,
    unique_ids,
)
from datasette_imgsearch.vectors.snapshot import Base, Delta, Snapshot, Snapshots

# From this many rows, exact search reads a bfloat16 copy of the matrix first (half the memory
# traffic) and re-scores in float32 every row that could still be in the top k (see
# ranking.rescored_top_k); on a CPU that computes bfloat16 natively, from fewer, since there a pass
# for several concurrent queries costs what one does (docs/performance.md). A process on ONNX Runtime
# reads 8-bit codes first instead (vectors/int8pass.py), from INT8_FIRST_PASS_ROWS (docs/onnx.md).
FIRST_PASS_ROWS = 250_000
NATIVE_FIRST_PASS_ROWS = 50_000
INT8_FIRST_PASS_ROWS = 20_000
# Filtered search gathers the candidates' vectors when they are under 1/GATHER_FRACTION of the rows,
# and otherwise scores every row and picks theirs (``benchmarks/filtered_search.py --gather``).
GATHER_FRACTION = 12
# A filter over a catalog served from an approximate index reads up to this many candidates' embeddings
# from SQLite and ranks them exactly; more are searched for in the index, restricted to them, if they
# are at least RESTRICTED_SHARE of its rows: the restricted search widens by the inverse of their share
# (see index.restricted_to), which past that costs more than reading them.
EXACT_CANDIDATES = 20_000
RESTRICTED_SHARE = 0.02
BEST_SCORE_SLICE = 65_536
# The calibration's best scores take fewer candidates from an index with rough scores than a query does.
RERANK_CANDIDATES_FOR_BEST = 10


class VectorStore:
    """The vectors of one catalog, kept in step with it as it changes, and searched."""

    def __init__(self, db_path: str | Path, immutable: bool = False) -> None:
        self.snapshots = Snapshots(db_path, immutable)
        native = cpu_computes_bf16()
        self.first_pass_rows = NATIVE_FIRST_PASS_ROWS if native else FIRST_PASS_ROWS
        self.int8_pass_rows = INT8_FIRST_PASS_ROWS
        # Concurrent exact searches share one pass over the matrix.
        self._exact_batcher = Batcher(functools.partial(score_batch, bfloat16_batches=native))
        self._delta_best: LRU[tuple[int, int, np.ndarray]] = LRU(4)  # probe set -> (delta serial, rows, best)
        self._hidden_rows: tuple[int, Restriction | None] | None = None  # (delta serial, its selector)

    def current(self) -> Snapshot:
        """The catalog's snapshot as it is now (caught up or reloaded first if it changed)."""
        return self.snapshots.current()

    def catalog(self) -> Catalog:
        """This thread's read-only connection to the catalog."""
        return self.snapshots.catalog()

    def _hiding(self, base: Base, delta: Delta) -> Restriction | None:
        """FAISS parameters that leave out the base rows ``delta`` hides, made once per delta; None when it
        hides none, or this FAISS has no selectors."""
        if not len(delta.hidden):
            return None
        made = self._hidden_rows
        if made is None or made[0] != delta.serial:
            share = 1 - len(delta.hidden) / max(1, base.size)
            made = self._hidden_rows = (delta.serial, hiding(base.faiss, kind_of(base.index_type), delta.hidden, share))
        return made[1]

    def embedding(self, id_: int) -> np.ndarray | None:
        return self.catalog().embedding(id_)

    def search(
        self, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, candidates: np.ndarray | None = None,
        loaded: Snapshot | None = None,
    ) -> list[Hit]:
        """The k best rows for a unit vector, best first; only among ``candidates`` (row ids, any order) when
        given. ``loaded`` is the snapshot the vector was made against (the current one if not given)."""
        loaded = loaded or self.current()
        if candidates is not None:
            return self._search_among(loaded, vector, k, exclude, min_score, candidates)
        return _with_delta(loaded.delta, self._search_base(loaded, vector, k, exclude, min_score), vector, k, exclude,
                           min_score)

    def _search_base(self, loaded: Snapshot, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None) -> list[Hit]:
        base, delta = loaded.base, loaded.delta
        if base.faiss is not None:
            hidden_rows = self._hiding(base, delta)
            if hidden_rows is not None:
                ids, scores = self._from_index(base, vector[None], k + len(exclude), restriction=hidden_rows)
                return top_k(ids[0], scores[0], k, exclude, min_score)
            hidden = exclude | set(delta.hidden.tolist()) if len(delta.hidden) else exclude  # fetched, then skipped
            ids, scores = self._from_index(base, vector[None], k + len(hidden))
            return top_k(ids[0], scores[0], k, hidden, min_score)
        if base.matrix is None or len(base.ids) == 0:
            return []
        return self._full_pass(base, vector, k, exclude, min_score, delta.hidden_positions)

    def _full_pass(
        self, base: Base, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None,
        hidden_positions: np.ndarray, positions: np.ndarray | None = None,
    ) -> list[Hit]:
        """The top k of the matrix, or of its rows at ``positions``, from a pass over every row that
        concurrent queries share: a first pass (bfloat16, or 8-bit codes) re-scored exactly where the store
        keeps one, else float32."""
        assert base.matrix is not None  # a base searched without an index holds its matrix
        first_pass = base.first_pass(self.first_pass_rows, self.int8_pass_rows)
        scores, margin = self._exact_batcher((vector, base.matrix, first_pass))
        scores[hidden_positions] = -np.inf
        picked = scores if positions is None else scores[positions]
        if margin > 0:
            return rescored_top_k(base.ids, base.matrix, vector, picked, margin, k, exclude, min_score, positions)
        return top_k(base.ids if positions is None else base.ids[positions], picked, k, exclude, min_score)

    def _from_index(
        self, base: Base, vectors: np.ndarray, want: int, rerank: int | None = None, restriction: Restriction | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per vector, (ids, scores) of the ``want`` best rows in a FAISS base (among the rows ``restriction``
        allows, when given); for an index with rough scores, re-scored exactly from the stored embeddings,
        out of ``rerank`` candidates at least (the type's own number when not given)."""
        kind = kind_of(base.index_type)
        reranked = kind.rerank > 0
        fetch = min(base.faiss.ntotal, max(want, rerank or kind.rerank) if reranked else want)
        if fetch <= 0:
            return [np.zeros(0, np.int64)] * len(vectors), [np.zeros(0, np.float32)] * len(vectors)
        params = None if restriction is None else restriction.params
        scores, ids = base.faiss.search(np.ascontiguousarray(vectors, dtype=np.float32), fetch, params=params)
        found_ids, found_scores = [], []
        for vector, row_ids, row_scores in zip(vectors, ids, scores):
            keep = row_ids >= 0
            row_ids, row_scores = row_ids[keep], row_scores[keep]
            if reranked:
                row_ids, matrix = self.catalog().embeddings_of(row_ids)  # rows removed since are not there
                row_scores = scores_of(matrix, vector)
            found_ids.append(row_ids)
            found_scores.append(row_scores)
        return found_ids, found_scores

    def _search_among(
        self, loaded: Snapshot, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, candidates: np.ndarray
    ) -> list[Hit]:
        """The top k among the candidate rows, in one vectorised pass.

        When most rows are candidates, the whole matrix is scored (the pass every query makes anyway,
        shared with concurrent queries) and the candidates' scores are picked out; when few are, only
        their vectors are gathered. A catalog served from an approximate index has no matrix in
        memory: up to ``EXACT_CANDIDATES`` candidates, their stored embeddings are read and ranked
        exactly (and current, so the delta has nothing to add); more are searched for in the index,
        restricted to them, as closely as an unfiltered search of it."""
        base = loaded.base
        if base.matrix is None:
            unique = unique_ids(candidates)
            if base.faiss is not None and len(unique) > max(EXACT_CANDIDATES, RESTRICTED_SHARE * base.size):
                hits = self._search_index_among(loaded, vector, k, exclude, min_score, unique)
                if hits is not None:
                    return hits
            ids, matrix = self.catalog().embeddings_of(unique)
            return top_k(ids, scores_of(matrix, vector), k, exclude, min_score)
        positions = base.positions(candidates, loaded.delta.hidden_positions)
        if len(positions) * GATHER_FRACTION < len(base.ids):
            hits = top_k(base.ids[positions], scores_of(base.matrix[positions], vector), k, exclude, min_score)
        else:
            hits = self._full_pass(base, vector, k, exclude, min_score, loaded.delta.hidden_positions, positions)
        return _with_delta(loaded.delta, hits, vector, k, exclude, min_score, candidates)

    def _search_index_among(
        self, loaded: Snapshot, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, unique: np.ndarray
    ) -> list[Hit] | None:
        """The top k among ``unique`` candidate ids through the FAISS base, restricted to those of them it
        holds as they are now, plus the delta's; None where FAISS cannot restrict a search, or found
        fewer rows than it should (a graph index under a very selective filter), for the exact way."""
        base, delta = loaded.base, loaded.delta
        if base.largest_id is None:
            return None
        in_base = unique[(unique >= 0) & (unique <= base.largest_id)]
        in_base = np.setdiff1d(in_base, delta.hidden, assume_unique=True)  # their vectors in the index are old
        want = k + len(exclude)
        found: list[Hit] = []
        if len(in_base):
            restriction = restricted_to(base.faiss, kind_of(base.index_type), in_base, len(in_base) / max(1, base.size))
            if restriction is None:
                return None
            ids, scores = self._from_index(base, vector[None], want, restriction=restriction)
            if len(ids[0]) < min(want, len(in_base)):
                return None
            found = top_k(ids[0], scores[0], k, exclude, min_score)
        return _with_delta(delta, found, vector, k, exclude, min_score, unique)

    def best_scores(self, vectors: np.ndarray, loaded: Snapshot) -> np.ndarray:
        """Each vector's best score anywhere in the catalog. The base's part is computed once per base (in
        slices of rows, so a large catalog never holds a rows x vectors table) and the delta's added;
        rows removed since the base still count until the next full load, which moves this statistic
        by little."""
        base = loaded.base
        key = hashlib.sha1(np.ascontiguousarray(vectors).tobytes()).digest()
        best = base.best.get(key)
        if best is None:
            best = self._best_in_base(base, vectors)
            base.best.put(key, best)
        if len(loaded.delta.ids):
            best = np.maximum(best, self._best_in_delta(loaded.delta, key, vectors))
        return best

    def _best_in_delta(self, delta: Delta, key: bytes, vectors: np.ndarray) -> np.ndarray:
        """Each vector's best score among the delta's rows; for a delta that appended rows to the one seen
        last, over the new rows only (at every commit of a build, this was a pass over all of them)."""
        serial, rows, best = self._delta_best.get(key) or (0, 0, None)
        if best is None or serial not in (delta.serial, delta.appended_to):  # not this delta nor its prefix
            rows, best = 0, np.full(len(vectors), -1.0, dtype=np.float32)
        if rows < len(delta.ids):
            best = np.maximum(best, exact_scores(delta.matrix[rows:], list(vectors)).max(axis=1))
        self._delta_best.put(key, (delta.serial, len(delta.ids), best))
        return best

    def _best_in_base(self, base: Base, vectors: np.ndarray) -> np.ndarray:
        if base.faiss is not None:
            _, found = self._from_index(base, vectors, 1, RERANK_CANDIDATES_FOR_BEST)
            return np.array([row.max() if len(row) else -1.0 for row in found], dtype=np.float32)
        best = np.full(len(vectors), -1.0, dtype=np.float32)
        if base.matrix is None:
            return best
        for start in range(0, len(base.matrix), BEST_SCORE_SLICE):
            scores = exact_scores(base.matrix[start:start + BEST_SCORE_SLICE], list(vectors))
            best = np.maximum(best, scores.max(axis=1))
        return best


def _with_delta(
    delta: Delta, hits: list[Hit], vector: np.ndarray, k: int, exclude: set[int], min_score: float | None,
    candidates: np.ndarray | None = None,
) -> list[Hit]:
    """The base's hits merged with the delta's rows (only those among ``candidates`` when given)."""
    if not len(delta.ids):
        return hits
    ids, matrix = delta.ids, delta.matrix
    if candidates is not None:
        among = np.isin(ids, candidates)
        ids, matrix = ids[among], matrix[among]
    merged_ids = np.concatenate([np.array([hit.id for hit in hits], dtype=np.int64), ids])
    merged_scores = np.concatenate([np.array([hit.score for hit in hits], dtype=np.float32), scores_of(matrix, vector)])
    return top_k(merged_ids, merged_scores, k, exclude, min_score)
