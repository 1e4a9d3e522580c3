"""The searcher: a query (parse.py) or a picture turned into one unit vector and ranked against a
catalog's vectors, with each hit's strength. One code path for the CLI, SQL functions, the page and
JSON.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from datasette_imgsearch.errors import QueryError
from datasette_imgsearch.images.pixels import DEFAULT_MAX_MEGAPIXELS, decode
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.models.batcher import went_elsewhere
from datasette_imgsearch.models.cache import MODELS, ModelCache
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.models.languages import CLIP, MULTILINGUAL, check_route
from datasette_imgsearch.search.arguments import STRONG_ONLY, Candidates, MinScore
from datasette_imgsearch.search.fusion import PICTURE_DEPTH, fuse, text_query_of, text_ranking
from datasette_imgsearch.search.loading import BackgroundLoad
from datasette_imgsearch.search.models import QueryModels, Reading
from datasette_imgsearch.search.strength import Calibration, random_text_vectors, random_texts
from datasette_imgsearch.text.matching import TextQuery, containing, matches, split_query, text_search_columns
from datasette_imgsearch.vectors.ranking import Hit
from datasette_imgsearch.vectors.snapshot import Snapshot
from datasette_imgsearch.vectors.store import VectorStore


class Searcher:
    """Ranks one catalog's rows against queries: parse → one unit vector → the store's top k.

    The model comes from what the catalog records (or the override given), read again whenever the
    catalog changes, so a finished ``--reembed`` switches the searcher to the new model too.
    """

    def __init__(
        self, db_path: str | Path, choice: ModelChoice = ModelChoice(), immutable: bool = False, cache_size: int = 512,
        models: ModelCache = MODELS,
    ) -> None:
        self.db_path = Path(db_path)
        check_route(choice.route)
        self.choice = choice
        self.models = QueryModels(choice, models, cache_size)
        self.store = VectorStore(db_path, immutable)
        self.store.current()  # a missing, foreign or empty catalog is refused here, not at the first query
        self._results: LRU[list[Hit]] = LRU(cache_size)
        self._calibrations: LRU[Calibration] = LRU(4)
        self._random_text_vectors: LRU[np.ndarray] = LRU(4)
        self._loading = BackgroundLoad(self.load, lambda: self.models.text_model(self.store.current()))

    # Loading -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the text model and the vectors, and measure what chance finds, so the first query is fast."""
        self.calibration(self.store.current())

    def start_loading(self) -> None:
        """Load in a background thread (Datasette's startup), so the first query is fast."""
        self._loading.start()

    def wait_until_loaded(self, timeout: float | None) -> None:
        """Wait for a background load; raise its error, or say that it is still going."""
        self._loading.wait(timeout)

    def state(self) -> dict[str, Any]:
        """What this searcher loaded, for the status endpoint."""
        current = self.store.current()
        multilingual = self.models.multilingual_model(current)
        return {
            **self._loading.state(),
            "text_model": self.models.text_model(current),
            "multilingual_model": multilingual,
            "multilingual_loaded": multilingual is not None and self.models.models.is_loaded(multilingual),
            "route": self.choice.route,
            "vectors": current.vectors_from,
            "rows": current.size,
        }

    # Strength ----------------------------------------------------------------------------------
    def calibration(self, snapshot: Snapshot, readers: tuple[str, ...] = (CLIP,)) -> Calibration:
        """What random text finds in this catalog (see strength.py), read by each of ``readers``: the text
        models that read a query's terms, so that a query in any language is measured against chance as
        the model that read it sees chance, and "strong" reads the same whichever model that was. Made
        once per catalog state and models."""
        names = tuple(self.models.text_model(snapshot) if reader == CLIP else self.models.multilingual_model(snapshot)
                      for reader in readers)
        key = (snapshot.fingerprint, readers, names)
        found = self._calibrations.get(key)
        if found is None:
            best = [self.store.best_scores(self._random_vectors(snapshot, reader), snapshot) for reader in readers]
            found = Calibration(np.sort(np.concatenate(best)))
            self._calibrations.put(key, found)
        return found

    def _random_vectors(self, snapshot: Snapshot, reader: str) -> np.ndarray:
        embedder = self.models.text_embedder(snapshot, reader)
        vectors = self._random_text_vectors.get(embedder.identity)
        if vectors is None:
            texts = random_texts(foreign=reader == MULTILINGUAL)
            vectors = random_text_vectors(embedder.identity, embedder.encode_texts, embedder.dimension, texts)
            self._random_text_vectors.put(embedder.identity, vectors)
        return vectors

    def strong_score(self, readings: list[Reading], snapshot: Snapshot | None = None) -> float | None:
        """The cosine from which a hit of the query ``readings`` describe counts as strong here; None when it
        has row: terms."""
        calibration = self._calibration_of(readings, snapshot or self.store.current())
        return None if calibration is None else calibration.strong_score

    def _calibration_of(self, readings: list[Reading], snapshot: Snapshot) -> Calibration | None:
        """The calibration a query's strength is measured with; None for a query with row: terms."""
        if any(reading.row is not None for reading in readings):
            return None
        return self.calibration(snapshot, tuple(sorted({reading.reader for reading in readings})))

    # Queries -----------------------------------------------------------------------------------
    def readings(self, query: str, snapshot: Snapshot | None = None) -> list[Reading]:
        """The terms of ``query`` and the model that reads each (``row`` for a row's stored vector); quoted
        phrases are read as plain words."""
        return self.models.readings(split_query(query)[0], snapshot or self.store.current())

    def text_vector(self, text: str, snapshot: Snapshot | None = None, reader: str = CLIP) -> np.ndarray:
        return self.models.text_vector(text, snapshot or self.store.current(), reader)

    def row_vector(self, row_id: int, snapshot: Snapshot) -> np.ndarray:
        vector = self.store.embedding(row_id)
        if vector is None:
            raise QueryError(f"row:{row_id} is not in the catalog")
        if len(vector) != snapshot.dimension:
            raise QueryError("the catalog switched to another model while this query ran: run it again")
        return vector

    def query_vector(self, query: str, snapshot: Snapshot | None = None) -> tuple[np.ndarray, set[int]]:
        """The unit vector a query stands for, and the rows it names (left out of its results)."""
        snapshot = snapshot or self.store.current()
        picture_query = split_query(query)[0]
        try:
            return self._vector_of(picture_query, self.models.readings(picture_query, snapshot), snapshot)
        finally:
            went_elsewhere()  # the vector is scored by its caller, not in a pass shared with other queries

    def _vector_of(self, query: str, readings: list[Reading], snapshot: Snapshot) -> tuple[np.ndarray, set[int]]:
        total: np.ndarray | None = None
        exclude = set()
        for reading in readings:
            if reading.row is not None:
                vector = self.row_vector(reading.row, snapshot)
                if reading.weight > 0:
                    exclude.add(reading.row)
            else:
                vector = self.models.text_vector(reading.text or "", snapshot, reading.reader)
            total = reading.weight * vector if total is None else total + reading.weight * vector
        assert total is not None  # parse() never returns no terms
        norm = float(np.linalg.norm(total))
        if not math.isfinite(norm):
            raise QueryError(f"the weights in {query!r} are too large to add up")
        if norm < 1e-6:
            raise QueryError(f"the terms of {query!r} cancel each other out")
        return (total / norm).astype(np.float32), exclude

    def search(
        self, query: str, k: int = 10, min_score: MinScore = None, candidates: Candidates | None = None,
        snapshot: Snapshot | None = None,
    ) -> list[Hit]:
        """Rank the catalog against a text query (see :func:`parse.parse`); only among ``candidates`` when
        given. The query's words also rank the pictures whose text holds them, fused with the picture
        ranking (fusion.py), and ``"quoted words"`` must be in a hit's text. A query of text terms only
        gets each hit's strength; ``min_score="strong"`` keeps the strong ones, and text matches. A caller
        that also asks for the query's readings or strength passes the snapshot it asked them of: one
        state of the catalog for the whole request, read once."""
        try:
            return self._search(query, k, min_score, candidates, snapshot or self.store.current())
        finally:
            went_elsewhere()  # a search with no full pass (an index, a filter) is not waited for there

    def _search(self, query: str, k: int, min_score: MinScore, candidates: Candidates | None, snapshot: Snapshot) -> list[Hit]:
        key = (query, k, min_score, candidates and candidates.key, snapshot.fingerprint, self._text_version())
        hits = self._results.get(key)
        if hits is None:
            picture_query, _ = split_query(query)
            readings = self.models.readings(picture_query, snapshot)
            vector, exclude = self._vector_of(picture_query, readings, snapshot)
            calibration = self._calibration_of(readings, snapshot)
            cutoff: float | None = None if min_score is None or min_score == STRONG_ONLY else float(min_score)
            if min_score == STRONG_ONLY:
                if calibration is None:
                    raise QueryError("strong matches are measured for text queries only, not for row: terms")
                cutoff = calibration.strong_score
            ids = None if candidates is None else candidates.ids
            hits = self._ranked(vector, k, exclude, cutoff, ids, snapshot, text_query_of(query))
            if calibration is not None:
                hits = [calibration.rated(hit) for hit in hits]
            self._results.put(key, hits)
        return hits

    def _ranked(self, vector: np.ndarray, k: int, exclude: set[int], min_score: float | None, ids: np.ndarray | None,
                snapshot: Snapshot, text_query: TextQuery) -> list[Hit]:
        """The picture ranking, fused with the text ranking where the catalog has text and the query words."""
        catalog = self.store.catalog()
        has_text, tokenizer = text_search_columns(catalog)
        if not (has_text and text_query):
            return self.store.search(vector, k, exclude, min_score, ids, snapshot)
        if text_query.phrases:
            allowed = containing(catalog, text_query.phrases, tokenizer)
            ids = allowed if ids is None else ids[np.isin(ids, allowed)]
        found = matches(catalog, text_query.words, tokenizer, ids)
        for id_ in exclude:
            found.pop(id_, None)
        if not found:
            return self.store.search(vector, k, exclude, min_score, ids, snapshot)
        picture = self.store.search(vector, max(k, PICTURE_DEPTH), exclude, min_score, ids, snapshot)
        text = text_ranking(found, lambda among, count: self.store.search(vector, count, exclude, None, among, snapshot))
        return fuse(picture, text, k)

    def _text_version(self) -> Any:
        """What changes whenever the build's text stage records words (a search's cache key)."""
        return self.store.catalog().meta("text_version")

    def image_ranking(
        self, data: bytes, min_score: MinScore = None, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        max_decoded_megapixels: float | None = None,
    ) -> Callable[..., list[Hit]]:
        """Decode and embed a reference image or an upload once, exactly as ``build`` decodes files; the
        function returned, ``rank(k, candidates=None)``, ranks the catalog against it for any ``k``, so a
        search that asks for more hits (to show one per group of near-copies) never decodes it again."""
        if min_score == STRONG_ONLY:
            raise QueryError("strong matches are measured for text queries only, not for pictures")
        snapshot = self.store.current()
        embedder = self.models.image_embedder(snapshot)
        decoded = decode(data, max_megapixels, embedder.shrink_to(), max_decoded_megapixels)
        vector = embedder.encode_images([decoded.image])[0]
        del decoded

        cutoff = None if min_score is None else float(min_score)

        def rank(k: int, candidates: Candidates | None = None) -> list[Hit]:
            return self.store.search(vector, k, set(), cutoff, None if candidates is None else candidates.ids, snapshot)

        return rank

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
