"""A catalog file opened for writing (``build``, ``index``) or for reading only (searches, pages), and
its reads and writes in SQL.

Opening for writing applies pending migrations (migrations.py); opening for reading never writes, never
creates a ``-wal``/``-shm``/``-journal`` file, and works on read-only storage. Triggers bump
``catalog_version`` on every change of an embedding, whoever makes it, so any reader can tell whether
the sibling FAISS index still matches, and log each changed row's id, so a server catches a stale
index up instead of reloading every vector at every commit of a build.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from datasette_imgsearch.catalog.changes import Change, ForgetChanges, SetMeta
from datasette_imgsearch.catalog.database import sqlite3, sqlite_utils
from datasette_imgsearch.catalog.migrations import migrate, schema_version
from datasette_imgsearch.catalog.schema import (
    CHANGES_TABLE,
    ERRORS_TABLE,
    META_TABLE,
    REEMBED_TABLE,
    REMOVED_TABLE,
    TABLE,
    from_blob,
)
from datasette_imgsearch.errors import CatalogError

Read = TypeVar("Read")


def is_catalog(conn: Any) -> bool:
    """Whether a database holds an imgsearch catalog: an ``imgsearch_meta`` table beside ``images``."""
    names = {row[0] for row in conn.execute(
        "select name from sqlite_master where type = 'table' and name in (?, ?)", (META_TABLE, TABLE)
    )}
    return names == {META_TABLE, TABLE}


def catalog_columns(conn: Any) -> set[str] | None:
    """The columns of the ``images`` table of a catalog, or None for a database that holds no catalog: what
    a request to the plugin checks first, in one visit to the database."""
    return image_columns(conn) if is_catalog(conn) else None


def image_columns(conn: Any) -> set[str]:
    """The columns the ``images`` table of the catalog open on ``conn`` has: a catalog of an earlier schema
    is read as it is, so a reader asks before it uses a column a later migration added."""
    return {row[1] for row in conn.execute(f"pragma table_info([{TABLE}])")}


IDS_AT_A_TIME = 10_000  # SQLite caps the number of parameters of one statement


def rows_with_ids(conn: Any, select: str, ids: Sequence[int] | np.ndarray, then: str = "") -> Iterator[Any]:
    """The rows of ``select`` (a SELECT without its WHERE) whose ``id`` is one of ``ids``, asked
    ``IDS_AT_A_TIME`` ids at a time, ``then`` (an ORDER BY) applying within each such chunk."""
    for start in range(0, len(ids), IDS_AT_A_TIME):
        chunk = [int(id_) for id_ in ids[start:start + IDS_AT_A_TIME]]
        yield from conn.execute(f"{select} where id in ({', '.join('?' for _ in chunk)}) {then}", chunk)


def file_stamp(path: Path) -> str:
    """Size, modification time and inode: what changes whenever another file takes this one's place."""
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"


def catalog_stamp(path: str | Path) -> tuple[str | None, str | None]:
    """Stamps of a database file and of its write-ahead log (None for one that is not there): every write
    to the database, a schema change included, changes one of them, so what was read of the database
    under the same stamps still holds."""
    stamps: list[str | None] = []
    for file in (Path(path), Path(f"{path}-wal")):
        try:
            stamps.append(file_stamp(file))
        except OSError:
            stamps.append(None)
    return stamps[0], stamps[1]


def read_only_uri(path: str | Path, immutable: bool = False) -> str:
    """A URI that opens ``path`` without ever creating or writing a file beside it."""
    return Path(path).resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")


