"""Writing a catalog safely: one writer at a time, and a catalog left readable from read-only storage."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.database import sqlite3
from datasette_imgsearch.errors import CatalogError


@contextlib.contextmanager
def exclusive(catalog: Catalog) -> Iterator[None]:
    """Hold the catalog for one writer (a build): a second build is told, not left to collide.

    The advisory lock is taken on a small file in the system's temporary folder named after the
    catalog's path, never on the catalog itself: closing a second descriptor of the database file
    would release SQLite's own POSIX locks in this process. The file is removed when the build ends,
    while still locked, so none is left behind for each catalog ever built."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here (Windows): SQLite's own locking still keeps the file whole
        yield
        return
    path = lock_path(catalog)
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise CatalogError(
                f"another build is writing {catalog.path} right now: wait for it to finish, then run this again"
            ) from None
        if _names(path, handle):
            break
        handle.close()  # locked a file that a finishing build had just removed: lock the one there now
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def lock_path(catalog: Catalog) -> Path:
    """The lock file of a catalog: one per path, in the system's temporary folder."""
    digest = hashlib.sha256(str(catalog.path.resolve()).encode()).hexdigest()[:32]
    return Path(tempfile.gettempdir()) / f"datasette-imgsearch-{digest}.lock"


def _names(path: Path, handle: IO[str]) -> bool:
    """Whether ``path`` still names the file open as ``handle``."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def settle(catalog: Catalog) -> bool:
    """Leave the catalog in rollback-journal mode, so readers on read-only storage can open it.

    SQLite refuses while another connection (a running Datasette) has it open; then it stays in WAL
    mode, which readers on writable storage read as well. Returns whether it settled."""
    try:
        catalog.db.conn.execute("PRAGMA busy_timeout = 0")
        mode = catalog.db.conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.OperationalError:
        return False
    return str(mode).lower() == "delete"
