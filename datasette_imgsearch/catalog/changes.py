"""Writes to a catalog as values: a build collects a batch of them and :meth:`Catalog.write` applies it
in one transaction, so a crash leaves all of a batch or none of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datasette_imgsearch.catalog.database import sqlite3
from datasette_imgsearch.catalog.schema import (
    CHANGES_TABLE,
    COLUMNS,
    ERRORS_TABLE,
    META_TABLE,
    MODEL_KEYS,
    REEMBED_TABLE,
    REMOVED_TABLE,
    TABLE,
    now,
)


class Change:
    """One write to the catalog; :meth:`Catalog.write` applies a batch of them atomically."""

    def apply(self, conn: sqlite3.Connection) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Upsert(Change):
    """Insert a new row, or replace the facts of row ``id`` in place (the id never changes)."""

    values: dict[str, Any]
    id: int | None = None

    def apply(self, conn: sqlite3.Connection) -> None:
        names = list(self.values)
        if self.id is None:
            conn.execute(
                f"insert into [{TABLE}] ({', '.join(f'[{n}]' for n in names)}) values ({', '.join('?' for _ in names)})",
                [self.values[n] for n in names],
            )
        else:
            conn.execute(
                f"update [{TABLE}] set {', '.join(f'[{n}] = ?' for n in names)} where id = ?",
                [self.values[n] for n in names] + [self.id],
            )
        conn.execute(f"delete from [{ERRORS_TABLE}] where path = ?", [self.values["path"]])


@dataclass
class Revive(Change):
    """Bring a removed row back under its old id, at its new path."""

    id: int
    values: dict[str, Any]

    def apply(self, conn: sqlite3.Connection) -> None:
        columns = ", ".join(f"[{n}]" for n in COLUMNS)
        conn.execute(f"insert into [{TABLE}] (id, {columns}) select id, {columns} from [{REMOVED_TABLE}] "
                     "where id = ? or video_id = ? order by video_id is not null", [self.id, self.id])  # a video's frames with it
        conn.execute(f"delete from [{REMOVED_TABLE}] where id = ? or video_id = ?", [self.id, self.id])
        Upsert(self.values, self.id).apply(conn)


@dataclass
class Remove(Change):
    """Move a row whose file left the folder out of the live table, keeping it for a later return."""

    id: int

    def apply(self, conn: sqlite3.Connection) -> None:
        columns = ", ".join(f"[{n}]" for n in COLUMNS)
        conn.execute(
            f"insert or replace into [{REMOVED_TABLE}] (id, {columns}, removed) "
            f"select id, {columns}, ? from [{TABLE}] where id = ? or video_id = ?",  # a video's frames go with it
            [now(), self.id, self.id],
        )
        conn.execute(f"delete from [{TABLE}] where id = ? or video_id = ?", [self.id, self.id])


@dataclass
class ReplaceFrames(Change):
    """Give the video at ``video_path`` these frame rows (each a full row but for ``video_id``) in place
    of any it had."""

    video_path: str
    frames: list[dict[str, Any]]

    def apply(self, conn: sqlite3.Connection) -> None:
        video_id = conn.execute(f"select id from [{TABLE}] where path = ?", [self.video_path]).fetchone()[0]
        conn.execute(f"delete from [{TABLE}] where video_id = ?", [video_id])
        for frame in self.frames:
            Upsert({**frame, "video_id": video_id}).apply(conn)


@dataclass
class CopyFrames(Change):
    """Give the video just written at ``video_path`` (a copy of the video ``source_id`` in ``table``, with
    the same bytes) copies of that video's frame rows."""

    table: str
    source_id: int
    video_path: str

    def apply(self, conn: sqlite3.Connection) -> None:
        video_id = conn.execute(f"select id from [{TABLE}] where path = ?", [self.video_path]).fetchone()[0]
        source_path = conn.execute(f"select path from [{self.table}] where id = ?", [self.source_id]).fetchone()[0]
        conn.execute(f"delete from [{TABLE}] where video_id = ?", [video_id])
        from_video = ("name", "folder", "size", "modified", "mtime_ns")
        copied = [n for n in COLUMNS if n not in from_video + ("path", "video_id")]
        conn.execute(
            f"insert into [{TABLE}] (path, video_id, {', '.join(f'[{n}]' for n in from_video + tuple(copied))}) "
            f"select ? || substr(frame.path, length(?) + 1), video.id, {', '.join(f'video.[{n}]' for n in from_video)}, "
            f"{', '.join(f'frame.[{n}]' for n in copied)} from [{self.table}] as frame, [{TABLE}] as video "
            f"where frame.video_id = ? and video.id = ?",
            [self.video_path, source_path, self.source_id, video_id],
        )


