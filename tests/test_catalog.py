"""The catalog's schema and migrations, the build plan, and how SQL functions reach SQLite."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from datasette_imgsearch import sqlite_functions
from datasette_imgsearch.catalog import SCHEMA_VERSION, Catalog, StoredFile, migrate
from datasette_imgsearch.plan import plan_reembed, plan_update
from datasette_imgsearch.query import ModelChoice, Searcher
from datasette_imgsearch.scan import FoundFile, ScanResult

from .conftest import run_cli

VERSION_1 = Path(__file__).parent / "fixtures" / "catalog-v1.db"  # written by datasette-imgsearch 0.1.0


@pytest.fixture
def old_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    shutil.copy(VERSION_1, path)
    return path


def test_a_version_1_catalog_is_read_as_it_is(old_catalog: Path, toy_model: str) -> None:
    with Catalog(old_catalog) as opened:
        assert opened.meta("schema_version") == 1 and opened.count() == 12
    hits = Searcher(old_catalog, ModelChoice(model=toy_model)).search("a red circle", 3)
    assert len(hits) == 3
    version = sqlite3.connect(old_catalog).execute("select value from imgsearch_meta where key = 'schema_version'")
    assert version.fetchone() == (1,)  # reading never migrates


def test_opening_a_version_1_catalog_for_writing_upgrades_it_in_place(old_catalog: Path, toy_model: str) -> None:
    ids = [r[0] for r in sqlite3.connect(old_catalog).execute("select id from images order by id")]
    with Catalog(old_catalog, write=True) as opened:
        assert opened.meta("schema_version") == SCHEMA_VERSION
        assert opened.reembedded_ids() == set()
    conn = sqlite3.connect(old_catalog)
    assert [r[0] for r in conn.execute("select id from images order by id")] == ids
    triggers = {r[0] for r in conn.execute("select name from sqlite_master where type = 'trigger'")}
    assert {"images_embedding_length_on_insert", "images_embedding_length_on_update"} <= triggers
    info = run_cli("info", old_catalog)
    assert f"schema:      {SCHEMA_VERSION} (this datasette-imgsearch " in info and f"writes {SCHEMA_VERSION})" in info


def test_migrations_run_once_each_and_record_the_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "new.db")
    assert migrate(conn) == 0
    assert migrate(conn) == SCHEMA_VERSION
    assert conn.execute("select value from imgsearch_meta where key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)


def test_a_catalog_from_a_newer_release_is_refused(old_catalog: Path) -> None:
    conn = sqlite3.connect(old_catalog)
    with conn:
        conn.execute("update imgsearch_meta set value = 99 where key = 'schema_version'")
    conn.close()
    assert "written by a newer datasette-imgsearch (schema 99)" in run_cli("info", old_catalog, expect=1)


# The build plan ---------------------------------------------------------------------------------------
def found(path: str, size: int = 10, mtime: int = 1) -> FoundFile:
    return FoundFile(path, Path("/folder") / path, size, mtime)


def stored(id_: int, path: str, size: int = 10, mtime: int = 1) -> StoredFile:
    return StoredFile(id_, path, size, mtime, f"hash-{id_}")


def test_the_plan_skips_unchanged_files_reads_new_and_changed_ones_and_finds_vanished_rows() -> None:
    scan = ScanResult(
        files=[found("same.jpg"), found("new.jpg"), found("edited.jpg", size=11)],
        unreadable={"locked": "permission denied"},
        bad_names=["bad\\xff.jpg"],
        unreadable_files={"loop.jpg": "too many levels of symbolic links"},
    )
    rows = {p: stored(i, p) for i, p in enumerate(["same.jpg", "edited.jpg", "gone.jpg", "locked/a.jpg", "loop.jpg"], 1)}
    plan = plan_update(scan, rows)
    assert plan.unchanged == ["same.jpg"]
    assert [f.path for f in plan.to_read] == ["new.jpg", "edited.jpg"]
    assert [r.path for r in plan.vanished] == ["gone.jpg"]  # not the row under an unreadable folder, nor the loop
    assert len(plan.failures) == 2
    assert plan.present == {"same.jpg", "new.jpg", "edited.jpg", "bad\\xff.jpg", "loop.jpg"}


def test_a_reembed_plan_lists_the_rows_still_to_do_in_id_order() -> None:
    scan = ScanResult(files=[found("c.jpg"), found("a.jpg"), found("b.jpg"), found("new.jpg")])
    rows = {"a.jpg": stored(3, "a.jpg"), "b.jpg": stored(1, "b.jpg"), "c.jpg": stored(2, "c.jpg")}
    assert [f.path for f in plan_reembed(scan, rows, staged={2})] == ["b.jpg", "a.jpg"]


# SQL functions on every sqlite3 module -------------------------------------------------------------
def failing(*arguments: object) -> None:
    raise ValueError(f"bad arguments {arguments!r}")


def test_a_standard_library_connection_gets_readable_errors() -> None:
    conn = sqlite3.connect(":memory:")
    assert sqlite_functions.create_function(conn, "f", -1, failing) is True
    with pytest.raises(sqlite3.OperationalError, match=r"f\(\): bad arguments \(1, 'x'\)"):
        conn.execute("select f(1, 'x')").fetchone()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_connection_the_library_did_not_open_falls_back_safely() -> None:
    conn = sqlite3.connect(":memory:")
    conn.create_function(sqlite_functions.TOKEN_FUNCTION, 0, lambda: 12345)  # a token SQLite never handed out
    assert sqlite_functions.create_function(conn, "f", -1, failing) is False
    assert sqlite_functions.create_function(conn, "g", -1, lambda *a: len(a)) is False
    assert conn.execute("select g(1, 2, 3)").fetchone() == (3,)
    with pytest.raises(sqlite3.OperationalError, match="user-defined function raised exception"):
        conn.execute("select f()").fetchone()


def test_a_pysqlite3_connection_gets_readable_errors_from_its_own_library() -> None:
    dbapi2 = pytest.importorskip("pysqlite3.dbapi2", reason="pysqlite3-binary is installed in CI's second run")
    conn = dbapi2.connect(":memory:")
    assert sqlite_functions.create_function(conn, "f", -1, failing) is True
    with pytest.raises(dbapi2.OperationalError, match=r"f\(\): bad arguments \(2,\)"):
        conn.execute("select f(2)").fetchone()
