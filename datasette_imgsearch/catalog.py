"""The catalog's schema and the small set of reads and writes everything else goes through.

A catalog is a plain SQLite file. ``images`` holds one row per image with the facts people filter on
and the L2-normalised CLIP embedding as a little-endian float32 BLOB (the format llm and sqlite-vec
use). ``imgsearch_meta`` records what built it, ``imgsearch_errors`` the files that could not be
catalogued and ``imgsearch_removed`` the rows of files that left the folder, so that a file that comes
back keeps its id and embedding. Triggers bump ``catalog_version`` on every change of an embedding,
whoever makes it, so any reader can tell whether the sibling FAISS index still matches.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import sqlite_utils

SCHEMA_VERSION = 1
TABLE = "images"
META_TABLE = "imgsearch_meta"
ERRORS_TABLE = "imgsearch_errors"
REMOVED_TABLE = "imgsearch_removed"

# Every column of an image row except ``id``, in table order, with its SQL type.
COLUMNS: dict[str, str] = {
    "path": "TEXT NOT NULL",
    "name": "TEXT NOT NULL",
    "folder": "TEXT NOT NULL",
    "format": "TEXT",
    "width": "INTEGER",
    "height": "INTEGER",
    "size": "INTEGER NOT NULL",
    "modified": "TEXT NOT NULL",
    "mtime_ns": "INTEGER NOT NULL",
    "hash": "TEXT NOT NULL",
    "taken": "TEXT",
    "camera_make": "TEXT",
    "camera_model": "TEXT",
    "latitude": "REAL",
    "longitude": "REAL",
    "thumbnail": "BLOB",
    "embedding": "BLOB NOT NULL",
}
BLOB_COLUMNS = ("thumbnail", "embedding")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS [{TABLE}] (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"[{name}] {kind}{' UNIQUE' if name == 'path' else ''}" for name, kind in COLUMNS.items())}
);
CREATE INDEX IF NOT EXISTS [idx_{TABLE}_hash] ON [{TABLE}] ([hash]);
CREATE INDEX IF NOT EXISTS [idx_{TABLE}_taken] ON [{TABLE}] ([taken]);
CREATE TABLE IF NOT EXISTS [{REMOVED_TABLE}] (
    id INTEGER PRIMARY KEY,
    {", ".join(f"[{name}] {kind}" for name, kind in COLUMNS.items())},
    removed TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS [idx_{REMOVED_TABLE}_hash] ON [{REMOVED_TABLE}] ([hash]);
CREATE TABLE IF NOT EXISTS [{ERRORS_TABLE}] (
    path TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    message TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS [{META_TABLE}] (
    key TEXT PRIMARY KEY,
    value
);
INSERT OR IGNORE INTO [{META_TABLE}] (key, value) VALUES ('schema_version', {SCHEMA_VERSION});
INSERT OR IGNORE INTO [{META_TABLE}] (key, value) VALUES ('catalog_version', 0);
CREATE TRIGGER IF NOT EXISTS [{TABLE}_inserted] AFTER INSERT ON [{TABLE}] BEGIN
    UPDATE [{META_TABLE}] SET value = value + 1 WHERE key = 'catalog_version';
END;
CREATE TRIGGER IF NOT EXISTS [{TABLE}_deleted] AFTER DELETE ON [{TABLE}] BEGIN
    UPDATE [{META_TABLE}] SET value = value + 1 WHERE key = 'catalog_version';
END;
CREATE TRIGGER IF NOT EXISTS [{TABLE}_embedding_changed] AFTER UPDATE OF id, embedding ON [{TABLE}] BEGIN
    UPDATE [{META_TABLE}] SET value = value + 1 WHERE key = 'catalog_version';
END;
"""


class CatalogError(Exception):
    """A catalog that cannot be used as asked; the message says what to do about it."""


def index_path(db_path: str | Path) -> Path:
    """The sibling FAISS index of a catalog: ``photos.db`` → ``photos.db.faiss``."""
    return Path(str(db_path) + ".faiss")


def catalog_files(db_path: str | Path) -> set[Path]:
    """Every file a catalog owns, so the folder scan never catalogues them."""
    base = str(Path(db_path).resolve())
    return {Path(base + suffix) for suffix in ("", "-wal", "-shm", "-journal", ".faiss", ".faiss.tmp")}


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def is_catalog(conn: sqlite3.Connection) -> bool:
    """Whether a database holds an imgsearch catalog (cheap: one lookup in sqlite_master)."""
    row = conn.execute("select 1 from sqlite_master where type = 'table' and name = ?", (META_TABLE,)).fetchone()
    return row is not None


def has_embeddings(path: str | Path) -> bool:
    """Whether ``path`` holds a catalog that a build has written embeddings into (opened read-only)."""
    conn = sqlite3.connect(f"file:{Path(path).as_posix()}?mode=ro", uri=True)
    try:
        return is_catalog(conn) and conn.execute(f"select 1 from [{META_TABLE}] where key = 'model'").fetchone() is not None
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


