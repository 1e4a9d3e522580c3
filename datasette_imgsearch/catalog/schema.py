"""What a catalog holds today: its tables, the columns of an image row, and the helpers that name its
files and encode its vectors.

``images`` holds one row per image with the facts people filter on and the L2-normalised CLIP
embedding as a little-endian float32 BLOB (the format llm and sqlite-vec use). ``imgsearch_meta``
records what built it, ``imgsearch_errors`` the files that could not be catalogued and
``imgsearch_removed`` the rows of files that left the folder, so that a file that comes back keeps its
id and embedding. ``imgsearch_reembed`` holds the new model's vectors while a ``--reembed`` runs, and
``imgsearch_changes`` logs the id of each row whose embedding changed (see migrations.py for the
triggers that keep it). This module describes the schema the migrations arrive at; the migrations
themselves are frozen and never read it.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

TABLE = "images"
META_TABLE = "imgsearch_meta"
ERRORS_TABLE = "imgsearch_errors"
REMOVED_TABLE = "imgsearch_removed"
REEMBED_TABLE = "imgsearch_reembed"
CHANGES_TABLE = "imgsearch_changes"
CATALOG_SUFFIXES = ("", "-wal", "-shm", "-journal", ".faiss", ".faiss.tmp")

# Every column of an image row except ``id``, in table order, with its SQL type, as the migrations
# leave it (tests/test_catalog.py checks that they agree). A migration that adds a column adds it here.
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
    "likeness": "INTEGER",
    "duplicate_group": "INTEGER",
    "duplicate_keeper": "INTEGER",
    "description": "TEXT",
    "keywords": "TEXT",
    "text": "TEXT",
    "text_lines": "TEXT",
    "media": "TEXT",
    "video_id": "INTEGER",
    "frame_time": "REAL",
    "duration": "REAL",
    "frame_rate": "REAL",
    "codec": "TEXT",
}
BLOB_COLUMNS = ("thumbnail", "embedding")
# What a search result or a gallery shows of a row: every column but the BLOBs, the likeness hash and
# the boxes of the text's lines.
ROW_COLUMNS = ("id",) + tuple(name for name in COLUMNS if name not in BLOB_COLUMNS + ("likeness", "text_lines"))
# The full-text index over the words in the pictures and what people wrote about them (migration 6).
FTS_TABLE = f"{TABLE}_fts"
TEXT_COLUMNS = ("text", "text_lines")
# The columns that come from the file system; every other column comes from the file's bytes, so a file
# whose bytes are already catalogued (a copy, a moved or returning file) takes those over.
FILE_COLUMNS = ("path", "name", "folder", "size", "modified", "mtime_ns", "hash")
# A row's near-duplicate group depends on the other rows; the duplicates stage alone writes it.
GROUP_COLUMNS = ("duplicate_group", "duplicate_keeper")
CONTENT_COLUMNS = tuple(name for name in COLUMNS if name not in FILE_COLUMNS + GROUP_COLUMNS)
# What a build records about the model; a re-embed replaces all of them at once.
MODEL_KEYS = ("model", "text_model", "multilingual_model", "dimension", "precision", "runtime")


def index_path(db_path: str | Path) -> Path:
    """The sibling FAISS index of a catalog: ``photos.db`` → ``photos.db.faiss``."""
    return Path(str(db_path) + ".faiss")


def catalog_files(db_path: str | Path) -> set[Path]:
    """Every file a catalog owns, so the folder scan never catalogues them."""
    base = str(Path(db_path).resolve())
    return {Path(base + suffix) for suffix in CATALOG_SUFFIXES}


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
