"""``build``: bring a catalog in line with an image folder, incrementally and crash-safely.

Unchanged files (same size and modification time) are not read. Changed and new files are hashed;
bytes the catalog already holds (a moved, renamed, copied or returning file) reuse the stored
embedding, so only genuinely new pixels reach the model. Worker threads read, hash, decode and
preprocess while the main thread runs the model on full batches and commits each batch in one
transaction, so an interrupted build leaves a consistent catalog and the next run carries on.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import pixels
from .catalog import (
    REMOVED_TABLE,
    TABLE,
    Catalog,
    CatalogError,
    Change,
    Failure,
    Remove,
    Revive,
    StoredFile,
    Upsert,
    catalog_files,
    clear_errors_not_in,
    to_blob,
)
from .embed import DEFAULT_MODEL, Embedder, load_embedder, model_key, same_model
from .index import index_state, write_index
from .scan import FoundFile, scan

# What a file with already-catalogued bytes takes over from the row that holds them.
REUSED_COLUMNS = (
    "format", "width", "height", "taken", "camera_make", "camera_model", "latitude", "longitude", "thumbnail", "embedding",
)


@dataclass
class BuildOptions:
    model: str | None = None
    text_model: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 32
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    max_megapixels: float = pixels.DEFAULT_MAX_MEGAPIXELS
    thumbnail_size: int | None = pixels.DEFAULT_THUMBNAIL_SIZE
    reembed: bool = False


@dataclass
class Summary:
    added: int = 0
    moved: int = 0
    updated: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    index: str = ""

    @property
    def total(self) -> int:
        return self.added + self.moved + self.updated + self.removed + self.failed + self.unchanged

    def line(self) -> str:
        return (
            f"{self.total} images: {self.added} added, {self.moved} moved, {self.updated} updated, "
            f"{self.removed} removed, {self.failed} failed, {self.unchanged} unchanged"
        )


@dataclass
class Inspected:
    """What a worker learned about one file: its hash, and pixels ready for the model when needed."""

    found: FoundFile
    hash: str = ""
    features: Any = None
    facts: dict[str, Any] = field(default_factory=dict)
    error: pixels.ImageError | None = None


def file_facts(found: FoundFile, hash_: str) -> dict[str, Any]:
    """The columns that come from the file system rather than from the pixels."""
    folder, _, name = found.path.rpartition("/")
    modified = datetime.datetime.fromtimestamp(found.mtime_ns / 1e9, datetime.timezone.utc)
    return {
        "path": found.path,
        "name": name,
        "folder": folder,
        "size": found.size,
        "modified": modified.isoformat(timespec="seconds"),
        "mtime_ns": found.mtime_ns,
        "hash": hash_,
    }


class Builder:
    """One run of ``build``; see the module docstring for what it guarantees."""

    def __init__(
        self,
        db_path: str | Path,
        folder: str | Path | None,
        options: BuildOptions,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.options = options
        self.progress = progress
        self.catalog = Catalog(db_path, create=True)
        self.model_name = self._choose_model()
        self.folder = self._choose_folder(folder)
        self.summary = Summary()
        self._recorded_dimension = self.catalog.meta("dimension")
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()

    # Set-up ------------------------------------------------------------------------------------
    def _choose_model(self) -> str:
        recorded = self.catalog.meta("model")
        pending = self.catalog.meta("reembedding")
        asked = self.options.model
        if pending:
            if asked and not same_model(pending, asked):
                raise CatalogError(
                    f"an interrupted --reembed with {pending!r} is half done: finish it with --model {pending!r} --reembed"
                )
            self.options.reembed = True
            return asked or pending
        if recorded and asked and not same_model(recorded, asked):
            if not self.options.reembed:
                raise CatalogError(
                    f"{self.catalog.path} was built with the model {recorded!r}, not {asked!r}: leave out --model to "
                    f"update it with {recorded!r}, or add --reembed to re-embed every image with {asked!r} (row ids are kept)"
                )
        elif self.options.reembed and (not asked or same_model(recorded or "", asked)):
            self.options.reembed = bool(recorded)  # re-embedding with the same model is allowed: a clean slate
        return asked or recorded or DEFAULT_MODEL

    def _choose_folder(self, folder: str | Path | None) -> Path:
        chosen = Path(folder) if folder is not None else self.catalog.image_folder()
        if chosen is None:
            raise CatalogError(
                f"{self.catalog.path} is new: name the image folder to catalog, as in 'build {self.catalog.path} ./images'"
            )
        if not chosen.exists():
            raise CatalogError(f"the image folder {chosen} does not exist")
        if not chosen.is_dir():
            raise CatalogError(f"{chosen} is not a folder: build takes the folder that holds the images")
        return chosen.resolve()

    @property
    def model_loaded(self) -> bool:
        """Whether this run needed the model at all (moves, copies and no-op runs do not)."""
        return self._embedder is not None

    def embedder(self) -> Embedder:
        """The model, loaded the first time a file actually needs it (so a no-op run never loads it)."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = load_embedder(self.model_name, self.options.device, self.options.precision)
                if not self._embedder.supports_images:
                    raise CatalogError(f"the model {self.model_name!r} cannot encode images; use a CLIP model")
                recorded = self._recorded_dimension
                if recorded and not self.options.reembed and int(recorded) != self._embedder.dimension:
                    raise CatalogError(
                        f"{self.model_name!r} gives {self._embedder.dimension}-dimensional vectors "
                        f"but the catalog holds {recorded}-dimensional ones"
                    )
            return self._embedder

    # The run -----------------------------------------------------------------------------------
    def run(self) -> Summary:
        found = scan(self.folder, skip=catalog_files(self.catalog.path))
        stored = self.catalog.stored_files()
        sources = self.catalog.embedding_sources()
        done_through = int(self.catalog.meta("reembed_next_id", 0)) if self.options.reembed else 0
        if self.options.reembed:
            self.catalog.set_meta(reembedding=model_key(self.model_name), reembed_next_id=done_through)

        seen = {f.path for f in found.files}
        candidates = []
        for item in found.files:
            known = stored.get(item.path)
            stale = self.options.reembed and known is not None and known.id >= done_through
            if known and known.size == item.size and known.mtime_ns == item.mtime_ns and not stale:
                self.summary.unchanged += 1
            else:
                candidates.append(item)
        if self.options.reembed:  # re-embed in id order, so progress can be recorded as one number
            candidates.sort(key=lambda f: stored[f.path].id if f.path in stored else 1 << 62)
        vanished = [
            row for path, row in stored.items()
            if path not in seen and path not in found.unreadable_files and not found.covers(path)
        ]
        self._moves: dict[str, list[StoredFile]] = collections.defaultdict(list)
        for row in vanished:
            self._moves[row.hash].append(row)
        self._moved_ids: set[int] = set()
        reusable = set() if self.options.reembed else set(sources)

        pending: list[Change] = []
        pending += [Failure(name, "bad-name", "the file name is not valid UTF-8; rename the file") for name in found.bad_names]
        pending += [Failure(path, "unreadable", reason) for path, reason in found.unreadable_files.items()]
        self.summary.failed += len(found.bad_names) + len(found.unreadable_files)
        self._process(candidates, stored, sources, reusable, pending)

        leaving = [row for row in vanished if row.id not in self._moved_ids]
        self.catalog.write(Remove(row.id) for row in leaving)
        self.summary.removed += len(leaving)
        clear_errors_not_in(self.catalog, seen | set(found.bad_names) | set(found.unreadable_files))
        self._record_meta()
        self.summary.index = self._refresh_index()
        return self.summary

    def _process(
        self,
        candidates: list[FoundFile],
        stored: dict[str, StoredFile],
        sources: dict[str, tuple[str, int]],
        reusable: set[str],
        pending: list[Change],
    ) -> None:
        """Feed candidates through the worker threads and commit their changes batch by batch."""
        batch: list[Inspected] = []
        next_id = 0  # with --reembed: every stored row below this id is committed
        with ThreadPoolExecutor(max_workers=max(1, self.options.workers)) as pool:
            in_flight: collections.deque[Future[Inspected]] = collections.deque()
            queue = iter(candidates)
            try:
                for finished in range(1, len(candidates) + 1):
                    while len(in_flight) < max(4, self.options.batch_size * 3):
                        item = next(queue, None)
                        if item is None:
                            break
                        in_flight.append(pool.submit(self._inspect, item, reusable))
                    result = in_flight.popleft().result()
                    if result.found.path in stored:
                        next_id = max(next_id, stored[result.found.path].id + 1)
                    if result.features is not None:
                        batch.append(result)
                    else:
                        pending += self._reuse_or_fail(result, stored, sources)
                    # Commit only when nothing read earlier is still waiting for the model.
                    if len(batch) >= self.options.batch_size or (not batch and len(pending) >= self.options.batch_size):
                        self._commit(pending + self._embed(batch, stored), next_id)
                        pending, batch = [], []
                    if self.progress:
                        self.progress(finished, len(candidates))
                self._commit(pending + self._embed(batch, stored), next_id)
            except BaseException:
                for future in in_flight:
                    future.cancel()
                raise

    def _inspect(self, item: FoundFile, reusable: set[str]) -> Inspected:
        """Worker thread: read and hash the file; decode and preprocess it only when its bytes are new."""
        result = Inspected(item)
        try:
            data = pixels.read_bytes(item.absolute)
            result.hash = hashlib.blake2b(data, digest_size=16).hexdigest()
            if result.hash in reusable:
                return result
            embedder = self.embedder()
            decoded = pixels.decode(data, self.options.max_megapixels, embedder.shrink_to(self.options.thumbnail_size))
            result.facts = {"format": decoded.format, "width": decoded.width, "height": decoded.height, **decoded.facts}
            if self.options.thumbnail_size:
                result.facts["thumbnail"] = pixels.thumbnail(decoded.image, self.options.thumbnail_size)
            result.features = embedder.preprocess(decoded.image)
        except pixels.ImageError as error:
            result.error = error
        return result

    def _embed(self, batch: list[Inspected], stored: dict[str, StoredFile]) -> list[Change]:
        if not batch:
            return []
        vectors = self.embedder().encode_preprocessed([item.features for item in batch])
        changes: list[Change] = []
        for item, vector in zip(batch, vectors):
            values = {**file_facts(item.found, item.hash), **item.facts, "embedding": to_blob(vector)}
            values.setdefault("thumbnail", None)
            known = stored.get(item.found.path)
            changes.append(Upsert(values, known.id if known else None))
            if known:
                self.summary.updated += 1
            else:
                self.summary.added += 1
        return changes

    def _reuse_or_fail(self, item: Inspected, stored: dict[str, StoredFile], sources: dict[str, tuple[str, int]]) -> list[Change]:
        """Changes for a file whose bytes are already catalogued, or that could not be read."""
        path = item.found.path
        known = stored.get(path)
        if item.error is not None:
            self.summary.failed += 1
            failure = Failure(path, item.error.kind, item.error.message)
            return [Remove(known.id), failure] if known else [failure]
        facts = file_facts(item.found, item.hash)
        if known and known.hash == item.hash:  # touched, not changed
            self.summary.unchanged += 1
            return [Upsert(facts, known.id)]
        if not known and self._moves.get(item.hash):
            row = self._moves[item.hash].pop()
            self._moved_ids.add(row.id)
            self.summary.moved += 1
            return [Upsert(facts, row.id)]
        table, source_id = sources[item.hash]
        source = self.catalog.row(table, source_id)
        values = {**facts, **{c: source[c] for c in REUSED_COLUMNS}}
        if known:
            self.summary.updated += 1
            return [Upsert(values, known.id)]
        self.summary.added += 1
        if table == REMOVED_TABLE:
            sources[item.hash] = (TABLE, source_id)  # a second copy reuses the revived row
            return [Revive(source_id, facts)]
        return [Upsert(values)]

    def _commit(self, changes: list[Change], next_id: int) -> None:
        self.catalog.write(changes)
        if self.options.reembed:  # an interrupted --reembed resumes here instead of mixing two models
            self.catalog.set_meta(reembed_next_id=next_id)

    def _record_meta(self) -> None:
        values: dict[str, Any] = {"model": model_key(self.model_name), "last_build": _now()}
        if self._embedder is not None:
            values["dimension"] = self._embedder.dimension
            values["precision"] = self.options.precision
        if self.options.text_model:
            values["text_model"] = model_key(self.options.text_model)
        self.catalog.set_meta(**values)
        self.catalog.set_image_folder(self.folder)
        if self.options.reembed:
            with self.catalog.db.conn:
                self.catalog.db.conn.execute("delete from imgsearch_meta where key in ('reembedding', 'reembed_next_id')")

    def _refresh_index(self) -> str:
        state = index_state(self.catalog)
        if state.fresh:
            return "index up to date"
        path = write_index(self.catalog)
        return f"index written to {path.name}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build(db_path: str | Path, folder: str | Path | None, options: BuildOptions | None = None,
          progress: Callable[[int, int], None] | None = None) -> Summary:
    """Build or update the catalog at ``db_path`` from ``folder``; see :class:`Builder`."""
    builder = Builder(db_path, folder, options or BuildOptions(), progress)
    try:
        return builder.run()
    finally:
        builder.catalog.close()
