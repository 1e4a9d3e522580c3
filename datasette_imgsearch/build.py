"""``build``: bring a catalog in line with an image folder, incrementally and crash-safely.

Unchanged files (same size and modification time) are not read. Changed and new files are hashed;
bytes the catalog already holds (a moved, renamed, copied or returning file) reuse the stored
embedding, so only genuinely new pixels reach the model. An *engine* reads, hashes, decodes and embeds
the files it is given and returns them in order: here, worker threads decode while the main thread
runs the model on full batches; with ``--engine ray``, a Ray cluster does both (ray_engine.py). This
process alone writes the catalog, one transaction per batch, so an interrupted build leaves a
consistent catalog and the next run carries on.
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
from typing import Any, Callable, Iterator

import numpy as np

from . import pixels
from .catalog import (
    REMOVED_TABLE,
    TABLE,
    Catalog,
    Change,
    Failure,
    Remove,
    Revive,
    SetMeta,
    StageEmbedding,
    StoredFile,
    Upsert,
    catalog_files,
    now,
    to_blob,
)
from .embed import DEFAULT_MODEL, Embedder, Preprocessor, load_embedder, model_key, same_model
from .errors import CatalogError
from .index import index_state, write_index
from .languages import NO_MODEL
from .plan import plan_reembed, plan_update
from .ray_engine import RayEngine, RayOptions
from .scan import FoundFile, ScanResult, scan

ENGINES = ("local", "ray")

# What a file with already-catalogued bytes takes over from the row that holds them.
REUSED_COLUMNS = (
    "format", "width", "height", "taken", "camera_make", "camera_model", "latitude", "longitude", "thumbnail", "embedding",
)


@dataclass
class BuildOptions:
    model: str | None = None
    text_model: str | None = None
    multilingual_model: str | None = None  # a name, a folder, or "none"; recorded for searches
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    max_megapixels: float = pixels.DEFAULT_MAX_MEGAPIXELS
    thumbnail_size: int | None = pixels.DEFAULT_THUMBNAIL_SIZE
    reembed: bool = False
    engine: str = "local"  # or "ray"
    ray: RayOptions = field(default_factory=RayOptions)


@dataclass
class Summary:
    added: int = 0
    moved: int = 0
    updated: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    index: str = ""
    notes: list[str] = field(default_factory=list)

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
    """What a worker learned about one file: its hash, and its pixels ready for the model (``features``)
    and then its vector, when its bytes are new."""

    found: FoundFile
    hash: str = ""
    features: Any = None
    facts: dict[str, Any] = field(default_factory=dict)
    error: pixels.ImageError | None = None
    vector: np.ndarray | None = None


def inspect_file(
    item: FoundFile, reusable: set[str] | frozenset[str], preprocessor: Callable[[], Preprocessor], options: BuildOptions
) -> Inspected:
    """Read and hash a file; decode and preprocess it only when its bytes are new (any thread or worker).
    ``preprocessor`` gives the model's preprocessing when it is first needed, so a run of moved files
    never loads the model."""
    result = Inspected(item)
    try:
        data = pixels.read_bytes(item.absolute)
        result.hash = hashlib.blake2b(data, digest_size=16).hexdigest()
        if result.hash in reusable:
            return result
        model = preprocessor()
        decoded = pixels.decode(data, options.max_megapixels, model.shrink_to(options.thumbnail_size))
        result.facts = {"format": decoded.format, "width": decoded.width, "height": decoded.height, **decoded.facts}
        if options.thumbnail_size:
            result.facts["thumbnail"] = pixels.thumbnail(decoded.image, options.thumbnail_size)
        result.features = model.preprocess(decoded.image)
    except pixels.ImageError as error:
        result.error = error
    return result


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
        self.created = not Path(db_path).exists()
        if self.created:
            self.folder = _existing_folder(
                folder, f"{db_path} is new: name the image folder to catalog, as in 'build {db_path} ./images'"
            )
        self.catalog = Catalog(db_path, create=True)
        try:
            self.model_name, self.reembed = self._choose_model()
            if not self.created:
                self.folder = _existing_folder(
                    Path(folder) if folder is not None else self.catalog.image_folder(),
                    f"{db_path} does not record its image folder: name it, as in 'build {db_path} ./images'",
                )
        except BaseException:
            self.catalog.close()
            raise
        self.summary = Summary()
        self._recorded_dimension = self.catalog.meta("dimension")
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        self._ray: RayEngine | None = None

    # Set-up ------------------------------------------------------------------------------------
    def _choose_model(self) -> tuple[str, bool]:
        """The model this run embeds with, and whether it re-embeds every row (switching models)."""
        recorded = self.catalog.meta("model")
        pending = self.catalog.meta("reembedding")
        asked = self.options.model
        if pending:
            if asked and not same_model(pending, asked):
                raise CatalogError(
                    f"an interrupted --reembed with {pending!r} is half done: finish it with --model {pending!r} --reembed"
                )
            return asked or pending, True
        if recorded and asked and not same_model(recorded, asked):
            if not self.options.reembed:
                raise CatalogError(
                    f"{self.catalog.path} was built with the model {recorded!r}, not {asked!r}: leave out --model to "
                    f"update it with {recorded!r}, or add --reembed to re-embed every image with {asked!r} (row ids are kept)"
                )
            return asked, True
        # Re-embedding with the same model is allowed (a clean slate); a new catalog has nothing to re-embed.
        return asked or recorded or DEFAULT_MODEL, self.options.reembed and bool(recorded)

    def catalog_is_empty(self) -> bool:
        """Whether the catalog holds no image and no error row (False if it cannot even be read)."""
        try:
            return self.catalog.count() == 0 and self.catalog.error_count() == 0
        except Exception:
            return False

    @property
    def model_loaded(self) -> bool:
        """Whether this run needed the model at all (moves, copies and no-op runs do not)."""
        return self._embedder is not None

    def embedder(self) -> Embedder:
        """The model, loaded the first time a file actually needs it (so a no-op run never loads it)."""
        with self._embedder_lock:
            if self._embedder is None:
                # With Ray the workers run the model; this process only checks it and records its facts.
                device = "cpu" if self.options.engine == "ray" else self.options.device
                embedder = load_embedder(self.model_name, device, self.options.precision)
                if not embedder.supports_images:
                    raise CatalogError(f"the model {self.model_name!r} cannot encode images; use a CLIP model")
                recorded = self._recorded_dimension
                if recorded and not self.reembed and int(recorded) != embedder.dimension:
                    raise CatalogError(
                        f"{self.model_name!r} gives {embedder.dimension}-dimensional vectors "
                        f"but the catalog holds {recorded}-dimensional ones"
                    )
                self._embedder = embedder
            return self._embedder

    def _model_facts(self) -> dict[str, Any]:
        """What the catalog records about the model it holds vectors of."""
        embedder = self.embedder()
        text_model = model_key(self.options.text_model) if self.options.text_model else None
        multilingual = self._multilingual_key()
        if same_model(self.catalog.meta("model") or "", self.model_name):  # a re-embed with the same model keeps them
            text_model = text_model or self.catalog.meta("text_model")
            multilingual = multilingual or self.catalog.meta("multilingual_model")
        return {
            "model": model_key(self.model_name),
            "text_model": text_model,
            "multilingual_model": multilingual,
            "dimension": embedder.dimension,
            "precision": (self._ray and self._ray.precision) or embedder.precision,
        }

    def _multilingual_key(self) -> str | None:
        name = self.options.multilingual_model
        return None if not name else NO_MODEL if name == NO_MODEL else model_key(name)

    def _check_multilingual(self) -> None:
        """Refuse a multilingual model that cannot read text into this catalog's space, before any work."""
        name = self.options.multilingual_model
        if not name or name == NO_MODEL:
            return
        multilingual = load_embedder(name, self.options.device, option="--multilingual-model")
        if not multilingual.supports_text:
            raise CatalogError(f"the multilingual model {name!r} cannot encode text")
        dimension = self.embedder().dimension
        if multilingual.dimension != dimension:
            raise CatalogError(
                f"the multilingual model {name!r} gives {multilingual.dimension}-dimensional vectors, but "
                f"{self.model_name!r} gives {dimension}-dimensional ones: it must be trained into the image model's space"
            )

    # The run -----------------------------------------------------------------------------------
    def run(self) -> Summary:
        with self.catalog.exclusive():
            # Recorded in one transaction before the first image, so an interrupted first build still
            # knows what it is (the dimension follows with the first vectors).
            facts = self.catalog.folder_facts(self.folder)
            if self.reembed:
                facts["reembedding"] = model_key(self.model_name)
            elif not self.catalog.meta("model"):
                facts["model"] = model_key(self.model_name)
            if self.options.text_model and not self.reembed:
                facts["text_model"] = model_key(self.options.text_model)
            if self.options.multilingual_model:
                self._check_multilingual()
                if not self.reembed:
                    facts["multilingual_model"] = self._multilingual_key()
            self.catalog.set_meta(**facts)
            found = scan(self.folder, skip=catalog_files(self.catalog.path))
            reembedded = self._reembed(found) if self.reembed else set()
            self._update(found, reembedded)
            self.catalog.set_meta(last_build=now())
            self.summary.index = self._refresh_index()
            if not self.catalog.settle():
                self.summary.notes.append(
                    "the catalog stays in WAL mode while another program has it open; "
                    "run build again with nothing serving it before copying it to read-only storage"
                )
        return self.summary

    def _reembed(self, found: ScanResult) -> set[str]:
        """Stage every row's vector from the new model, then switch the catalog to it in one transaction.

        Until the switch the catalog answers with the old model; a killed run resumes from the
        staged rows. Returns the paths of the re-embedded rows."""
        stored = self.catalog.stored_files()
        staged = self.catalog.reembedded_ids()
        todo = plan_reembed(found, stored, staged)
        changes: list[Change] = []
        for result in self._results(todo, reusable=set()):
            if result.vector is not None:
                changes.append(StageEmbedding(stored[result.found.path].id, to_blob(result.vector)))
            if len(changes) >= self.options.batch_size:
                self.catalog.write(changes)
                changes = []
        self.catalog.write(changes)
        staged = self.catalog.reembedded_ids()
        self.catalog.switch_model(**self._model_facts())
        reembedded = {path for path, row in stored.items() if row.id in staged}
        self.summary.updated += len(reembedded)
        return reembedded

    def _update(self, found: ScanResult, reembedded: set[str]) -> None:
        """Bring the rows in line with the folder, committing batch by batch in scan order."""
        stored = self.catalog.stored_files()
        sources = self.catalog.embedding_sources()
        plan = plan_update(found, stored)
        self.summary.unchanged += sum(1 for path in plan.unchanged if path not in reembedded)
        self.summary.failed += len(plan.failures)
        self._moves: dict[str, list[StoredFile]] = collections.defaultdict(list)
        for row in plan.vanished:
            self._moves[row.hash].append(row)
        self._moved_ids: set[int] = set()

        changes: list[Change] = list(plan.failures)
        for result in self._results(plan.to_read, reusable=set(sources)):
            if result.vector is not None:
                changes += self._embedded(result, stored)
            else:
                changes += self._reuse_or_fail(result, stored, sources)
            if len(changes) >= self.options.batch_size:
                self._commit(changes)
                changes = []
        self._commit(changes)

        leaving = [row for row in plan.vanished if row.id not in self._moved_ids]
        self.catalog.write(Remove(row.id) for row in leaving)
        self.summary.removed += len(leaving)
        self.catalog.clear_errors_not_in(plan.present)

    # Engines: each returns an Inspected per item, in order, with the vector of every new picture ----
    def _results(self, items: list[FoundFile], reusable: set[str]) -> Iterator[Inspected]:
        total = len(items)
        if self.options.engine == "ray" and items:
            engine = self._ray_engine()
            results = engine.results(items, reusable, self.model_name, self.options, self.folder, self.embedder().pixels_only())
        else:
            results = self._embedded_locally(items, reusable)
        for finished, result in enumerate(results, 1):
            yield result
            if self.progress:
                self.progress(finished, total)

    def _ray_engine(self) -> RayEngine:
        if self._ray is None:
            self.embedder()  # the model is checked here (images, dimension) before any worker starts
            self._ray = RayEngine(self.options.ray)
        return self._ray

    def close(self) -> None:
        self.catalog.close()
        if self._ray is not None:
            self._ray.close()

    def _embedded_locally(self, items: list[FoundFile], reusable: set[str]) -> Iterator[Inspected]:
        """Worker threads inspect; this thread runs the model on full batches, as the threads go on reading."""
        waiting: list[Inspected] = []
        pictures = 0
        for result in self._inspected(items, reusable):
            waiting.append(result)
            pictures += result.features is not None
            if pictures >= self.options.batch_size or len(waiting) >= 4 * self.options.batch_size:
                yield from self._encoded(waiting)
                waiting, pictures = [], 0
        yield from self._encoded(waiting)

    def _encoded(self, results: list[Inspected]) -> list[Inspected]:
        pictures = [result for result in results if result.features is not None]
        if pictures:
            vectors = self.embedder().encode_preprocessed([result.features for result in pictures])
            for result, vector in zip(pictures, vectors):
                result.vector, result.features = vector, None
        return results

    def _inspected(self, items: list[FoundFile], reusable: set[str]) -> Iterator[Inspected]:
        """Inspect ``items`` (:func:`inspect_file`) in worker threads; yield the results in order."""
        with ThreadPoolExecutor(max_workers=max(1, self.options.workers)) as pool:
            in_flight: collections.deque[Future[Inspected]] = collections.deque()
            queue = iter(items)
            try:
                for _ in range(len(items)):
                    while len(in_flight) < max(4, self.options.batch_size * 3):
                        item = next(queue, None)
                        if item is None:
                            break
                        in_flight.append(pool.submit(self._inspect, item, reusable))
                    yield in_flight.popleft().result()
            finally:
                for future in in_flight:
                    future.cancel()

    def _inspect(self, item: FoundFile, reusable: set[str]) -> Inspected:
        return inspect_file(item, reusable, self.embedder, self.options)

    # Changes ------------------------------------------------------------------------------------
    def _embedded(self, item: Inspected, stored: dict[str, StoredFile]) -> list[Change]:
        """The row of a file whose new pixels were embedded."""
        values = {**file_facts(item.found, item.hash), **item.facts, "embedding": to_blob(item.vector)}
        values.setdefault("thumbnail", None)
        known = stored.get(item.found.path)
        if known:
            self.summary.updated += 1
        else:
            self.summary.added += 1
        return [Upsert(values, known.id if known else None)]

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

    def _commit(self, changes: list[Change]) -> None:
        if any(isinstance(change, Upsert) and "embedding" in change.values for change in changes) and \
                not self.catalog.meta("dimension"):
            # The first vectors and the dimension they must all share land in one transaction.
            changes = [SetMeta(self._model_facts())] + changes
        self.catalog.write(changes)

    def _refresh_index(self) -> str:
        state = index_state(self.catalog)
        if state.fresh:
            return "index up to date"
        path = write_index(self.catalog)
        return f"index written to {path.name}"


def _existing_folder(folder: str | Path | None, missing_message: str) -> Path:
    if folder is None:
        raise CatalogError(missing_message)
    chosen = Path(folder)
    if not chosen.exists():
        raise CatalogError(f"the image folder {chosen} does not exist")
    if not chosen.is_dir():
        raise CatalogError(f"{chosen} is not a folder: build takes the folder that holds the images")
    return chosen.resolve()


def build(db_path: str | Path, folder: str | Path | None, options: BuildOptions | None = None,
          progress: Callable[[int, int], None] | None = None) -> Summary:
    """Build or update the catalog at ``db_path`` from ``folder``; see :class:`Builder`.

    A first build that fails before it catalogued anything leaves no file behind."""
    builder = Builder(db_path, folder, options or BuildOptions(), progress)
    try:
        return builder.run()
    except BaseException:
        if builder.created and builder.catalog_is_empty():
            builder.catalog.close()
            for path in catalog_files(db_path):
                path.unlink(missing_ok=True)
        raise
    finally:
        builder.close()
