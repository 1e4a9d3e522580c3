"""What every engine is given and what it gives back: each item inspected, in order, with the vector of
every new picture. The builder does the rest (plan, changes, commits) the same way for all of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from datasette_imgsearch.build.inspect import Inspected
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.images.scan import FoundFile
from datasette_imgsearch.models.embedder import Embedder


@dataclass(frozen=True)
class EngineJob:
    """One build's model, options and folder, and the driver's model (loaded at its first call, so a run
    of moved files never loads it)."""

    model: str
    options: BuildOptions
    folder: Path
    embedder: Callable[[], Embedder]


class Engine(Protocol):
    """Reads, hashes, decodes and embeds the files it is given; never writes the catalog."""

    precision: str | None  # as the engine's own workers ran the model; None where the driver's embedder did

    def results(self, items: list[FoundFile], reusable: set[str]) -> Iterator[Inspected]:
        """An :class:`Inspected` per item, in the order given, with ``vector`` set for new pixels; the
        bytes whose hash is in ``reusable`` are hashed, never decoded."""
        ...

    def close(self) -> None: ...
