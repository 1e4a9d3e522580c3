"""``build``: bring a catalog in line with an image folder, incrementally and crash-safely.

Unchanged files (same size and modification time) are not read. Changed and new files are hashed;
bytes the catalog already holds (a moved, renamed, copied or returning file) reuse the stored
embedding, so only genuinely new pixels reach the model. An *engine* (engines/) reads, hashes, decodes
and embeds the files it is given and returns them in order. This process alone writes the catalog, one
transaction per batch, so an interrupted build leaves a consistent catalog and the next run carries on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from datasette_imgsearch.build.engines import ENGINES
from datasette_imgsearch.build.engines.base import Engine, EngineJob
from datasette_imgsearch.build.inspect import Inspected
from datasette_imgsearch.build.model import BuildModel
from datasette_imgsearch.build.options import BuildOptions, Interrupted, Summary
from datasette_imgsearch.build.plan import plan_reembed, plan_update
from datasette_imgsearch.build.rows import RowChanges
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.changes import Change, Remove, SetMeta, StageEmbedding, SwitchModel, Upsert
from datasette_imgsearch.catalog.schema import catalog_files, now, to_blob
from datasette_imgsearch.catalog.writing import exclusive, settle
from datasette_imgsearch.duplicates.stage import update_groups
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.images.scan import FoundFile, ScanResult, scan
from datasette_imgsearch.images.video import VIDEO_INSTALL
from datasette_imgsearch.models.cache import MODELS, ModelCache
from datasette_imgsearch.text.reader import OCR_INSTALL, ocr_available, shared_reader
from datasette_imgsearch.text.stage import unread_count, update_text
from datasette_imgsearch.vectors.index import index_state, write_index


class Builder:
    """One run of ``build``; see the module docstring for what it guarantees. ``models`` is where the
    model is loaded from (the process's shared cache unless given)."""

    def __init__(
        self,
        db_path: str | Path,
        folder: str | Path | None,
        options: BuildOptions,
        progress: Callable[[int, int], None] | None = None,
        models: ModelCache = MODELS,
        text_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if options.engine not in ENGINES:
            raise CatalogError(f"unknown engine {options.engine!r}: use one of {', '.join(ENGINES)}")
        if options.ocr and not ocr_available():
            raise CatalogError(f"--ocr needs the OCR model, which is not installed: {OCR_INSTALL}")
        self.options = options
        self.progress = progress
        self.text_progress = text_progress
        self.created = not Path(db_path).exists()
        if self.created:
            self.folder = _existing_folder(
                folder, f"{db_path} is new: name the image folder to catalog, as in 'build {db_path} ./images'"
            )
        self.catalog = Catalog(db_path, create=True)
        try:
            self.model = BuildModel(self.catalog, options, models)
            if not self.created:
                self.folder = _existing_folder(
                    Path(folder) if folder is not None else self.catalog.image_folder(),
                    f"{db_path} does not record its image folder: name it, as in 'build {db_path} ./images'",
                )
        except BaseException:
            self.catalog.close()
            raise
        self.summary = Summary()
        self.committed_batches = 0
        self._engine: Engine | None = None

    def catalog_is_empty(self) -> bool:
        """Whether the catalog holds no image and no error row (False if it cannot even be read)."""
        try:
            return self.catalog.count() == 0 and self.catalog.error_count() == 0
        except Exception:
            return False

    def run(self) -> Summary:
        with exclusive(self.catalog):
            self.catalog.set_meta(**self.catalog.folder_facts(self.folder), **self.model.first_facts())
            found = scan(self.folder, skip=catalog_files(self.catalog.path))
            if found.videos_skipped:
                self.summary.notes.append(f"{found.videos_skipped} video files were not catalogued: {VIDEO_INSTALL}")
            reembedded = self._reembed(found) if self.model.reembed else set()
            self._update(found, reembedded)
            self.summary.runtime = self.model.runtime_line()
            self.summary.folder = self.folder
            self.summary.commits = self.committed_batches
            self.summary.index = self._refresh_index()  # first: a large catalog's groups ask it for neighbours
            self.summary.duplicates = update_groups(self.catalog).line()
            self.summary.text = self._read_text()
            self.catalog.set_meta(last_build=now())
            if not settle(self.catalog):
                self.summary.notes.append(
                    "the catalog stays in WAL mode while another program has it open; "
                    "run build again with nothing serving it before copying it to read-only storage"
                )
        return self.summary

    def close(self) -> None:
        self.catalog.close()
        if self._engine is not None:
            self._engine.close()

    def _reembed(self, found: ScanResult) -> set[str]:
        """Stage every row's vector from the new model, then switch the catalog to it in one transaction.

        Until the switch the catalog answers with the old model; a killed run resumes from the
        staged rows. Returns the paths of the re-embedded rows."""
        stored = self.catalog.stored_files()
        todo = plan_reembed(found, stored, self.catalog.reembedded_ids())
        changes: list[Change] = []
        for result in self._results(todo, reusable=set()):
            if result.vector is not None:
                changes += _staged(self.catalog, stored[result.found.path].id, result)
            if len(changes) >= self.options.commit_size:
                self._write(changes)
                changes = []
        self._write(changes)
        staged = self.catalog.reembedded_ids()
        self.catalog.write([SwitchModel(self._model_facts())])
        reembedded = {path for path, row in stored.items() if row.id in staged}
        self.summary.updated += len(reembedded)
        return reembedded

    def _update(self, found: ScanResult, reembedded: set[str]) -> None:
        """Bring the rows in line with the folder, committing batch by batch in scan order."""
        stored = self.catalog.stored_files()
        plan = plan_update(found, stored, self.catalog.failed_files())
        self.summary.unchanged += sum(1 for path in plan.unchanged if path not in reembedded)
        self.summary.failed += len(plan.failures) + len(plan.still_failing)
        rows = RowChanges(self.catalog, plan, stored, self.summary)
        changes: list[Change] = list(plan.failures)
        for result in self._results(plan.to_read, reusable=set(rows.sources)):
            changes += rows.of(result)
            if len(changes) >= self.options.commit_size:
                self._commit(changes)
                changes = []
        self._commit(changes)
        leaving = [row for row in plan.vanished if row.id not in rows.moved_ids]
        self.catalog.write(Remove(row.id) for row in leaving)
        self.summary.removed += len(leaving)
        self.catalog.clear_errors_not_in(plan.present)

    def _results(self, items: list[FoundFile], reusable: set[str]) -> Iterator[Inspected]:
        """Each item inspected by the engine (started at the first file to read), reporting progress."""
        if not items:
            return
        if self._engine is None:
            job = EngineJob(self.model.name, self.options, self.folder, self.model.embedder)
            self._engine = ENGINES[self.options.engine](job)
        for finished, result in enumerate(self._engine.results(items, reusable), 1):
            yield result
            if self.progress:
                self.progress(finished, len(items))

    def _model_facts(self) -> dict[str, object]:
        return self.model.facts(self._engine.precision if self._engine is not None else None)

    def _commit(self, changes: list[Change]) -> None:
        if any(isinstance(change, Upsert) and "embedding" in change.values for change in changes) and \
                not self.catalog.meta("dimension"):
            # The first vectors and the dimension they must all share land in one transaction.
            changes = [SetMeta(self._model_facts())] + changes
        self._write(changes)

    def _write(self, changes: list[Change]) -> None:
        """One batch, in one transaction, counted (an interrupted build says what it kept)."""
        if changes:
            self.catalog.write(changes)
            self.committed_batches += 1

    def _read_text(self) -> str:
        """The text stage (text/stage.py), last: every picture is searchable by what it shows before it."""
        if not (ocr_available() if self.options.ocr is None else self.options.ocr):
            if not unread_count(self.catalog):
                return "text up to date"
            return "text not read (--no-ocr)" if self.options.ocr is False else f"text not read: {OCR_INSTALL}"
        return update_text(self.catalog, self.folder, lambda: shared_reader(self.options.workers),
                           self.options.max_megapixels, self.text_progress).line()

    def _refresh_index(self) -> str:
        if index_state(self.catalog).fresh:
            return "index up to date"
        return f"index written to {write_index(self.catalog).name}"


def _staged(catalog: Catalog, id_: int, result: Inspected) -> list[Change]:
    """The new model's vectors of one file: a picture's, or a video's and its frames' (matched by their
    time; a frame the new sampling does not reproduce leaves at the switch)."""
    assert result.vector is not None
    if "frames" not in result.facts:
        return [StageEmbedding(id_, to_blob(result.vector))]
    frame_ids = catalog.frame_ids(id_)
    staged: list[Change] = [StageEmbedding(id_, to_blob(result.vector[0]))]
    for frame, vector in zip(result.facts["frames"][1:], result.vector[1:]):
        if frame["frame_time"] in frame_ids:
            staged.append(StageEmbedding(frame_ids[frame["frame_time"]], to_blob(vector)))
    return staged


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
          progress: Callable[[int, int], None] | None = None, models: ModelCache = MODELS,
          text_progress: Callable[[int, int], None] | None = None) -> Summary:
    """Build or update the catalog at ``db_path`` from ``folder``; see :class:`Builder`.

    A first build that fails before it catalogued anything leaves no file behind."""
    builder = Builder(db_path, folder, options or BuildOptions(), progress, models, text_progress)
    try:
        return builder.run()
    except BaseException as error:
        if builder.created and builder.catalog_is_empty():
            builder.catalog.close()
            for path in catalog_files(db_path):
                path.unlink(missing_ok=True)
        if isinstance(error, KeyboardInterrupt) and not isinstance(error, Interrupted):
            raise Interrupted(builder.committed_batches) from None
        raise
    finally:
        builder.close()