@dataclass
class Failure(Change):
    """Record why a file could not be catalogued, with its size and modification time where they are
    known: the next build examines it again only when they change."""

    path: str
    error: str
    message: str
    size: int | None = None
    mtime_ns: int | None = None

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"insert or replace into [{ERRORS_TABLE}] (path, error, message, at, size, mtime_ns) values (?, ?, ?, ?, ?, ?)",
            [self.path, self.error, self.message, now(), self.size, self.mtime_ns],
        )


@dataclass
class SetMeta(Change):
    """Record facts about the catalog in the same transaction as the rows they describe."""

    values: dict[str, Any]

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            f"insert or replace into [{META_TABLE}] (key, value) values (?, ?)",
            [(key, value) for key, value in self.values.items() if value is not None],
        )


@dataclass
class StageEmbedding(Change):
    """Keep a re-embedded vector aside until :class:`SwitchModel` swaps them all in."""

    id: int
    embedding: bytes

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"insert or replace into [{REEMBED_TABLE}] (id, embedding) values (?, ?)", [self.id, self.embedding])


@dataclass
class ForgetChanges(Change):
    """Empty the change log up to ``version``: an index written at that version holds those changes. The
    duplicates stage reads the log too: entries it has not yet read are kept."""

    version: int

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"delete from [{CHANGES_TABLE}] where version <= min(?, coalesce("
            f"(select value from [{META_TABLE}] where key = 'duplicates_version'), 0))",
            [self.version],
        )


@dataclass
class SetLikeness(Change):
    """Record the likeness hashes of rows (``(hash, id)`` pairs) that were catalogued without one."""

    values: list[tuple[int, int]]

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.executemany(f"update [{TABLE}] set likeness = ? where id = ?", self.values)


@dataclass
class SetGroups(Change):
    """Put rows in near-duplicate groups (``id → keeper's id``; the keeper is its own group) and take
    ``alone`` out of any group."""

    groups: dict[int, int]
    alone: list[int]

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            f"update [{TABLE}] set duplicate_group = ?, duplicate_keeper = ? where id = ?",
            [(keeper, int(keeper == id_), id_) for id_, keeper in self.groups.items()],
        )
        conn.executemany(f"update [{TABLE}] set duplicate_group = null, duplicate_keeper = null where id = ?",
                         [(id_,) for id_ in self.alone])


@dataclass
class SetText(Change):
    """Record the words read in a row's picture, unless the row's bytes changed since they were read."""

    id: int
    hash: str
    text: str
    lines: str

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"update [{TABLE}] set text = ?, text_lines = ? where id = ? and hash = ?",
                     [self.text, self.lines, self.id, self.hash])
        conn.execute(f"insert or ignore into [{META_TABLE}] (key, value) values ('text_version', 0)")
        conn.execute(f"update [{META_TABLE}] set value = value + 1 where key = 'text_version'")


@dataclass
class SwitchModel(Change):
    """Finish a ``--reembed``: the staged vectors replace the old ones (ids kept), the model's facts are
    replaced, rows that could not be re-embedded leave (their files are gone or unreadable; the next
    pass records why), and removed rows' old-model vectors are forgotten."""

    facts: dict[str, Any]

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.executemany(f"delete from [{META_TABLE}] where key = ?", [(key,) for key in MODEL_KEYS])
        SetMeta(self.facts).apply(conn)
        conn.execute(f"delete from [{TABLE}] where id not in (select id from [{REEMBED_TABLE}])")
        conn.execute(f"update [{TABLE}] set embedding = (select embedding from [{REEMBED_TABLE}] where id = [{TABLE}].id)")
        conn.execute(f"delete from [{REMOVED_TABLE}]")
        conn.execute(f"delete from [{REEMBED_TABLE}]")
        conn.execute(f"delete from [{META_TABLE}] where key = 'reembedding'")
