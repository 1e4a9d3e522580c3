"""The build's text stage: read the words in every picture that has not been read yet.

It runs after the pictures are embedded and indexed, so a new picture is searchable by what it shows
at once and by what it says as soon as this stage reaches it. A row's ``text`` is null until it is read
(and again when its bytes change), so the stage picks up where a killed build stopped, fills in a
catalog built with ``--no-ocr`` without embedding anything again, and a picture with no words, or words
the model cannot make out, is read once (``text`` empty), never an error row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from datasette_imgsearch.catalog.catalog import Catalog, image_columns
from datasette_imgsearch.catalog.changes import SetText
from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.images import pixels
from datasette_imgsearch.text.reader import READ_SIDE, TextReader, lines_json

COMMIT_SECONDS = 2.0  # what a killed build can lose of this stage
COMMIT_ROWS = 64


@dataclass
class TextSummary:
    read: int = 0
    with_text: int = 0
    skipped: int = 0  # files that could not be opened again since they were embedded: tried next build
    seconds: float = 0.0

    def line(self) -> str:
        if not (self.read or self.skipped):
            return "text up to date"
        skipped = f", {self.skipped} skipped (unreadable now; tried again next build)" if self.skipped else ""
        return f"text read in {self.read} pictures ({self.with_text} with words) in {self.seconds:.1f} s{skipped}"


def unread_count(catalog: Catalog) -> int:
    return int(catalog.db.execute(f"select count(*) from [{TABLE}] where text is null").fetchone()[0])


def text_line(catalog: Catalog) -> str | None:
    """How far the words of a catalog's pictures are read, for ``info`` and the status page; None for a
    catalog from before words were read (schema 5 and earlier)."""
    columns = image_columns(catalog.db.conn)
    if "text" not in columns:
        return None
    pictures = "where media is not 'video' and media is not 'frame'" if "media" in columns else ""  # videos are not read
    read, with_words, unread = catalog.db.execute(
        f"select count(text), count(nullif(text, '')), count(*) - count(text) from [{TABLE}] {pictures}").fetchone()
    waiting = f"; {unread:,} not read yet (a build with OCR reads them)" if unread else ""
    return f"read in {read:,} pictures, {with_words:,} with words{waiting}"


def update_text(catalog: Catalog, folder: Path, reader: Callable[[], TextReader], max_megapixels: float,
                progress: Callable[[int, int], None] | None = None) -> TextSummary:
    """Read the words of every row whose ``text`` is null, committing every few seconds. ``reader`` gives
    the OCR engine when the first picture needs it, so an up-to-date catalog never loads it."""
    summary = TextSummary()
    todo = catalog.db.execute(f"select id, path, hash from [{TABLE}] where text is null order by id").fetchall()
    if not todo:
        return summary
    engine = reader()
    started = last_commit = time.perf_counter()
    batch: list[SetText] = []
    for done, (id_, path, hash_) in enumerate(todo, 1):
        try:
            data = pixels.read_bytes(folder / path, pixels.max_file_bytes(max_megapixels))
            image = pixels.decode(data, max_megapixels, (1, READ_SIDE)).image
        except pixels.ImageError:
            summary.skipped += 1
            continue
        lines = engine.read(image)
        batch.append(SetText(id_, hash_, "\n".join(line.text for line in lines), lines_json(lines)))
        summary.read += 1
        summary.with_text += bool(lines)
        if len(batch) >= COMMIT_ROWS or time.perf_counter() - last_commit >= COMMIT_SECONDS:
            catalog.write(batch)
            batch, last_commit = [], time.perf_counter()
        if progress:
            progress(done, len(todo))
    catalog.write(batch)
    summary.seconds = time.perf_counter() - started
    return summary
