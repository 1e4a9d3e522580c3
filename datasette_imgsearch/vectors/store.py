"""A catalog's vectors held in memory and kept in step with the file on disk, and exact top-k over them.

The store reads a *base* once: the sibling FAISS index when it is the file this catalog wrote, else the
stored embeddings. Whatever changes on disk (a build commits, a re-embed switches models, the index is
rewritten) changes the *fingerprint*. The next query then catches up: the rows the change log names
(see catalog.py) are read into a *delta* that hides their old vectors in the base, so a server stays
exact during a build without reading every vector again at each commit. A new index file, a new model,
or a delta that has outgrown a quarter of its base is a full load. It never returns rows that are not
there. Connections are read-only (``immutable`` for files Datasette serves with ``-i``): the store never
writes, and never creates a file beside the catalog.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import index_path
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.models.batcher import Batcher
from datasette_imgsearch.models.hardware import cpu_computes_bf16
from datasette_imgsearch.vectors.index import (
    RERANKED_TYPES,
    Restriction,
    flat_vectors,
    hiding,
    index_state,
    read_index,
    restricted_to,
)
from datasette_imgsearch.vectors.ranking import (
    Hit,
    exact_scores,
    rescored_top_k,
    score_batch,
    scores_of,
    top_k,
    unique_ids,
)

# From this many rows, exact search reads a bfloat16 copy of the matrix first (half the memory
# traffic) and re-scores in float32 every row that could still be in the top k (see
# ranking.rescored_top_k).
FIRST_PASS_ROWS = 250_000
# On a CPU that computes bfloat16 natively, from this many: there a pass for eight concurrent queries
# costs what one does (AMX, 100,000 rows: 10-11 ms for 1 or 8, against 10 and 31 in float32), where
# elsewhere bfloat16 is slower than float32 for several queries at once (emulated: 39 against 37 ms).
NATIVE_FIRST_PASS_ROWS = 50_000
# Filtered search gathers the candidates' vectors when they are under 1/GATHER_FRACTION of the rows,
# and otherwise scores every row and picks theirs. Copying the gathered rows is most of a gather's cost:
# at 100,000 and 1,000,000 rows a quarter of them took 2-3 times a full pass, and a gather wins under
# an eighth at 100,000 rows and a twelfth at a million (``benchmarks/filtered_search.py --gather``).
GATHER_FRACTION = 12
# A filter over a catalog served from an approximate index reads up to this many candidates' embeddings
# from SQLite and ranks them exactly (about 0.1 s); more are searched for in the index, restricted to
# them, if they are at least RESTRICTED_SHARE of its rows: the restricted search widens by the inverse
# of their share (see index.restricted_to), which past that costs more than reading them.
EXACT_CANDIDATES = 20_000
RESTRICTED_SHARE = 0.02
ID_TABLE_SLACK = 4
BEST_SCORE_SLICE = 65_536


@dataclass
class Base:
    """Vectors read in full once: from the index file, or from the stored embeddings, as of ``version``.

    A base outlives many catalog versions: the rows changed since are a :class:`Delta` beside it."""

    version: int
    vectors_from: str
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    matrix: np.ndarray | None = None
    faiss: Any = None
    index_type: str = "flat"
    largest_id: int | None = None  # no row with a larger id is in the base (None: not known)
    first_pass: Any = None  # a bfloat16 torch copy of ``matrix`` for large catalogs
    row_of_id: np.ndarray | None = None  # id -> position in ``ids`` (-1: none), for ids dense enough to index
    best: LRU[np.ndarray] = field(default_factory=lambda: LRU(4))  # best_scores over the base, per probe set

    @property
    def size(self) -> int:
        return int(self.faiss.ntotal) if self.faiss is not None else len(self.ids)


_delta_serials = itertools.count(1)


@dataclass(frozen=True)
class Delta:
    """The rows whose embedding changed since the base was read: their vectors now (rows that were
    removed have none), and the base rows they hide."""

    ids: np.ndarray  # ascending
    matrix: np.ndarray
    hidden: np.ndarray  # ids of base rows changed or removed since, ascending
    hidden_positions: np.ndarray  # where those sit in ``Base.ids`` (a base held as a matrix)
    # A build adds rows at the end: a delta that only appended rows to another names it, so what was
    # computed over that one's rows (the calibration's best scores) is extended, not redone.
    appended_to: int = 0  # the serial of that delta (0: none)
    serial: int = field(default_factory=lambda: next(_delta_serials))

    @classmethod
    def empty(cls, dimension: int) -> "Delta":
        none = np.zeros(0, dtype=np.int64)
        return cls(none, np.zeros((0, dimension), dtype=np.float32), none, none)

    @property
    def rows(self) -> int:
        return len(self.ids) + len(self.hidden)


@dataclass
class Loaded:
    """One consistent view of a catalog at ``version``: the model facts, a base and the delta since it."""

    fingerprint: tuple[Any, ...]
    model: str
    text_model: str | None
    dimension: int
    multilingual_model: str | None  # as recorded; languages.multilingual_model resolves the default
    version: int
    base: Base
    delta: Delta

    @property
    def size(self) -> int:
        return self.base.size - len(self.delta.hidden) + len(self.delta.ids)

    @property
    def vectors_from(self) -> str:
        if not self.delta.rows:
            return self.base.vectors_from
        changed = len(unique_ids(self.delta.ids, self.delta.hidden))
        return f"{self.base.vectors_from}, caught up with {changed} row{'s' * (changed != 1)} changed since"


ModelFacts = tuple[str, "str | None", int, "str | None"]


def _model_facts(meta: dict[str, Any]) -> ModelFacts:
    """(model, text_model, dimension, multilingual_model) as a catalog records them: what a view's vectors
    mean. A change of any of them is a full load, never a catch-up."""
    return meta["model"], meta.get("text_model"), int(meta["dimension"]), meta.get("multilingual_model")


# A server catches its vectors up with the rows changed since its base (the change log, see catalog.py)
# instead of reading every vector again at each commit of a build, until the delta grows past this
# share of the base, when reading everything once is cheaper than carrying it.
CATCH_UP_SHARE = 0.25
CATCH_UP_MIN_ROWS = 20_000
# The calibration's best scores take fewer candidates from an index with rough scores than a query does.
RERANK_CANDIDATES_FOR_BEST = 10


class VectorStore:
    """The vectors of one catalog, kept in step with it as it changes."""

    def __init__(self, db_path: str | Path, immutable: bool = False) -> None:
        self.db_path = Path(db_path)
        self.immutable = immutable
        native = cpu_computes_bf16()
        self.first_pass_rows = NATIVE_FIRST_PASS_ROWS if native else FIRST_PASS_ROWS
        self._lock = threading.RLock()  # a load builds the id table (``_positions``) under it too
        self._local = threading.local()
        self._loaded: Loaded | None = None
        # Concurrent exact searches share one pass over the matrix.
        self._exact_batcher = Batcher(functools.partial(score_batch, bfloat16_batches=native))
        self._delta_best: LRU[tuple[int, int, np.ndarray]] = LRU(4)  # probe set -> (delta serial, rows, best)
        self._hidden_rows: tuple[int, Restriction | None] | None = None  # (delta serial, its selector)

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
        """What is loaded, caught up (or reloaded) first if the catalog changed since."""
        fingerprint = self.fingerprint()
        loaded = self._loaded
        if loaded is not None and loaded.fingerprint == fingerprint:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.fingerprint != fingerprint:
                self._loaded = self._caught_up(self._loaded, fingerprint) or self._load(fingerprint)
            return self._loaded

    def _load(self, fingerprint: tuple[Any, ...]) -> Loaded:
        """Read a base (the index file if it is this catalog's, else the stored embeddings) and the delta
        since it, all from one snapshot of the catalog."""
        with Catalog(self.db_path, immutable=self.immutable) as catalog, catalog.snapshot():
            meta = catalog.all_meta()
            if not meta.get("model") or not meta.get("dimension"):
                raise CatalogError(f"{self.db_path} has no embeddings yet: run 'datasette-imgsearch build' on it first")
            facts = _model_facts(meta)
            version = catalog.catalog_version
            state = index_state(catalog)
            reason = state.reason
            if state.written_by_catalog:
                base = self._base_from_index(meta)
                changed = np.zeros(0, dtype=np.int64) if state.fresh else catalog.changed_since(base.version)
                if changed is not None:
                    loaded = self._with_changes(fingerprint, facts, version, base, Delta.empty(facts[2]), changed, catalog)
                    if loaded is not None:
                        return loaded
                    reason = "stale by more changed rows than a catch-up carries"
            base = self._base_from_embeddings(catalog, version, f"stored embeddings (exact; index {reason})")
            return Loaded(fingerprint, *facts, version, base, Delta.empty(facts[2]))

    def _base_from_index(self, meta: dict[str, Any]) -> Base:
        path = index_path(self.db_path)
        index = read_index(path)
        largest = meta.get("index_largest_id")
        base = Base(int(meta["index_version"]), "", index_type=meta.get("index_type") or "flat",
                    largest_id=None if largest is None else int(largest))
        flat = flat_vectors(index)
        if flat is not None:  # exact search is fastest as one BLAS matrix-vector product
            base.ids, base.matrix = _in_id_order(*flat)
            base.vectors_from = f"{path.name} (exact)"
        else:
            base.faiss = index
            base.vectors_from = f"{path.name} ({base.index_type})"
        return base

    @staticmethod
    def _base_from_embeddings(catalog: Catalog, version: int, vectors_from: str) -> Base:
        ids, matrix = catalog.embeddings()
        return Base(version, vectors_from, ids, matrix, largest_id=int(ids[-1]) if len(ids) else 0)

    def _caught_up(self, loaded: Loaded | None, fingerprint: tuple[Any, ...]) -> Loaded | None:
        """``loaded`` brought up to the catalog's version from the change log, or None where a full load is
        needed: the index file changed, the model changed, the log does not reach back, or the delta
        would outgrow its base."""
        if loaded is None or loaded.fingerprint[1:] != fingerprint[1:]:
            return None
        catalog = self.catalog()  # this thread's connection: opening one took 15 ms, at every commit of a build
        with catalog.snapshot():
            facts = _model_facts(catalog.all_meta())
            if facts != (loaded.model, loaded.text_model, loaded.dimension, loaded.multilingual_model):
                return None
            changed = catalog.changed_since(loaded.version)
            if changed is None:
                return None
            return self._with_changes(fingerprint, facts, catalog.catalog_version, loaded.base, loaded.delta, changed, catalog)

    def _with_changes(
        self, fingerprint: tuple[Any, ...], facts: ModelFacts, version: int, base: Base, delta: Delta,
        changed: np.ndarray, catalog: Catalog,
    ) -> Loaded | None:
        """A view of ``base`` with ``delta`` updated by the rows in ``changed`` (read now from ``catalog``)."""
        if len(changed):
            found_ids, found_matrix = catalog.embeddings_of(changed)  # in id order
            keep = ~np.isin(delta.ids, changed)
            kept = bool(keep.all())
            # Appended: every row of the delta kept, every row found after them, so they stay its first rows.
            appended = kept and (not len(delta.ids) or not len(found_ids) or int(found_ids[0]) > int(delta.ids[-1]))
            ids, matrix = _in_id_order(np.concatenate([delta.ids if kept else delta.ids[keep], found_ids]),
                                       np.concatenate([delta.matrix if kept else delta.matrix[keep], found_matrix]))
            if base.matrix is not None:
                positions = unique_ids(delta.hidden_positions, self._positions(base, changed))
                hidden = base.ids[positions]
            else:
                in_base = changed if base.largest_id is None else changed[changed <= base.largest_id]
                hidden, positions = unique_ids(delta.hidden, in_base), delta.hidden_positions
            delta = Delta(ids, matrix, hidden, positions, appended_to=delta.serial if appended else 0)
        if delta.rows > max(CATCH_UP_MIN_ROWS, CATCH_UP_SHARE * base.size):
            return None
        return Loaded(fingerprint, *facts, version, base, delta)

    def _first_pass(self, base: Base) -> Any:
        """The bfloat16 copy of a large matrix, made the first time a search needs it."""
        if base.matrix is None or len(base.matrix) < self.first_pass_rows:
            return None
        with self._lock:
            if base.first_pass is None:
                import torch

                base.first_pass = torch.from_numpy(base.matrix).bfloat16()
            return base.first_pass

    def _hiding(self, base: Base, delta: Delta) -> Restriction | None:
        """FAISS parameters that leave out the base rows ``delta`` hides, made once per delta; None when it
        hides none, or this FAISS has no selectors."""
        if not len(delta.hidden):
            return None
        made = self._hidden_rows
        if made is None or made[0] != delta.serial:
            made = self._hidden_rows = (delta.serial, hiding(base.faiss, delta.hidden, 1 - len(delta.hidden) / max(1, base.size)))
        return made[1]

    def embedding(self, id_: int) -> np.ndarray | None:
        return self.catalog().embedding(id_)

    def search(
        self, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, candidates: np.ndarray | None = None,
        loaded: Loaded | None = None,
    ) -> list[Hit]:
        """The k best rows for a unit vector, best first; only among ``candidates`` (row ids, any order) when
        given. ``loaded`` is the snapshot the vector was made against (the current one if not given)."""
        loaded = loaded or self.current()
        if candidates is not None:
            return self._search_among(loaded, vector, k, exclude, min_score, candidates)
        return _with_delta(loaded.delta, self._search_base(loaded, vector, k, exclude, min_score), vector, k, exclude,
                           min_score)

    def _search_base(self, loaded: Loaded, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None) -> list[Hit]:
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
        concurrent queries share: a bfloat16 first pass re-scored exactly where the store keeps one, else
        float32."""
        first_pass = self._first_pass(base)
        scores = self._exact_batcher((vector, base.matrix, first_pass))
        scores[hidden_positions] = -np.inf
        picked = scores if positions is None else scores[positions]
        if first_pass is not None:
            return rescored_top_k(base.ids, base.matrix, vector, picked, k, exclude, min_score, positions)
        return top_k(base.ids if positions is None else base.ids[positions], picked, k, exclude, min_score)

    def _from_index(
        self, base: Base, vectors: np.ndarray, want: int, rerank: int | None = None, restriction: Restriction | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per vector, (ids, scores) of the ``want`` best rows in a FAISS base (among the rows ``restriction``
        allows, when given); for an index with rough scores, re-scored exactly from the stored embeddings,
        out of ``rerank`` candidates at least (the type's own number when not given)."""
        reranked = base.index_type in RERANKED_TYPES
        fetch = min(base.faiss.ntotal, max(want, rerank or RERANKED_TYPES[base.index_type]) if reranked else want)
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
        self, loaded: Loaded, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, candidates: np.ndarray
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
        positions = self._positions(base, candidates, loaded.delta.hidden_positions)
        if len(positions) * GATHER_FRACTION < len(base.ids):
            hits = top_k(base.ids[positions], scores_of(base.matrix[positions], vector), k, exclude, min_score)
        else:
            hits = self._full_pass(base, vector, k, exclude, min_score, loaded.delta.hidden_positions, positions)
        return _with_delta(loaded.delta, hits, vector, k, exclude, min_score, candidates)

    def _search_index_among(
        self, loaded: Loaded, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, unique: np.ndarray
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
            restriction = restricted_to(base.faiss, in_base, len(in_base) / max(1, base.size))
            if restriction is None:
                return None
            ids, scores = self._from_index(base, vector[None], want, restriction=restriction)
            if len(ids[0]) < min(want, len(in_base)):
                return None
            found = top_k(ids[0], scores[0], k, exclude, min_score)
        return _with_delta(delta, found, vector, k, exclude, min_score, unique)

    def best_scores(self, vectors: np.ndarray, loaded: Loaded) -> np.ndarray:
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
            _, scores = self._from_index(base, vectors, 1, RERANK_CANDIDATES_FOR_BEST)
            return np.array([row.max() if len(row) else -1.0 for row in scores], dtype=np.float32)
        best = np.full(len(vectors), -1.0, dtype=np.float32)
        if base.matrix is None:
            return best
        for start in range(0, len(base.matrix), BEST_SCORE_SLICE):
            scores = exact_scores(base.matrix[start:start + BEST_SCORE_SLICE], list(vectors))
            best = np.maximum(best, scores.max(axis=1))
        return best

    def _positions(self, base: Base, wanted: np.ndarray, hidden_positions: np.ndarray | None = None) -> np.ndarray:
        """Where the wanted row ids (any order, repeats allowed) sit in ``base.ids``, ascending and unique;
        ids that are not there, and ``hidden_positions``, are left out.

        Ids are looked up in a table from id to position when they are dense enough (at most
        ``ID_TABLE_SLACK`` times as many possible ids as rows), else by binary search; repeats go by a
        mask over the rows, never by sorting the candidates, which cost 25 ms for 80,000 ids in the
        order an index on ``taken`` gives them."""
        ids = base.ids
        if len(ids) == 0 or len(wanted) == 0:
            return np.zeros(0, dtype=np.int64)
        largest = int(ids[-1])
        if base.row_of_id is None and 0 <= int(ids[0]) and largest < ID_TABLE_SLACK * len(ids):
            with self._lock:
                if base.row_of_id is None:
                    table = np.full(largest + 1, -1, dtype=np.int32 if len(ids) < 2**31 else np.int64)
                    table[ids] = np.arange(len(ids))
                    base.row_of_id = table
        if base.row_of_id is not None:
            inside = wanted[(wanted >= 0) & (wanted <= largest)]
            found = base.row_of_id[inside]
            found = found[found >= 0]
        else:
            found = np.searchsorted(ids, wanted)
            inside = found < len(ids)
            found = found[inside]
            found = found[ids[found] == wanted[inside]]
        chosen = np.zeros(len(ids), dtype=bool)
        chosen[found] = True
        if hidden_positions is not None:
            chosen[hidden_positions] = False
        return np.flatnonzero(chosen)


def _in_id_order(ids: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by id: filtered search looks rows up by binary search, and a delta keeps its rows so."""
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        order = np.argsort(ids, kind="stable")
        return ids[order], matrix[order]
    return ids, matrix


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
