"""What a build is asked to do (its options) and what it did (its summary line)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from datasette_imgsearch.images import pixels
from datasette_imgsearch.models.choice import ModelChoice


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: the cluster in RAY_ADDRESS, else a local Ray started for this build
    encoders: int = 1  # Encode actors (one GPU each with --device cuda)


@dataclass
class BuildOptions:
    models: ModelChoice = field(default_factory=ModelChoice)  # the multilingual model is recorded for searches
    batch_size: int = 32
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    max_megapixels: float = pixels.DEFAULT_MAX_MEGAPIXELS
    thumbnail_size: int | None = pixels.DEFAULT_THUMBNAIL_SIZE
    reembed: bool = False
    engine: str = "local"  # a name in engines.ENGINES
    ray: RayOptions = field(default_factory=RayOptions)
    ocr: bool | None = None  # read the words in the pictures; None: when the ocr extra is installed
    commit_every: int | None = None  # files per committed transaction; None: batch_size

    @property
    def commit_size(self) -> int:
        return self.commit_every or self.batch_size


@dataclass
class Summary:
    added: int = 0
    moved: int = 0
    updated: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    index: str = ""
    duplicates: str = ""
    text: str = ""
    runtime: str = ""  # what ran the image model, when one ran
    folder: Path | None = None  # the folder it catalogued
    commits: int = 0  # transactions that wrote files' rows
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        """How many rows it added, moved, updated or removed."""
        return self.added + self.moved + self.updated + self.removed

    @property
    def total(self) -> int:
        return self.added + self.moved + self.updated + self.removed + self.failed + self.unchanged

    def line(self) -> str:
        return (
            f"{self.total} images: {self.added} added, {self.moved} moved, {self.updated} updated, "
            f"{self.removed} removed, {self.failed} failed, {self.unchanged} unchanged"
        )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a build, with how many batches it had committed: those are kept."""

    def __init__(self, batches: int) -> None:
        super().__init__(batches)
        self.batches = batches
