"""What each inspected file changes in the catalog: a new or updated row, a moved row, a revived row, a
row whose bytes are reused, or an error row; each counted in the build's summary."""

from __future__ import annotations

import collections

from datasette_imgsearch.build.inspect import Inspected, file_facts
from datasette_imgsearch.build.options import Summary
from datasette_imgsearch.build.plan import Plan
from datasette_imgsearch.catalog.catalog import Catalog, StoredFile
from datasette_imgsearch.catalog.changes import Change, CopyFrames, Failure, Remove, ReplaceFrames, Revive, Upsert
from datasette_imgsearch.catalog.schema import CONTENT_COLUMNS, REMOVED_TABLE, TABLE, TEXT_COLUMNS, to_blob
from datasette_imgsearch.images.video import frame_path


class RowChanges:
    """The changes of one update pass, in scan order. A file whose bytes a vanished row holds takes that
    row over (a move keeps the id and the embedding); bytes held elsewhere are copied, never re-embedded."""

    def __init__(self, catalog: Catalog, plan: Plan, stored: dict[str, StoredFile], summary: Summary) -> None:
        self.catalog = catalog
        self.stored = stored
        self.summary = summary
        self.sources = catalog.embedding_sources()
        self.moves: dict[str, list[StoredFile]] = collections.defaultdict(list)
        for row in plan.vanished:
            self.moves[row.hash].append(row)
        self.moved_ids: set[int] = set()

    def of(self, item: Inspected) -> list[Change]:
        return self._embedded(item) if item.vector is not None else self._reuse_or_fail(item)

    def _embedded(self, item: Inspected) -> list[Change]:
        """The row of a file whose new pixels were embedded (with a video's, the rows of its frames)."""
        facts = dict(item.facts)
        frames = facts.pop("frames", None)
        values = {**file_facts(item.found, item.hash), **facts}
        values.setdefault("thumbnail", None)
        values.update(dict.fromkeys(TEXT_COLUMNS))  # new pixels: their words are read again by the text stage
        known = self.stored.get(item.found.path)
        if known:
            self.summary.updated += 1
        else:
            self.summary.added += 1
        assert item.vector is not None  # only embedded items come here
        if frames is None:
            return [Upsert({**values, "embedding": to_blob(item.vector)}, known.id if known else None)]
        values.update(frames[0], embedding=to_blob(item.vector[0]), text="")  # the first frame is the video's picture
        frame_rows = [{**values, **frame, "media": "frame", "embedding": to_blob(vector),
                       "path": frame_path(values["path"], frame["frame_time"]),
                       "hash": frame_path(item.hash, frame["frame_time"])}  # the video's bytes at a moment: never a file's
                      for frame, vector in zip(frames[1:], item.vector[1:])]
        return [Upsert(values, known.id if known else None), ReplaceFrames(values["path"], frame_rows)]

    def _reuse_or_fail(self, item: Inspected) -> list[Change]:
        """Changes for a file whose bytes are already catalogued, or that could not be read."""
        path = item.found.path
        known = self.stored.get(path)
        if item.error is not None:
            self.summary.failed += 1
            failure = Failure(path, item.error.kind, item.error.message, item.found.size, item.found.mtime_ns)
            return [Remove(known.id), failure] if known else [failure]
        facts = file_facts(item.found, item.hash)
        if known and known.hash == item.hash:  # touched, not changed
            self.summary.unchanged += 1
            return [Upsert(facts, known.id)]
        if not known and self.moves.get(item.hash):
            row = self.moves[item.hash].pop()
            self.moved_ids.add(row.id)
            self.summary.moved += 1
            return [Upsert(facts, row.id)]
        table, source_id = self.sources[item.hash]
        source = self.catalog.row(table, source_id)
        values = {**facts, **{c: source[c] for c in CONTENT_COLUMNS}}
        frames = [CopyFrames(table, source_id, facts["path"])] if source["media"] == "video" else []
        if known:
            self.summary.updated += 1
            return [Upsert(values, known.id), *frames]
        self.summary.added += 1
        if table == REMOVED_TABLE:
            self.sources[item.hash] = (TABLE, source_id)  # a second copy reuses the revived row
            return [Revive(source_id, facts)]
        return [Upsert(values), *frames]