@dataclass(frozen=True)
class StoredFile:
    """What the catalog knows about a file, enough to tell whether it changed."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str


class Catalog:
    """A catalog file opened for reading and writing (the builder) or reading only (the plugin's helpers)."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise CatalogError(f"{self.path} does not exist: build it first with 'datasette-imgsearch build {self.path} FOLDER'")
        try:
            self.db = sqlite_utils.Database(self.path)
            if create:
                self.db.conn.execute("PRAGMA journal_mode = WAL")
                self.db.conn.executescript(_SCHEMA)
            elif not is_catalog(self.db.conn):
                raise CatalogError(f"{self.path} is not an imgsearch catalog (it has no {META_TABLE} table)")
        except sqlite3.DatabaseError as error:
            raise CatalogError(f"{self.path} is not a usable SQLite database: {error}") from error
        version = int(self.meta("schema_version") or 0)
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path} was written by a newer datasette-imgsearch (schema {version}); upgrade to read it"
            )

    def close(self) -> None:
        self.db.close()

    # Metadata -----------------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute(f"select value from [{META_TABLE}] where key = ?", [key]).fetchone()
        return default if row is None else row[0]

    def all_meta(self) -> dict[str, Any]:
        return dict(self.db.execute(f"select key, value from [{META_TABLE}]").fetchall())

    def set_meta(self, **values: Any) -> None:
        with self.db.conn:
            self.db.conn.executemany(
                f"insert or replace into [{META_TABLE}] (key, value) values (?, ?)", list(values.items())
            )

    @property
    def catalog_version(self) -> int:
        return int(self.meta("catalog_version", 0))

    def image_folder(self) -> Path | None:
        """The catalogued folder: first as recorded relative to the catalog, then as an absolute path.

        Paths in ``images.path`` are relative to this folder, so moving the catalog and its folder
        together, or moving the folder and re-running ``build`` with its new location, keeps every row.
        """
        relative = self.meta("folder_relative")
        if relative is not None:
            candidate = (self.path.resolve().parent / relative).resolve()
            if candidate.is_dir():
                return candidate
        absolute = self.meta("folder")
        return Path(absolute) if absolute else None

    def set_image_folder(self, folder: Path) -> None:
        folder = folder.resolve()
        self.set_meta(folder=str(folder), folder_relative=os.path.relpath(folder, self.path.resolve().parent))

    # Rows ---------------------------------------------------------------------------------------
    def count(self) -> int:
        return self.db.execute(f"select count(*) from [{TABLE}]").fetchone()[0]

    def error_count(self) -> int:
        return self.db.execute(f"select count(*) from [{ERRORS_TABLE}]").fetchone()[0]

    def stored_files(self) -> dict[str, StoredFile]:
        rows = self.db.execute(f"select id, path, size, mtime_ns, hash from [{TABLE}]").fetchall()
        return {row[1]: StoredFile(*row) for row in rows}

    def embedding_sources(self) -> dict[str, tuple[str, int]]:
        """hash → (table, id) of a stored row whose embedding and facts can be reused for identical bytes."""
        sources: dict[str, tuple[str, int]] = {}
        for table in (REMOVED_TABLE, TABLE):  # live rows win
            for hash_, id_ in self.db.execute(f"select hash, id from [{table}]"):
                sources[hash_] = (table, id_)
        return sources

    def row(self, table: str, id_: int) -> dict[str, Any]:
        cursor = self.db.execute(f"select * from [{table}] where id = ?", [id_])
        names = [d[0] for d in cursor.description]
        return dict(zip(names, cursor.fetchone()))

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, matrix) in id order, read straight from the BLOBs."""
        rows = self.db.execute(f"select id, embedding from [{TABLE}] order by id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype="int64", count=len(rows))
        if not rows:
            return ids, np.zeros((0, int(self.meta("dimension") or 0)), dtype="float32")
        matrix = np.frombuffer(bytearray(b"".join(r[1] for r in rows)), dtype="<f4").reshape(len(rows), -1)
        return ids, matrix.astype("float32", copy=False)

    def write(self, changes: Iterable["Change"]) -> None:
        """Apply a batch of changes in one transaction: a crash leaves all of it or none of it."""
        conn = self.db.conn
        with conn:
            for change in changes:
                change.apply(conn)


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
        conn.execute(f"insert into [{TABLE}] (id, {columns}) select id, {columns} from [{REMOVED_TABLE}] where id = ?", [self.id])
        conn.execute(f"delete from [{REMOVED_TABLE}] where id = ?", [self.id])
        Upsert(self.values, self.id).apply(conn)


@dataclass
class Remove(Change):
    """Move a row whose file left the folder out of the live table, keeping it for a later return."""

    id: int

    def apply(self, conn: sqlite3.Connection) -> None:
        columns = ", ".join(f"[{n}]" for n in COLUMNS)
        conn.execute(
            f"insert or replace into [{REMOVED_TABLE}] (id, {columns}, removed) "
            f"select id, {columns}, ? from [{TABLE}] where id = ?",
            [now(), self.id],
        )
        conn.execute(f"delete from [{TABLE}] where id = ?", [self.id])


@dataclass
class Failure(Change):
    """Record why a file could not be catalogued."""

    path: str
    error: str
    message: str

    def apply(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"insert or replace into [{ERRORS_TABLE}] (path, error, message, at) values (?, ?, ?, ?)",
            [self.path, self.error, self.message, now()],
        )


def clear_errors_not_in(catalog: Catalog, paths: set[str]) -> None:
    """Forget errors for files that are no longer in the folder."""
    stale = [p for (p,) in catalog.db.execute(f"select path from [{ERRORS_TABLE}]") if p not in paths]
    with catalog.db.conn:
        catalog.db.conn.executemany(f"delete from [{ERRORS_TABLE}] where path = ?", [(p,) for p in stale])
