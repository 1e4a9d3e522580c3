"""The catalog's migrations: numbered functions of literal SQL, frozen once released.

Migration N brings a catalog from schema N-1 to N, in its own transaction, and records N in
``imgsearch_meta``. Never edit a released migration, and never build one from the live schema
(schema.py): a new catalog runs every migration in turn, so a column that migration 5 adds must not
already be there when migration 1 runs. To change the schema, add the next function here (and the
column to ``schema.COLUMNS``), and a fixture catalog of the previous schema to tests/fixtures/.
This is the habit of sqlite-utils' and llm's migrations.
"""

from __future__ import annotations

from typing import Callable

from datasette_imgsearch.catalog.database import sqlite3

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(function: Migration) -> Migration:
    """Register ``function`` as the next migration."""
    MIGRATIONS.append(function)
    return function


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``script`` statement by statement inside the caller's transaction (``executescript`` would
    commit first)."""
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            conn.execute(current)
            current = ""


@migration
def m001_catalog(conn: sqlite3.Connection) -> None:
    """Images, removed rows, errors, and the version that every change of an embedding bumps."""
    run_script(conn, """
CREATE TABLE IF NOT EXISTS [images] (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    [path] TEXT NOT NULL UNIQUE, [name] TEXT NOT NULL, [folder] TEXT NOT NULL, [format] TEXT, [width] INTEGER,
    [height] INTEGER, [size] INTEGER NOT NULL, [modified] TEXT NOT NULL, [mtime_ns] INTEGER NOT NULL,
    [hash] TEXT NOT NULL, [taken] TEXT, [camera_make] TEXT, [camera_model] TEXT, [latitude] REAL,
    [longitude] REAL, [thumbnail] BLOB, [embedding] BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS [idx_images_hash] ON [images] ([hash]);
CREATE INDEX IF NOT EXISTS [idx_images_taken] ON [images] ([taken]);
CREATE TABLE IF NOT EXISTS [imgsearch_removed] (
    id INTEGER PRIMARY KEY,
    [path] TEXT NOT NULL, [name] TEXT NOT NULL, [folder] TEXT NOT NULL, [format] TEXT, [width] INTEGER,
    [height] INTEGER, [size] INTEGER NOT NULL, [modified] TEXT NOT NULL, [mtime_ns] INTEGER NOT NULL,
    [hash] TEXT NOT NULL, [taken] TEXT, [camera_make] TEXT, [camera_model] TEXT, [latitude] REAL,
    [longitude] REAL, [thumbnail] BLOB, [embedding] BLOB NOT NULL,
    removed TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS [idx_imgsearch_removed_hash] ON [imgsearch_removed] ([hash]);
CREATE TABLE IF NOT EXISTS [imgsearch_errors] (
    path TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    message TEXT NOT NULL,
    at TEXT NOT NULL
);
INSERT OR IGNORE INTO [imgsearch_meta] (key, value) VALUES ('catalog_version', 0);
CREATE TRIGGER IF NOT EXISTS [images_inserted] AFTER INSERT ON [images] BEGIN
    UPDATE [imgsearch_meta] SET value = value + 1 WHERE key = 'catalog_version';
END;
CREATE TRIGGER IF NOT EXISTS [images_deleted] AFTER DELETE ON [images] BEGIN
    UPDATE [imgsearch_meta] SET value = value + 1 WHERE key = 'catalog_version';
END;
CREATE TRIGGER IF NOT EXISTS [images_embedding_changed] AFTER UPDATE OF id, embedding ON [images] BEGIN
    UPDATE [imgsearch_meta] SET value = value + 1 WHERE key = 'catalog_version';
END;
""")


@migration
def m002_reembed_and_dimension_guard(conn: sqlite3.Connection) -> None:
    """Staged vectors for ``--reembed``, and triggers that refuse a vector of another length than the
    catalog's dimension, whichever program writes it."""
    run_script(conn, """
DELETE FROM [imgsearch_meta] WHERE key = 'reembed_next_id';
CREATE TABLE IF NOT EXISTS [imgsearch_reembed] (
    id INTEGER PRIMARY KEY,
    embedding BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS [images_embedding_length_on_insert] BEFORE INSERT ON [images]
WHEN length(NEW.embedding)
    != 4 * coalesce((SELECT value FROM [imgsearch_meta] WHERE key = 'dimension'), length(NEW.embedding) / 4)
BEGIN SELECT RAISE(ABORT, 'imgsearch: an embedding of another length than the catalog''s dimension cannot be stored'); END;
CREATE TRIGGER IF NOT EXISTS [images_embedding_length_on_update] BEFORE UPDATE OF embedding ON [images]
WHEN length(NEW.embedding)
    != 4 * coalesce((SELECT value FROM [imgsearch_meta] WHERE key = 'dimension'), length(NEW.embedding) / 4)
BEGIN SELECT RAISE(ABORT, 'imgsearch: an embedding of another length than the catalog''s dimension cannot be stored'); END;
""")


@migration
def m003_change_log(conn: sqlite3.Connection) -> None:
    """The change log: each change of a row's embedding logs the row's id under the catalog_version it
    made, so a server catches a stale index up with the rows changed since it was written. Writing the
    index prunes what it covers; ``changes_from`` is the version from which the log is whole (a catalog
    migrated from schema 2 has no log of its earlier changes)."""
    run_script(conn, """
CREATE TABLE IF NOT EXISTS [imgsearch_changes] (
    version INTEGER NOT NULL,
    id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS [idx_imgsearch_changes_version] ON [imgsearch_changes] (version);
INSERT OR REPLACE INTO [imgsearch_meta] (key, value)
    SELECT 'changes_from', value FROM [imgsearch_meta] WHERE key = 'catalog_version';
DROP TRIGGER IF EXISTS [images_inserted];
DROP TRIGGER IF EXISTS [images_deleted];
DROP TRIGGER IF EXISTS [images_embedding_changed];
CREATE TRIGGER [images_inserted] AFTER INSERT ON [images] BEGIN
    UPDATE [imgsearch_meta] SET value = value + 1 WHERE key = 'catalog_version';
    INSERT INTO [imgsearch_changes] (version, id) SELECT value, NEW.id FROM [imgsearch_meta] WHERE key = 'catalog_version';
END;
CREATE TRIGGER [images_deleted] AFTER DELETE ON [images] BEGIN
    UPDATE [imgsearch_meta] SET value = value + 1 WHERE key = 'catalog_version';
    INSERT INTO [imgsearch_changes] (version, id) SELECT value, OLD.id FROM [imgsearch_meta] WHERE key = 'catalog_version';
END;
CREATE TRIGGER [images_embedding_changed] AFTER UPDATE OF id, embedding ON [images] BEGIN
    UPDATE [imgsearch_meta] SET value = value + 1 WHERE key = 'catalog_version';
    INSERT INTO [imgsearch_changes] (version, id) SELECT value, OLD.id FROM [imgsearch_meta] WHERE key = 'catalog_version';
    INSERT INTO [imgsearch_changes] (version, id)
        SELECT value, NEW.id FROM [imgsearch_meta] WHERE key = 'catalog_version' AND NEW.id != OLD.id;
END;
""")


@migration
def m004_failed_file_stamps(conn: sqlite3.Connection) -> None:
    """The size and modification time of a file that failed, so that the next build examines it again
    only when it has changed."""
    run_script(conn, """
ALTER TABLE [imgsearch_errors] ADD COLUMN [size] INTEGER;
ALTER TABLE [imgsearch_errors] ADD COLUMN [mtime_ns] INTEGER;
""")


@migration
def m005_near_duplicates(conn: sqlite3.Connection) -> None:
    """Each picture's turn-proof perceptual hash and its near-duplicate group (the id of the group's
    suggested keeper, and whether it is that keeper), in both the live and the removed rows."""
    run_script(conn, """
ALTER TABLE [images] ADD COLUMN [likeness] INTEGER;
ALTER TABLE [images] ADD COLUMN [duplicate_group] INTEGER;
ALTER TABLE [images] ADD COLUMN [duplicate_keeper] INTEGER;
ALTER TABLE [imgsearch_removed] ADD COLUMN [likeness] INTEGER;
ALTER TABLE [imgsearch_removed] ADD COLUMN [duplicate_group] INTEGER;
ALTER TABLE [imgsearch_removed] ADD COLUMN [duplicate_keeper] INTEGER;
CREATE INDEX IF NOT EXISTS [idx_images_duplicate_group] ON [images] ([duplicate_group]);
""")


@migration
def m006_text(conn: sqlite3.Connection) -> None:
    """The words in each picture (``text``; null until read, empty when it has none) with each line's box
    and confidence (``text_lines``, JSON), the EXIF description and keywords, and a full-text index over
    them and the file's name and folder, named and kept by triggers as sqlite-utils' ``enable_fts`` does,
    so Datasette's ``?_search=`` finds it: trigram (any substring, any script), else unicode61, else none
    (SQLite without FTS5). Partial indexes let a search scan only the rows with words, for what the
    trigram index cannot answer (a two-character Chinese word)."""
    run_script(conn, """
ALTER TABLE [images] ADD COLUMN [description] TEXT;
ALTER TABLE [images] ADD COLUMN [keywords] TEXT;
ALTER TABLE [images] ADD COLUMN [text] TEXT;
ALTER TABLE [images] ADD COLUMN [text_lines] TEXT;
ALTER TABLE [imgsearch_removed] ADD COLUMN [description] TEXT;
ALTER TABLE [imgsearch_removed] ADD COLUMN [keywords] TEXT;
ALTER TABLE [imgsearch_removed] ADD COLUMN [text] TEXT;
ALTER TABLE [imgsearch_removed] ADD COLUMN [text_lines] TEXT;
CREATE INDEX [idx_images_text] ON [images] ([text]) WHERE [text] != '';
CREATE INDEX [idx_images_description] ON [images] ([description]) WHERE [description] != '';
CREATE INDEX [idx_images_keywords] ON [images] ([keywords]) WHERE [keywords] != '';
""")
    for tokenizer in ("trigram", "unicode61"):
        try:
            conn.execute("SAVEPOINT fts")
            run_script(conn, f"""
CREATE VIRTUAL TABLE [images_fts] USING FTS5 (
    [text], [name], [folder], [description], [keywords],
    tokenize='{tokenizer}', content=[images]
);
INSERT INTO [images_fts] (rowid, [text], [name], [folder], [description], [keywords])
    SELECT rowid, [text], [name], [folder], [description], [keywords] FROM [images];
CREATE TRIGGER [images_ai] AFTER INSERT ON [images] BEGIN
    INSERT INTO [images_fts] (rowid, [text], [name], [folder], [description], [keywords])
        VALUES (new.rowid, new.[text], new.[name], new.[folder], new.[description], new.[keywords]);
END;
CREATE TRIGGER [images_ad] AFTER DELETE ON [images] BEGIN
    INSERT INTO [images_fts] ([images_fts], rowid, [text], [name], [folder], [description], [keywords])
        VALUES ('delete', old.rowid, old.[text], old.[name], old.[folder], old.[description], old.[keywords]);
END;
CREATE TRIGGER [images_au] AFTER UPDATE OF [id], [text], [name], [folder], [description], [keywords] ON [images] BEGIN
    INSERT INTO [images_fts] ([images_fts], rowid, [text], [name], [folder], [description], [keywords])
        VALUES ('delete', old.rowid, old.[text], old.[name], old.[folder], old.[description], old.[keywords]);
    INSERT INTO [images_fts] (rowid, [text], [name], [folder], [description], [keywords])
        VALUES (new.rowid, new.[text], new.[name], new.[folder], new.[description], new.[keywords]);
END;
""")
            conn.execute("RELEASE fts")
            return
        except sqlite3.OperationalError:
            conn.execute("ROLLBACK TO fts")
            conn.execute("RELEASE fts")


@migration
def m007_videos(conn: sqlite3.Connection) -> None:
    """Videos and their frames as rows: ``media`` says which a row is ('image', 'video' or 'frame'); a
    video row holds its facts (``duration``, ``frame_rate``, ``codec``) and its first frame's vector and
    thumbnail; each other sampled frame is a row of its own with ``video_id`` and ``frame_time``, at the
    path ``video#t=seconds``. A trigger moves the frames' paths with their video's, whoever moves it."""
    run_script(conn, """
ALTER TABLE [images] ADD COLUMN [media] TEXT;
ALTER TABLE [images] ADD COLUMN [video_id] INTEGER;
ALTER TABLE [images] ADD COLUMN [frame_time] REAL;
ALTER TABLE [images] ADD COLUMN [duration] REAL;
ALTER TABLE [images] ADD COLUMN [frame_rate] REAL;
ALTER TABLE [images] ADD COLUMN [codec] TEXT;
ALTER TABLE [imgsearch_removed] ADD COLUMN [media] TEXT;
ALTER TABLE [imgsearch_removed] ADD COLUMN [video_id] INTEGER;
ALTER TABLE [imgsearch_removed] ADD COLUMN [frame_time] REAL;
ALTER TABLE [imgsearch_removed] ADD COLUMN [duration] REAL;
ALTER TABLE [imgsearch_removed] ADD COLUMN [frame_rate] REAL;
ALTER TABLE [imgsearch_removed] ADD COLUMN [codec] TEXT;
UPDATE [images] SET [media] = 'image';
UPDATE [imgsearch_removed] SET [media] = 'image';
CREATE INDEX [idx_images_video_id] ON [images] ([video_id]) WHERE [video_id] IS NOT NULL;
CREATE INDEX [idx_imgsearch_removed_video_id] ON [imgsearch_removed] ([video_id]) WHERE [video_id] IS NOT NULL;
CREATE TRIGGER [imgsearch_frames_follow_their_video] AFTER UPDATE OF [path] ON [images]
WHEN new.[media] = 'video' AND new.[path] != old.[path] BEGIN
    UPDATE [images] SET [path] = new.[path] || substr([path], length(old.[path]) + 1),
        [name] = new.[name], [folder] = new.[folder]
    WHERE [video_id] = new.id;
END;
""")


def schema_version() -> int:
    """The schema this release writes: the number of the last migration."""
    return len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a catalog's schema up to the last migration in place; returns the version it had."""
    conn.execute("CREATE TABLE IF NOT EXISTS [imgsearch_meta] (key TEXT PRIMARY KEY, value)")
    row = conn.execute("SELECT value FROM [imgsearch_meta] WHERE key = 'schema_version'").fetchone()
    found = int(row[0]) if row else 0
    for number in range(found + 1, len(MIGRATIONS) + 1):
        with conn:
            MIGRATIONS[number - 1](conn)
            conn.execute("INSERT OR REPLACE INTO [imgsearch_meta] (key, value) VALUES ('schema_version', ?)", [number])
    return found
