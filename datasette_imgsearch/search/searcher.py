"""The query language and the ranking: one code path for the CLI, SQL functions, the page and JSON.

A query is plain text, ``row:123`` ("more like row 123", the row itself left out of the results), or
a weighted sum and difference of such terms: ``2:dog + beach - night``. Signs must stand apart with
spaces, so ``t-shirt`` stays one word; a weight is a number and a colon in front of a term.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Union

import numpy as np

from datasette_imgsearch.errors import ModelError, QueryError
from datasette_imgsearch.images.pixels import DEFAULT_MAX_MEGAPIXELS, decode
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.models.cache import is_loaded, load_embedder
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.models.embedder import Embedder
from datasette_imgsearch.models.languages import CLIP, MULTILINGUAL, check_route, multilingual_model, reader_of
from datasette_imgsearch.search.strength import Calibration, random_text_vectors, random_texts
from datasette_imgsearch.vectors.ranking import Hit
from datasette_imgsearch.vectors.snapshot import Snapshot
from datasette_imgsearch.vectors.store import VectorStore

MAX_QUERY_LENGTH = 1000
MAX_TERMS = 16
MAX_WEIGHT = 1000.0
MAX_ROW_ID = 2**63 - 1  # SQLite's largest integer
STRONG_ONLY = "strong"

_SIGN = re.compile(r"(?:(?<=\s)|^)([+-])(?=\s|$)")
_WEIGHT = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*:\s*(.*)$", re.S)
_ROW = re.compile(r"^row:\s*(\S*)$", re.I)


@dataclass(frozen=True)
class Term:
    weight: float
    text: str | None = None
    row: int | None = None


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
            if weight > MAX_WEIGHT:
                raise QueryError(f"the weight {match.group(1)[:20]}: is too large; weights go up to {MAX_WEIGHT:g}")
        if sign == "-":
            weight = -weight
        row = _ROW.match(chunk)
        if row:
            if not row.group(1).isdigit():
                raise QueryError(f"row: takes a row id, as in row:12, not {row.group(1)!r}")
            if int(row.group(1)) > MAX_ROW_ID:
                raise QueryError(f"row:{row.group(1)[:30]} is not in the catalog (row ids go up to {MAX_ROW_ID})")
            terms.append(Term(weight, row=int(row.group(1))))
        else:
            terms.append(Term(weight, text=chunk))
    if len(terms) > MAX_TERMS:
        raise QueryError(f"the query has {len(terms)} terms; the limit is {MAX_TERMS}")
    return terms


def check_k(k: Any, limit: int) -> int:
    """How many results were asked for: a whole number (or its text) from 1 to ``limit``."""
    value = _number(k, "k", f"a whole number of results from 1 to {limit}")
    if not value.is_integer():
        raise QueryError(f"k must be a whole number of results, not {k!r}")
    if not 1 <= value <= limit:
        raise QueryError(f"k must be between 1 and {limit}, not {k!r}")
    return int(value)


MinScore = Union[float, Literal["strong"], None]


def check_min_score(min_score: Any) -> MinScore:
    """The cut-off: empty means none; ``strong`` means strong matches only (see strength.py); otherwise a
    cosine, as a number (or its text) from -1 to 1."""
    if min_score is None or min_score == "":
        return None
    if isinstance(min_score, str) and min_score.strip().lower() == STRONG_ONLY:
        return STRONG_ONLY
    value = _number(min_score, "min_score", "a number from -1 to 1, or 'strong'")
    if not -1.0 <= value <= 1.0:
        raise QueryError(f"min_score must be between -1 and 1, not {min_score!r}")
    return value


CANDIDATES_WANTED = "a JSON array of row ids, such as (select json_group_array(id) from images where taken >= '2020')"


class Candidates:
    """The rows a search may return: row ids from a JSON array, read only when a search needs them.

    A repeated filtered query is answered from the cache by the digest of the array's text, without
    parsing tens of thousands of ids again."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self.key = hashlib.blake2b(self.text.encode(), digest_size=16).digest()
        self._ids: np.ndarray | None = None

    @classmethod
    def of(cls, ids: Any) -> "Candidates":
        return cls(json.dumps([int(i) for i in ids]))

    @property
    def ids(self) -> np.ndarray:
        """The ids as given: in any order (an index on the filtered column decides it), repeats allowed."""
        if self._ids is None:
            self._ids = _parse_ids(self.text)
        return self._ids