def has_embeddings(path: str | Path, immutable: bool = False) -> bool:
    """Whether ``path`` holds a catalog that a build has written embeddings into (opened read-only)."""
    try:
        conn = sqlite3.connect(read_only_uri(path, immutable), uri=True)
    except sqlite3.Error:
        return False
    try:
        return is_catalog(conn) and conn.execute(f"select 1 from [{META_TABLE}] where key = 'dimension'").fetchone() is not None
    except sqlite3.Error:
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
    """A catalog file, opened for writing (``build``, ``index``) or for reading only (searches, pages).

    Use it as a context manager. Opening for writing applies any pending migrations; opening for
    reading never writes, never creates a ``-wal``/``-shm``/``-journal`` file, and works on
    read-only storage (``immutable=True`` for files Datasette serves with ``-i``).
    """

    def __init__(self, path: str | Path, *, create: bool = False, write: bool = False, immutable: bool = False) -> None:
        self.path = Path(path)
        self.writable = create or write
        if not create and not self.path.exists():
            raise CatalogError(f"{self.path} does not exist: build it first with 'datasette-imgsearch build {self.path} FOLDER'")
        if self.path.is_dir():
            raise CatalogError(f"{self.path} is a folder: give the catalog's file name, such as photos.db")
        try:
            if self.writable:
                conn = sqlite3.connect(str(self.path))
            else:
                conn = sqlite3.connect(read_only_uri(self.path, immutable), uri=True)
        except sqlite3.DatabaseError as error:
            raise CatalogError(f"{self.path} is not a usable SQLite database: {error}") from error
        self.db = sqlite_utils.Database(conn)
        self._by_schema: dict[str, tuple[int, Any]] = {}
        try:
            self._check_and_migrate(create)
        except BaseException:
            conn.close()  # an unclosed connection lives until garbage collection, holding the file's locks
            raise

    def _check_and_migrate(self, create: bool) -> None:
        conn = self.db.conn
        try:
            holds_catalog = is_catalog(conn)
            has_tables = conn.execute("select count(*) from sqlite_master where type = 'table'").fetchone()[0] > 0
            if (has_tables or not create) and not holds_catalog:
                raise CatalogError(
                    f"{self.path} is not an imgsearch catalog (it has no {META_TABLE} table beside {TABLE}); "
                    "name a new file for the catalog"
                )
            version = int(self.meta("schema_version", 0) or 0) if holds_catalog else 0
            if version > schema_version():
                raise CatalogError(
                    f"{self.path} was written by a newer datasette-imgsearch (schema {version}); upgrade to read it"
                )
            if self.writable:
                conn.execute("PRAGMA busy_timeout = 5000")
                if create:
                    conn.execute("PRAGMA journal_mode = WAL")  # readers keep reading while a build writes
                migrate(conn)
        except sqlite3.DatabaseError as error:
            raise CatalogError(f"{self.path} is not a usable SQLite database: {error}") from error

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Metadata -----------------------------------------------------------------------------------
    def by_schema(self, name: str, read: Callable[[Any], Read]) -> Read:
        """``read(conn)``, kept under ``name`` until the database's schema changes (SQLite's schema cookie,
        which every change of a table or index moves, a migration's and another connection's included).
        A search asks which columns a catalog has and what its full-text index is, and ``pragma
        table_info`` answers a row per column: each row is a release of the GIL, which a thread of a busy
        server then waits to take back. The cookie is one row."""
        cookie = self.db.conn.execute("pragma schema_version").fetchone()[0]
        kept = self._by_schema.get(name)
        if kept is None or kept[0] != cookie:
            kept = self._by_schema[name] = (cookie, read(self.db.conn))
        return kept[1]

    def columns(self) -> set[str]:
        """:func:`image_columns` of this catalog, read again only after its schema changed."""
        return self.by_schema("columns", image_columns)

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

    def folder_facts(self, folder: Path) -> dict[str, str]:
        """How the catalog records its image folder: absolute, and relative to the catalog file."""
        folder = folder.resolve()
        return {"folder": str(folder), "folder_relative": os.path.relpath(folder, self.path.resolve().parent)}

    # Rows ---------------------------------------------------------------------------------------
    def count(self) -> int:
        return self.db.execute(f"select count(*) from [{TABLE}]").fetchone()[0]

    def largest_id(self) -> int:
        """The largest row id (0 for an empty catalog): no row an index holds has a larger one."""
        return int(self.db.execute(f"select coalesce(max(id), 0) from [{TABLE}]").fetchone()[0])

    def error_count(self) -> int:
        return self.db.execute(f"select count(*) from [{ERRORS_TABLE}]").fetchone()[0]

    def stored_files(self) -> dict[str, StoredFile]:
        rows = self.db.execute(f"select id, path, size, mtime_ns, hash from [{TABLE}] where video_id is null").fetchall()
        return {row[1]: StoredFile(*row) for row in rows}

    def frame_ids(self, video_id: int) -> dict[float, int]:
        """frame_time → id of the frame rows of a video."""
        return dict(self.db.execute(f"select frame_time, id from [{TABLE}] where video_id = ?", [video_id]).fetchall())

    def failed_files(self) -> dict[str, tuple[int, int]]:
        """path → (size, mtime_ns) of the files that failed as they were when they failed."""
        rows = self.db.execute(
            f"select path, size, mtime_ns from [{ERRORS_TABLE}] where size is not null and mtime_ns is not null"
        ).fetchall()
        return {path: (size, mtime_ns) for path, size, mtime_ns in rows}

    def embedding_sources(self) -> dict[str, tuple[str, int]]:
        """hash → (table, id) of a stored row whose embedding and facts can be reused for identical bytes."""
        sources: dict[str, tuple[str, int]] = {}
        for table in (REMOVED_TABLE, TABLE):  # live rows win
            for hash_, id_ in self.db.execute(f"select hash, id from [{table}] where video_id is null"):
                sources[hash_] = (table, id_)
        return sources

    def row(self, table: str, id_: int) -> dict[str, Any]:
        cursor = self.db.execute(f"select * from [{table}] where id = ?", [id_])
        names = [d[0] for d in cursor.description]
        return dict(zip(names, cursor.fetchone()))

    def paths(self, ids: list[int]) -> dict[int, str]:
        """id → path for the rows in ``ids`` that exist."""
        if not ids:
            return {}
        placeholders = ", ".join("?" for _ in ids)
        return dict(self.db.execute(f"select id, path from [{TABLE}] where id in ({placeholders})", ids).fetchall())

    def embedding(self, id_: int) -> np.ndarray | None:
        row = self.db.execute(f"select embedding from [{TABLE}] where id = ?", [id_]).fetchone()
        return None if row is None else from_blob(row[0])

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, matrix) in id order, read straight from the BLOBs."""
        return self._decoded(self.db.execute(f"select id, embedding from [{TABLE}] order by id").fetchall())

    def _decoded(self, rows: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, matrix) of (id, embedding BLOB) rows: one writable float32 matrix, decoded in one go."""
        ids = np.fromiter((r[0] for r in rows), dtype="int64", count=len(rows))
        if not rows:
            return ids, np.zeros((0, int(self.meta("dimension") or 0)), dtype="float32")
        matrix = np.frombuffer(bytearray(b"".join(r[1] for r in rows)), dtype="<f4").reshape(len(rows), -1)
        return ids, matrix.astype("float32", copy=False)

    def iter_embeddings(self, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All (ids, matrix) in id order, ``chunk_rows`` at a time: ten million rows never sit in memory
        at once. Run it inside :meth:`snapshot` for one consistent view."""
        last = -(2**63)
        while True:
            rows = self.db.execute(
                f"select id, embedding from [{TABLE}] where id > ? order by id limit ?", [last, chunk_rows]
            ).fetchall()
            if not rows:
                return
            ids, matrix = self._decoded(rows)
            yield ids, matrix
            last = int(ids[-1])

    def sample_embeddings(self, count: int, seed: int = 0) -> np.ndarray:
        """The vectors of ``count`` rows chosen at random (seeded, so an index is rebuilt alike)."""
        ids = np.fromiter((r[0] for r in self.db.execute(f"select id from [{TABLE}]")), dtype="int64")
        if count < len(ids):
            ids = np.sort(np.random.default_rng(seed).choice(ids, count, replace=False))
        return self.embeddings_of(ids)[1]

    def changed_since(self, version: int) -> np.ndarray | None:
        """Ids of the rows whose embedding changed (added, replaced, removed) after ``version``, or
        ``None`` when the change log does not reach back that far."""
        start = self.meta("changes_from")
        if start is None or version < int(start):
            return None
        rows = self.db.execute(f"select distinct id from [{CHANGES_TABLE}] where version > ?", [version])
        return np.fromiter((r[0] for r in rows), dtype="int64")

    def index_written(self, **facts: Any) -> None:
        """Record a freshly written index and forget the changes it holds, in one transaction."""
        self.write([SetMeta(facts), ForgetChanges(facts["index_version"])])

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read inside one transaction: every query sees the catalog as it was at the first one, while a
        build goes on writing (WAL mode)."""
        conn = self.db.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    def embeddings_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, matrix) of the given rows that exist, in id order."""
        return self._decoded(list(rows_with_ids(self.db.conn, f"select id, embedding from [{TABLE}]", ids, "order by id")))

    def write(self, changes: Iterable["Change"]) -> None:
        """Apply a batch of changes in one transaction: a crash leaves all of it or none of it."""
        conn = self.db.conn
        with conn:
            for change in changes:
                change.apply(conn)

    def clear_errors_not_in(self, paths: set[str]) -> None:
        """Forget errors for files that are no longer in the folder."""
        stale = [p for (p,) in self.db.execute(f"select path from [{ERRORS_TABLE}]") if p not in paths]
        with self.db.conn:
            self.db.conn.executemany(f"delete from [{ERRORS_TABLE}] where path = ?", [(p,) for p in stale])

    # Re-embedding --------------------------------------------------------------------------------
    def reembedded_ids(self) -> set[int]:
        """Rows whose new vector a running ``--reembed`` has already staged."""
        return {id_ for (id_,) in self.db.execute(f"select id from [{REEMBED_TABLE}]")}
