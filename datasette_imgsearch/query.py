"""The query language and the ranking: one code path for the CLI, SQL functions, the page and JSON.

A query is plain text, ``row:123`` ("more like row 123", the row itself left out of the results), or
a weighted sum and difference of such terms: ``2:dog + beach - night``. Signs must stand apart with
spaces, so ``t-shirt`` stays one word; a weight is a number and a colon in front of a term.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .catalog import TABLE, Catalog, CatalogError, from_blob, index_path
from .embed import Batcher, Embedder, ModelError, load_embedder
from .index import flat_vectors, index_state, read_index
from .pixels import DEFAULT_MAX_MEGAPIXELS, decode

MAX_QUERY_LENGTH = 1000
MAX_TERMS = 16

_SIGN = re.compile(r"(?:(?<=\s)|^)([+-])(?=\s|$)")
_WEIGHT = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*:\s*(.*)$", re.S)
_ROW = re.compile(r"^row:\s*(\S*)$", re.I)


class QueryError(ValueError):
    """A query that cannot be run; the message says what was wrong and how to write it."""


@dataclass(frozen=True)
class Term:
    weight: float
    text: str | None = None
    row: int | None = None


@dataclass(frozen=True)
class Hit:
    id: int
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6)}


def parse(query: str) -> list[Term]:
    """Split a query into weighted terms, or raise :class:`QueryError` saying what is wrong."""
    if not isinstance(query, str):
        raise QueryError("the query must be text, for example imgsearch('a red circle')")
    query = query.strip()
    if not query:
        raise QueryError("the query is empty: type what to look for, e.g. 'a dog on a beach' or 'row:12'")
    if len(query) > MAX_QUERY_LENGTH:
        raise QueryError(f"the query is {len(query)} characters long; the limit is {MAX_QUERY_LENGTH}")
    pieces = _SIGN.split(query)
    chunks = [("+", pieces[0])] + list(zip(pieces[1::2], pieces[2::2]))
    terms: list[Term] = []
    for sign, chunk in chunks:
        chunk = chunk.strip()
        if not chunk:
            if sign == "+" and len(terms) == 0 and len(chunks) > 1:
                continue  # a query that starts with a sign
            raise QueryError(f"a '{sign}' in {query!r} has no term after it")
        weight = 1.0
        match = _WEIGHT.match(chunk)
        if match:
            weight, chunk = float(match.group(1)), match.group(2).strip()
            if not chunk:
                raise QueryError(f"the weight {match.group(1)}: has no term after it")
        if sign == "-":
            weight = -weight
        row = _ROW.match(chunk)
        if row:
            if not row.group(1).isdigit():
                raise QueryError(f"row: takes a row id, as in row:12, not {row.group(1)!r}")
            terms.append(Term(weight, row=int(row.group(1))))
        else:
            terms.append(Term(weight, text=chunk))
    if len(terms) > MAX_TERMS:
        raise QueryError(f"the query has {len(terms)} terms; the limit is {MAX_TERMS}")
    return terms


def check_k(k: Any, limit: int) -> int:
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise QueryError(f"k must be a whole number of results, not {k!r}") from None
    if not 1 <= value <= limit:
        raise QueryError(f"k must be between 1 and {limit}, not {value}")
    return value


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
FIRST_PASS_MARGIN = 0.01


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


class Searcher:
    """Ranks one catalog's rows against queries, keeping its vectors in step with the file on disk.

    It reads the sibling FAISS index when that is fresh and falls back to the stored embeddings when
    it is stale or missing, so it never returns rows that are not there. A rebuilt index or a changed
    catalog is noticed on the next query, without a restart.
    """

    def __init__(
        self,
        db_path: str | Path,
        model: str | None = None,
        text_model: str | None = None,
        device: str = "auto",
        cache_size: int = 512,
    ) -> None:
        self.db_path = Path(db_path)
        catalog = Catalog(self.db_path)
        try:
            meta = catalog.all_meta()
        finally:
            catalog.close()
        if not meta.get("model"):
            raise CatalogError(f"{self.db_path} has no embeddings yet: run 'datasette-imgsearch build' on it first")
        self.recorded_model: str = meta["model"]
        self.model_name = model or meta["model"]
        self.text_model_name = text_model or meta.get("text_model") or self.model_name
        self.dimension = int(meta.get("dimension") or 0)
        self.device = device
        self._lock = threading.RLock()
        self._state: tuple[Any, ...] | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._matrix: np.ndarray | None = None
        self._first_pass: Any = None  # a bfloat16 torch copy of _matrix for large catalogs
        self.first_pass_rows = FIRST_PASS_ROWS
        self._faiss: Any = None
        self.source = "not loaded"
        self._text_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._results: OrderedDict[tuple[Any, ...], list[Hit]] = OrderedDict()
        self._cache_size = cache_size
        self._local = threading.local()
        # Concurrent exact searches share one pass over the matrix.
        self._exact_batcher = Batcher(self._score_batch)
        self._loaded = threading.Event()
        self._loader: threading.Thread | None = None
        self._load_error: Exception | None = None

    # Models ------------------------------------------------------------------------------------
    def text_embedder(self) -> Embedder:
        embedder = load_embedder(self.text_model_name, self.device)
        self._check_dimension(embedder)
        return embedder

    def image_embedder(self) -> Embedder:
        embedder = load_embedder(self.model_name, self.device)
        self._check_dimension(embedder)
        return embedder

    def _check_dimension(self, embedder: Embedder) -> None:
        if self.dimension and embedder.dimension != self.dimension:
            raise ModelError(
                f"the model {embedder.name!r} gives {embedder.dimension}-dimensional vectors, but this catalog "
                f"holds {self.dimension}-dimensional ones from {self.recorded_model!r}: query it with that model"
            )

    def load(self) -> None:
        """Load the text model and the vectors now, so the first query is fast."""
        self.text_embedder()
        self._refresh()

    def start_loading(self) -> None:
        """Load in a background thread (Datasette's startup), so the first query is fast."""
        with self._lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load_in_background, name="imgsearch-loader", daemon=True)
                self._loader.start()

    def _load_in_background(self) -> None:
        try:
            self.load()
        except Exception as error:  # reported to every query by wait_until_loaded
            self._load_error = error
        finally:
            self._loaded.set()

    def wait_until_loaded(self, timeout: float | None) -> None:
        """Wait for a background load; raise its error, or say that it is still going."""
        self.start_loading()
        if not self._loaded.wait(timeout):
            raise QueryError(f"imgsearch is still loading the model {self.text_model_name!r}; try again in a few seconds")
        if self._load_error is not None:
            raise self._load_error

    # Vectors -----------------------------------------------------------------------------------
    def _connection(self) -> Catalog:
        catalog = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = Catalog(self.db_path)
        return catalog

    def _current_state(self) -> tuple[Any, ...]:
        version = self._connection().catalog_version
        try:
            info = index_path(self.db_path).stat()
            return version, info.st_mtime_ns, info.st_size, info.st_ino
        except FileNotFoundError:
            return (version,)

    def _refresh(self) -> None:
        state = self._current_state()
        if state == self._state:
            return
        with self._lock:
            if state == self._state:
                return
            catalog = Catalog(self.db_path)
            try:
                fresh = index_state(catalog)
                ids, matrix, faiss_index = np.zeros(0, dtype=np.int64), None, None
                if fresh.fresh:
                    faiss_index = read_index(index_path(self.db_path))
                    flat = flat_vectors(faiss_index)
                    if flat is not None:  # exact search is fastest as one BLAS matrix-vector product
                        (ids, matrix), faiss_index = flat, None
                        self.source = f"{index_path(self.db_path).name} (exact)"
                    else:
                        self.source = f"{index_path(self.db_path).name} ({catalog.meta('index_type')})"
                else:
                    ids, matrix = catalog.embeddings()
                    self.source = f"stored embeddings (exact; index {fresh.reason})"
            finally:
                catalog.close()
            self._ids, self._matrix = ids, matrix
            self._first_pass = None
            if matrix is not None and len(matrix) >= self.first_pass_rows:
                import torch

                self._first_pass = torch.from_numpy(matrix).bfloat16()
            self._faiss = faiss_index
            self._results.clear()
            self._state = state

    # Queries -----------------------------------------------------------------------------------
    def row_vector(self, row_id: int) -> np.ndarray:
        row = self._connection().db.execute(f"select embedding from [{TABLE}] where id = ?", [row_id]).fetchone()
        if row is None:
            raise QueryError(f"row:{row_id} is not in the catalog")
        return from_blob(row[0])

    def text_vector(self, text: str) -> np.ndarray:
        vector = self._text_vectors.get(text)
        if vector is None:
            vector = self.text_embedder().encode_text(text)
            with self._lock:
                self._text_vectors[text] = vector
                if len(self._text_vectors) > self._cache_size:
                    self._text_vectors.popitem(last=False)
        return vector

    def query_vector(self, query: str) -> tuple[np.ndarray, set[int]]:
        """The unit vector a query stands for, and the rows it names (left out of its results)."""
        terms = parse(query)
        total: np.ndarray = np.zeros(self.dimension or 1, dtype=np.float32)
        exclude = set()
        for term in terms:
            if term.row is not None:
                vector = self.row_vector(term.row)
                if term.weight > 0:
                    exclude.add(term.row)
            else:
                vector = self.text_vector(term.text)  # type: ignore[arg-type]
            if total.shape != vector.shape:
                total = np.zeros_like(vector)
            total = total + term.weight * vector
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            raise QueryError(f"the terms of {query!r} cancel each other out")
        return (total / norm).astype(np.float32), exclude

    def search(self, query: str, k: int = 10, min_score: float | None = None) -> list[Hit]:
        """Rank the catalog against a text query (see :func:`parse`)."""
        self._refresh()
        key = (query, k, min_score, self._state)
        cached = self._results.get(key)
        if cached is not None:
            return cached
        vector, exclude = self.query_vector(query)
        hits = self.search_vector(vector, k, exclude, min_score)
        with self._lock:
            self._results[key] = hits
            if len(self._results) > self._cache_size:
                self._results.popitem(last=False)
        return hits

    def search_image_bytes(
        self, data: bytes, k: int = 10, min_score: float | None = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    ) -> list[Hit]:
        """Rank the catalog against a reference image or an upload, decoded exactly as ``build`` decodes files."""
        embedder = self.image_embedder()
        decoded = decode(data, max_megapixels, shrink_to=embedder.shrink_to())
        return self.search_vector(embedder.encode_images([decoded.image])[0], k, set(), min_score)

    def search_vector(self, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None) -> list[Hit]:
        self._refresh()
        if self._faiss is not None:
            want = min(self._faiss.ntotal, k + len(exclude))
            if want == 0:
                return []
            scores, ids = self._faiss.search(vector.reshape(1, -1), want)
            keep = ids[0] >= 0
            return top_k(ids[0][keep], scores[0][keep], k, exclude, min_score)
        if self._matrix is None or len(self._ids) == 0:
            return []
        ids, matrix, first_pass = self._ids, self._matrix, self._first_pass
        if first_pass is None:
            return top_k(ids, self._exact_batcher((vector, matrix)), k, exclude, min_score)
        return rescored_top_k(ids, matrix, vector, self._exact_batcher((vector, first_pass)), k, exclude, min_score)

    @staticmethod
    def _score_batch(items: list[tuple[np.ndarray, Any]]) -> list[np.ndarray]:
        """Score queued (vector, matrix) pairs, one matrix product per distinct matrix."""
        results: list[np.ndarray] = []
        for matrix in {id(m): m for _, m in items}.values():
            mine = [i for i, (_, m) in enumerate(items) if m is matrix]
            scores = exact_scores(matrix, [items[i][0] for i in mine])
            results.extend(zip(mine, scores))  # type: ignore[arg-type]
        return [row for _, row in sorted(results, key=lambda pair: pair[0])]  # type: ignore[misc]

    def scorer(self, query: str) -> Callable[[bytes], float]:
        """A per-row scoring function for ``imgsearch_score(embedding, query)``."""
        vector, _ = self.query_vector(query)
        dimension = vector.shape[0]

        def score(blob: bytes) -> float:
            row = np.frombuffer(blob, dtype="<f4")
            if row.shape[0] != dimension:
                raise QueryError(f"an embedding of {row.shape[0]} values does not match the query's {dimension}")
            return float(np.dot(row, vector))

        return score

    @property
    def size(self) -> int:
        self._refresh()
        return int(self._faiss.ntotal) if self._faiss is not None else len(self._ids)


_searchers: dict[tuple[str, str | None, str | None, str], Searcher] = {}
_searchers_lock = threading.Lock()


def searcher_for(db_path: str | Path, model: str | None = None, text_model: str | None = None, device: str = "auto") -> Searcher:
    """A process-wide :class:`Searcher` per catalog, shared by SQL functions, pages and JSON."""
    key = (str(Path(db_path).resolve()), model, text_model, device)
    with _searchers_lock:
        if key not in _searchers:
            _searchers[key] = Searcher(db_path, model, text_model, device)
        return _searchers[key]