def _parse_ids(text: str) -> np.ndarray:
    if not (text.startswith("[") and text.endswith("]")):
        try:
            json.loads(text)
        except ValueError:
            raise QueryError(f"candidates must be {CANDIDATES_WANTED}; this is not JSON: {text[:40]!r}") from None
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}")
    try:  # numpy reads a plain list of integers four times faster than json.loads
        ids = np.fromstring(text[1:-1], dtype=np.int64, sep=",")
    except ValueError:
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}") from None
    clamped = len(ids) and int(ids.max()) == MAX_ROW_ID and str(MAX_ROW_ID) not in text  # numpy clamps overflow
    if clamped or (len(ids) and int(ids.min()) < 0):
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}")
    return ids


def check_candidates(candidates: Any) -> Candidates | None:
    """The rows to rank among, from SQL (what ``json_group_array(id)`` gives); None means every row."""
    if candidates is None:
        return None
    if isinstance(candidates, (bytes, bytearray)):
        candidates = candidates.decode("utf-8", "replace")
    if not isinstance(candidates, str):
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}, not {candidates!r}")
    return Candidates(candidates)


def _number(value: Any, name: str, wanted: str) -> float:
    """A finite number from an int, a float or numeric text (Datasette passes named parameters as text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise QueryError(f"{name} must be {wanted}, not {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise QueryError(f"{name} must be {wanted}, not {value!r}") from None
    if not math.isfinite(number):
        raise QueryError(f"{name} must be {wanted}, not {value!r}")
    return number


@dataclass(frozen=True)
class Reading:
    """One term of a query and what reads it: ``reader`` is ``clip``, ``multilingual`` or ``row`` (the
    row's stored vector), ``model`` the text model's name (None for a row)."""

    weight: float
    text: str | None
    row: int | None
    reader: str
    model: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "text": self.text, "row": self.row, "reader": self.reader, "model": self.model}


class Searcher:
    """Ranks one catalog's rows against queries: parse → one unit vector → the store's top k.

    The model comes from what the catalog records (or the override given), read again whenever the
    catalog changes, so a finished ``--reembed`` switches the searcher to the new model too.
    """

    def __init__(
        self, db_path: str | Path, choice: ModelChoice = ModelChoice(), immutable: bool = False, cache_size: int = 512
    ) -> None:
        self.db_path = Path(db_path)
        check_route(choice.route)
        self.choice = choice
        self.device = choice.device
        self.precision = choice.precision
        self.store = VectorStore(db_path, immutable)
        self.store.current()  # a missing, foreign or empty catalog is refused here, not at the first query
        self._text_vectors: LRU[np.ndarray] = LRU(cache_size)
        self._results: LRU[list[Hit]] = LRU(cache_size)
        self._calibrations: LRU[Calibration] = LRU(4)
        self._random_text_vectors: LRU[np.ndarray] = LRU(4)
        self._loaded = threading.Event()
        self._loader: threading.Thread | None = None
        self._loader_lock = threading.Lock()
        self._load_error: Exception | None = None
        self.load_seconds: float | None = None

    # Models ------------------------------------------------------------------------------------
    # Each query takes one snapshot of what is loaded (``Snapshot``) and uses it throughout, so a query
    # that runs while a re-embed switches models never mixes the old model with the new vectors.
    def image_model(self, loaded: Snapshot) -> str:
        return self.choice.model or loaded.model

    def text_model(self, loaded: Snapshot) -> str:
        return self.choice.text_model or loaded.text_model or self.choice.model or loaded.model

    def multilingual_model(self, loaded: Snapshot) -> str | None:
        return multilingual_model(loaded.model, loaded.multilingual_model, self.choice.multilingual_model)

    @property
    def model_name(self) -> str:
        return self.image_model(self.store.current())

    @property
    def text_model_name(self) -> str:
        return self.text_model(self.store.current())

    def text_embedder(self, loaded: Snapshot | None = None, reader: str = CLIP) -> Embedder:
        """The text model that reads terms routed to ``reader``; the multilingual one loads at its first term."""
        loaded = loaded or self.store.current()
        if reader == CLIP:
            return self._checked(load_embedder(self.text_model(loaded), self.device, self.precision), loaded)
        name = self.multilingual_model(loaded)
        assert name is not None  # reader_of routes nothing to a missing multilingual model
        embedder = load_embedder(name, self.device, self.precision, option="--multilingual-model")
        if not embedder.supports_text:
            raise ModelError(f"the multilingual model {name!r} cannot encode text")
        return self._checked(embedder, loaded)

    def image_embedder(self, loaded: Snapshot | None = None) -> Embedder:
        loaded = loaded or self.store.current()
        return self._checked(load_embedder(self.image_model(loaded), self.device, self.precision), loaded)

    def _checked(self, embedder: Embedder, loaded: Snapshot) -> Embedder:
        if embedder.dimension != loaded.dimension:
            raise ModelError(
                f"the model {embedder.name!r} gives {embedder.dimension}-dimensional vectors, but this catalog "
                f"holds {loaded.dimension}-dimensional ones from {loaded.model!r}: query it with that model"
            )
        return embedder

    def load(self) -> None:
        """Load the text model and the vectors, and measure what chance finds, so the first query is fast."""
        self.calibration(self.store.current())

    def calibration(self, loaded: Snapshot, multilingual: bool = False) -> Calibration:
        """What random text finds in this catalog (see strength.py), through CLIP's text tower and, with
        ``multilingual``, through the multilingual model too: made once per catalog state and models."""
        readers = [CLIP, MULTILINGUAL] if multilingual else [CLIP]
        names = tuple(self.text_model(loaded) if reader == CLIP else self.multilingual_model(loaded) for reader in readers)
        key = (loaded.fingerprint, names)
        found = self._calibrations.get(key)
        if found is None:
            best = [self.store.best_scores(self._random_vectors(loaded, reader), loaded) for reader in readers]
            found = Calibration(np.sort(np.concatenate(best)))
            self._calibrations.put(key, found)
        return found

    def _random_vectors(self, loaded: Snapshot, reader: str) -> np.ndarray:
        embedder = self.text_embedder(loaded, reader)
        vectors = self._random_text_vectors.get(embedder.identity)
        if vectors is None:
            texts = random_texts(foreign=reader == MULTILINGUAL)
            vectors = random_text_vectors(embedder.identity, embedder.encode_texts, texts)
            self._random_text_vectors.put(embedder.identity, vectors)
        return vectors

    def start_loading(self) -> None:
        """Load in a background thread (Datasette's startup), so the first query is fast."""
        with self._loader_lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load_in_background, name="imgsearch-loader", daemon=True)
                self._loader.start()

    def _load_in_background(self) -> None:
        started = time.monotonic()
        try:
            self.load()
        except Exception as error:  # reported to every query by wait_until_loaded
            self._load_error = error
        finally:
            self.load_seconds = round(time.monotonic() - started, 3)
            self._loaded.set()

    def state(self) -> dict[str, Any]:
        """What this searcher loaded, for the status endpoint."""
        done = self._loaded.is_set()
        current = self.store.current()
        multilingual = self.multilingual_model(current)
        return {
            "loaded": done and self._load_error is None,
            "load_seconds": self.load_seconds if done else None,
            "load_error": str(self._load_error) if self._load_error else None,
            "text_model": self.text_model(current),
            "multilingual_model": multilingual,
            "multilingual_loaded": multilingual is not None and is_loaded(multilingual),  # at its first term
            "route": self.choice.route,
            "vectors": current.vectors_from,
            "rows": current.size,
        }

    def wait_until_loaded(self, timeout: float | None) -> None:
        """Wait for a background load; raise its error, or say that it is still going."""
        self.start_loading()
        if not self._loaded.wait(timeout):
            raise QueryError(f"imgsearch is still loading the model {self.text_model_name!r}; try again in a few seconds")
        if self._load_error is not None:
            raise self._load_error

    # Queries -----------------------------------------------------------------------------------
    def row_vector(self, row_id: int, loaded: Snapshot | None = None) -> np.ndarray:
        loaded = loaded or self.store.current()
        vector = self.store.embedding(row_id)
        if vector is None:
            raise QueryError(f"row:{row_id} is not in the catalog")
        if len(vector) != loaded.dimension:
            raise QueryError("the catalog switched to another model while this query ran: run it again")
        return vector

    def readings(self, query: str, loaded: Snapshot | None = None) -> list[Reading]:
        """The terms of ``query`` and the model that reads each (``row`` for a row's stored vector)."""
        loaded = loaded or self.store.current()
        multilingual = self.multilingual_model(loaded)
        readings = []
        for term in parse(query):
            if term.row is not None:
                readings.append(Reading(term.weight, None, term.row, "row", None))
                continue
            reader = reader_of(term.text or "", self.choice.route, multilingual)
            name = self.text_model(loaded) if reader == CLIP else multilingual
            readings.append(Reading(term.weight, term.text, None, reader, name))
        return readings

    def strong_score(self, readings: list[Reading]) -> float | None:
        """The cosine from which a hit of the query ``readings`` describe counts as strong here; None when it
        has row: terms."""
        calibration = self._calibration_of(readings, self.store.current())
        return None if calibration is None else calibration.strong_score

    def _calibration_of(self, readings: list[Reading], loaded: Snapshot) -> Calibration | None:
        """The calibration a query's strength is measured with; None for a query with row: terms."""
        if any(reading.row is not None for reading in readings):
            return None
        return self.calibration(loaded, any(reading.reader == MULTILINGUAL for reading in readings))

    def text_vector(self, text: str, loaded: Snapshot | None = None, reader: str = CLIP) -> np.ndarray:
        loaded = loaded or self.store.current()
        key = (reader, self.text_model(loaded), self.multilingual_model(loaded), text)
        vector = self._text_vectors.get(key)
        if vector is None:
            try:
                embedder = self.text_embedder(loaded, reader)
            except ModelError as error:
                if reader == CLIP:
                    raise
                raise ModelError(f"{text!r} is not English-like, so the multilingual text model reads it: {error}") from None
            vector = embedder.encode_text(text)
            self._text_vectors.put(key, vector)
        return vector

    def query_vector(self, query: str, loaded: Snapshot | None = None) -> tuple[np.ndarray, set[int]]:
        """The unit vector a query stands for, and the rows it names (left out of its results)."""
        loaded = loaded or self.store.current()
        return self._vector_of(query, self.readings(query, loaded), loaded)

    def _vector_of(self, query: str, readings: list[Reading], loaded: Snapshot) -> tuple[np.ndarray, set[int]]:
        total: np.ndarray | None = None
        exclude = set()
        for reading in readings:
            if reading.row is not None:
                vector = self.row_vector(reading.row, loaded)
                if reading.weight > 0:
                    exclude.add(reading.row)
            else:
                vector = self.text_vector(reading.text or "", loaded, reading.reader)
            total = reading.weight * vector if total is None else total + reading.weight * vector
        assert total is not None  # parse() never returns no terms
        norm = float(np.linalg.norm(total))
        if not math.isfinite(norm):
            raise QueryError(f"the weights in {query!r} are too large to add up")
        if norm < 1e-6:
            raise QueryError(f"the terms of {query!r} cancel each other out")
        return (total / norm).astype(np.float32), exclude

    def search(
        self, query: str, k: int = 10, min_score: MinScore = None, candidates: Candidates | None = None
    ) -> list[Hit]:
        """Rank the catalog against a text query (see :func:`parse`); only among ``candidates`` when given.

        A query of text terms only gets each hit's strength; ``min_score="strong"`` keeps the strong ones."""
        loaded = self.store.current()
        key = (query, k, min_score, candidates and candidates.key, loaded.fingerprint)
        hits = self._results.get(key)
        if hits is None:
            readings = self.readings(query, loaded)
            vector, exclude = self._vector_of(query, readings, loaded)
            calibration = self._calibration_of(readings, loaded)
            if min_score == STRONG_ONLY:
                if calibration is None:
                    raise QueryError("strong matches are measured for text queries only, not for row: terms")
                min_score = calibration.strong_score
            ids = None if candidates is None else candidates.ids
            hits = self.store.search(vector, k, exclude, min_score, ids, loaded)
            if calibration is not None:
                hits = [calibration.rated(hit) for hit in hits]
            self._results.put(key, hits)
        return hits

    def search_image_bytes(
        self, data: bytes, k: int = 10, min_score: MinScore = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        max_decoded_megapixels: float | None = None, candidates: Candidates | None = None,
    ) -> list[Hit]:
        """Rank the catalog against a reference image or an upload, decoded exactly as ``build`` decodes files."""
        if min_score == STRONG_ONLY:
            raise QueryError("strong matches are measured for text queries only, not for pictures")
        loaded = self.store.current()
        embedder = self.image_embedder(loaded)
        decoded = decode(data, max_megapixels, embedder.shrink_to(), max_decoded_megapixels)
        vector = embedder.encode_images([decoded.image])[0]
        del decoded
        return self.store.search(vector, k, set(), min_score, None if candidates is None else candidates.ids, loaded)

    def search_vector(self, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None) -> list[Hit]:
        return self.store.search(vector, k, exclude, min_score)

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
        return self.store.current().size

    @property
    def vectors_from(self) -> str:
        """Where the loaded vectors came from: the index file, or the stored embeddings and why."""
        return self.store.current().vectors_from


_searchers: dict[tuple[str, ModelChoice, bool], Searcher] = {}
_searchers_lock = threading.Lock()


def existing_searcher(db_path: str | Path, choice: ModelChoice = ModelChoice(), immutable: bool = False) -> Searcher | None:
    """The process's :class:`Searcher` for a catalog if one was made; never makes one."""
    with _searchers_lock:
        return _searchers.get((str(Path(db_path).resolve()), choice, immutable))


def searcher_for(db_path: str | Path, choice: ModelChoice = ModelChoice(), immutable: bool = False) -> Searcher:
    """A process-wide :class:`Searcher` per catalog, shared by SQL functions, pages and JSON."""
    key = (str(Path(db_path).resolve()), choice, immutable)
    with _searchers_lock:
        if key not in _searchers:
            _searchers[key] = Searcher(db_path, choice, immutable)
        return _searchers[key]
