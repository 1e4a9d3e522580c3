"""The models that read a query for one catalog: which text model reads each term, the image model for
pictures, each checked against the dimension of the catalog's vectors, and the text vectors they made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.models.cache import MODELS, ModelCache
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.models.embedder import Embedder
from datasette_imgsearch.models.languages import CLIP, multilingual_model, reader_of
from datasette_imgsearch.search.parse import parse
from datasette_imgsearch.vectors.snapshot import Snapshot


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


class QueryModels:
    """The models of one catalog's queries: the catalog's own (as a snapshot records them) unless the
    choice overrides them. Every method takes the snapshot a query runs against, so a query that runs
    while a re-embed switches models never mixes the old model with the new vectors."""

    def __init__(self, choice: ModelChoice, models: ModelCache = MODELS, cache_size: int = 512) -> None:
        self.choice = choice
        self.models = models
        self._text_vectors: LRU[np.ndarray] = LRU(cache_size)

    def image_model(self, snapshot: Snapshot) -> str:
        return self.choice.model or snapshot.model

    def text_model(self, snapshot: Snapshot) -> str:
        return self.choice.text_model or snapshot.text_model or self.choice.model or snapshot.model

    def multilingual_model(self, snapshot: Snapshot) -> str | None:
        return multilingual_model(snapshot.model, snapshot.multilingual_model, self.choice.multilingual_model)

    def readings(self, query: str, snapshot: Snapshot) -> list[Reading]:
        """The terms of ``query`` and the model that reads each (``row`` for a row's stored vector)."""
        multilingual = self.multilingual_model(snapshot)
        readings = []
        for term in parse(query):
            if term.row is not None:
                readings.append(Reading(term.weight, None, term.row, "row", None))
                continue
            reader = reader_of(term.text or "", self.choice.route, multilingual)
            name = self.text_model(snapshot) if reader == CLIP else multilingual
            readings.append(Reading(term.weight, term.text, None, reader, name))
        return readings

    def text_embedder(self, snapshot: Snapshot, reader: str = CLIP) -> Embedder:
        """The text model that reads terms routed to ``reader``; the multilingual one loads at its first term."""
        device, precision, runtime, onnx = self.choice.device, self.choice.precision, self.choice.runtime, self.choice.onnx
        if reader == CLIP:
            return self._checked(self.models.load(self.text_model(snapshot), device, precision, runtime=runtime, onnx=onnx),
                                 snapshot)
        name = self.multilingual_model(snapshot)
        assert name is not None  # reader_of routes nothing to a missing multilingual model
        embedder = self.models.load(name, device, precision, option="--multilingual-model", runtime=runtime, onnx=onnx)
        if not embedder.supports_text:
            raise ModelError(f"the multilingual model {name!r} cannot encode text")
        return self._checked(embedder, snapshot)

    def image_embedder(self, snapshot: Snapshot) -> Embedder:
        choice = self.choice
        embedder = self.models.load(self.image_model(snapshot), choice.device, choice.precision, runtime=choice.runtime,
                                    onnx=choice.onnx)
        return self._checked(embedder, snapshot)

    def text_vector(self, text: str, snapshot: Snapshot, reader: str = CLIP) -> np.ndarray:
        key = (reader, self.text_model(snapshot), self.multilingual_model(snapshot), text)
        vector = self._text_vectors.get(key)
        if vector is None:
            try:
                embedder = self.text_embedder(snapshot, reader)
            except ModelError as error:
                if reader == CLIP:
                    raise
                raise ModelError(f"{text!r} is not English-like, so the multilingual text model reads it: {error}") from None
            vector = embedder.encode_text(text)
            self._text_vectors.put(key, vector)
        return vector

    @staticmethod
    def _checked(embedder: Embedder, snapshot: Snapshot) -> Embedder:
        if embedder.dimension != snapshot.dimension:
            raise ModelError(
                f"the model {embedder.name!r} gives {embedder.dimension}-dimensional vectors, but this catalog "
                f"holds {snapshot.dimension}-dimensional ones from {snapshot.model!r}: query it with that model"
            )
        return embedder
