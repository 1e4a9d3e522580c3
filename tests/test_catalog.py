"""The catalog's schema and migrations, the build plan, and how SQL functions reach SQLite."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.build.plan import plan_reembed, plan_update
from datasette_imgsearch.catalog import migrations, schema
from datasette_imgsearch.catalog.catalog import IDS_AT_A_TIME, Catalog, StoredFile, rows_with_ids
from datasette_imgsearch.catalog.migrations import migrate, run_script, schema_version
from datasette_imgsearch.catalog.schema import COLUMNS, REMOVED_TABLE, TABLE
from datasette_imgsearch.images.scan import FoundFile, ScanResult
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.sql import binding

from .conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures"
# A real catalog of each earlier schema, written by the release that wrote it: 0.1.0 (12 rows), and two
# later development builds with a removed row and an error row each (10 rows).
EARLIER_SCHEMAS = {1: (FIXTURES / "catalog-v1.db", 12), 2: (FIXTURES / "catalog-v2.db", 11), 3: (FIXTURES / "catalog-v3.db", 10),
                   4: (FIXTURES / "catalog-v4.db", 10), 5: (FIXTURES / "catalog-v5.db", 11), 6: (FIXTURES / "catalog-v6.db", 11)}
VERSION_1 = EARLIER_SCHEMAS[1][0]


@pytest.fixture
def old_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    shutil.copy(VERSION_1, path)
    return path


@pytest.fixture(params=sorted(EARLIER_SCHEMAS), ids=lambda version: f"schema {version}")
def earlier_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[int, Path, int]:
    """(its schema, a copy of a real catalog of that schema, its rows)."""
    source, rows = EARLIER_SCHEMAS[request.param]
    path = tmp_path / f"schema-{request.param}.db"
    shutil.copy(source, path)
    return request.param, path, rows


def written_schema(path: Path) -> int:
    return sqlite3.connect(path).execute("select value from imgsearch_meta where key = 'schema_version'").fetchone()[0]


def test_there_is_a_fixture_catalog_of_every_earlier_schema() -> None:
    assert set(EARLIER_SCHEMAS) >= set(range(1, schema_version()))
    assert all(written_schema(path) == version for version, (path, _) in EARLIER_SCHEMAS.items())


def test_an_earlier_catalog_is_read_as_it_is(earlier_catalog: tuple[int, Path, int], toy_model: str) -> None:
    version, path, rows = earlier_catalog
    with Catalog(path) as opened:
        assert opened.meta("schema_version") == version and opened.count() == rows
    hits = Searcher(path, ModelChoice(model=toy_model)).search("a red circle", 3)
    assert len(hits) == 3
    assert written_schema(path) == version  # reading never migrates


def test_opening_an_earlier_catalog_for_writing_upgrades_it_in_place(earlier_catalog: tuple[int, Path, int]) -> None:
    version, path, rows = earlier_catalog
    before = sqlite3.connect(path)
    ids = [r[0] for r in before.execute("select id from images order by id")]
    removed = before.execute("select id, path from imgsearch_removed").fetchall()
    before.close()
    with Catalog(path, write=True) as opened:
        assert opened.meta("schema_version") == schema_version()
        assert opened.reembedded_ids() == set()
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("select id from images order by id")] == ids
    assert conn.execute("select id, path from imgsearch_removed").fetchall() == removed
    triggers = {r[0] for r in conn.execute("select name from sqlite_master where type = 'trigger'")}
    assert {"images_embedding_length_on_insert", "images_embedding_length_on_update"} <= triggers
    info = run_cli("info", path)
    assert f"schema:      {schema_version()} (this datasette-imgsearch " in info and f"writes {schema_version()})" in info


def test_the_migrations_arrive_at_the_schema_the_code_describes(tmp_path: Path, earlier_catalog: tuple[int, Path, int]) -> None:
    _, path, _ = earlier_catalog
    new = tmp_path / "new.db"
    for built in (path, new):
        conn = sqlite3.connect(built)
        migrate(conn)
        for table in (TABLE, REMOVED_TABLE):
            columns = {row[1]: row[2] for row in conn.execute(f"pragma table_info([{table}])")}
            assert [name for name in columns if name in COLUMNS] == list(COLUMNS)  # removed rows also say when
            assert [columns[name] for name in COLUMNS] == [kind.split()[0] for kind in COLUMNS.values()]


def add_a_caption_column(conn: sqlite3.Connection) -> None:
    """What the next migration that adds a column will look like."""
    run_script(conn, """
ALTER TABLE [images] ADD COLUMN [caption] TEXT;
ALTER TABLE [imgsearch_removed] ADD COLUMN [caption] TEXT;
""")


@pytest.mark.parametrize("start", ["new"] + sorted(EARLIER_SCHEMAS))
def test_a_migration_that_adds_a_column_applies_to_new_catalogs_and_to_every_earlier_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: object, world: Path, toy_model: str
) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS + [add_a_caption_column])
    monkeypatch.setitem(schema.COLUMNS, "caption", "TEXT")
    path = tmp_path / "photos.db"
    if start == "new":
        build(path, world, BuildOptions(ModelChoice(model=toy_model), batch_size=16))
    else:
        shutil.copy(EARLIER_SCHEMAS[start][0], path)
        with Catalog(path, write=True):
            pass
    assert written_schema(path) == len(migrations.MIGRATIONS)
    conn = sqlite3.connect(path)
    assert "caption" in {row[1] for row in conn.execute("pragma table_info(images)")}
    assert conn.execute("select count(*) from images where caption is null").fetchone()[0] == conn.execute(
        "select count(*) from images").fetchone()[0] > 0


def test_migrations_run_once_each_and_record_the_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "new.db")
    assert migrate(conn) == 0
    assert migrate(conn) == schema_version()
    assert conn.execute("select value from imgsearch_meta where key = 'schema_version'").fetchone() == (schema_version(),)


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


def test_a_standard_library_connection_to_a_claimed_file_gets_readable_errors(tmp_path: Path) -> None:
    binding.claim(str(tmp_path / "claimed.db"))
    conn = sqlite3.connect(tmp_path / "claimed.db")
    assert binding.create_function(conn, "f", -1, failing) is True
    with pytest.raises(sqlite3.OperationalError, match=r"f\(\): bad arguments \(1, 'x'\)"):
        conn.execute("select f(1, 'x')").fetchone()


@pytest.mark.parametrize("opened", ["other.db", ":memory:"])
def test_connections_to_other_files_are_left_exactly_as_they_were(tmp_path: Path, opened: str) -> None:
    """Nothing process-wide: only the catalogs' connections get the token function."""
    binding.claim(str(tmp_path / "claimed.db"))
    conn = sqlite3.connect(opened if opened == ":memory:" else tmp_path / opened)
    with pytest.raises(sqlite3.OperationalError, match="no such function"):
        conn.execute(f"select {binding.TOKEN_FUNCTION}()")
    assert binding.create_function(conn, "f", -1, failing) is False


def test_nothing_is_kept_per_connection(tmp_path: Path) -> None:
    """However many connections come and go, one callback per function is all that stays."""
    def function(*arguments: object) -> int:
        return len(arguments)

    binding.claim(str(tmp_path / "claimed.db"))
    before = len(binding._callbacks)
    for _ in range(200):
        conn = sqlite3.connect(tmp_path / "claimed.db")
        assert binding.create_function(conn, "f", -1, function) is True
        assert conn.execute("select f(1, 2)").fetchone() == (2,)
        conn.close()
    assert len(binding._callbacks) == before + 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("forged", [12345, "_sqlite3:12345:0000", "_sqlite3:12345", "nothing"])
def test_a_forged_token_falls_back_safely(tmp_path: Path, forged: object) -> None:
    conn = sqlite3.connect(tmp_path / "unclaimed.db")
    conn.create_function(binding.TOKEN_FUNCTION, 0, lambda: forged)  # a token no auto-extension signed
    assert binding.create_function(conn, "f", -1, failing) is False
    assert binding.create_function(conn, "g", -1, lambda *a: len(a)) is False
    assert conn.execute("select g(1, 2, 3)").fetchone() == (3,)
    with pytest.raises(sqlite3.OperationalError, match="user-defined function raised exception"):
        conn.execute("select f()").fetchone()


def test_a_pysqlite3_connection_gets_readable_errors_from_its_own_library(tmp_path: Path) -> None:
    dbapi2 = pytest.importorskip("pysqlite3.dbapi2", reason="pysqlite3-binary is installed in CI's second run")
    binding.claim(str(tmp_path / "claimed.db"))
    conn = dbapi2.connect(str(tmp_path / "claimed.db"))
    assert binding.create_function(conn, "f", -1, failing) is True
    with pytest.raises(dbapi2.OperationalError, match=r"f\(\): bad arguments \(2,\)"):
        conn.execute("select f(2)").fetchone()


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed (the ray extra brings it)")
@pytest.mark.parametrize("first, pandas_in_sqlite_utils", [
    ("", False),  # our command line: half a second less of every cold command
    ("import pandas\n", True),  # a process that loaded pandas first keeps sqlite-utils as it is
    ("import sqlite_utils\n", True),  # so does one that loaded sqlite-utils first (Datasette does)
])
def test_sqlite_utils_is_imported_without_pandas_unless_either_came_first(first: str, pandas_in_sqlite_utils: bool) -> None:
    probe = (first + "import sys\nimport datasette_imgsearch.cli\nimport sqlite_utils.db\n"
             "loaded_by_us = 'pandas' in sys.modules\nimport pandas\n"  # hidden only while sqlite-utils was imported
             "print(loaded_by_us, sqlite_utils.db.pd is not None, pandas.DataFrame is not None)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(pandas_in_sqlite_utils), str(pandas_in_sqlite_utils), "True"]


@pytest.mark.parametrize("count", [0, 1, IDS_AT_A_TIME, IDS_AT_A_TIME + 1, 2 * IDS_AT_A_TIME + 5])
def test_rows_are_found_by_id_past_sqlites_cap_on_parameters(count: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, IDS_AT_A_TIME)  # builds differ (32,766 by default): the cap, pinned
    conn.execute("create table images (id integer primary key, name text)")
    conn.executemany("insert into images values (?, ?)", ((i, f"{i}.jpg") for i in range(1, 3 * IDS_AT_A_TIME)))
    wanted = list(range(count, 0, -1))  # newest first, as a ranking asks
    found = list(rows_with_ids(conn, "select id, name from images", wanted, "order by id"))
    assert sorted(found) == [(i, f"{i}.jpg") for i in range(1, count + 1)]
    assert list(rows_with_ids(conn, "select id from images", [0, -5, 10 ** 9])) == []  # no such rows: none


@pytest.mark.parametrize("change", [
    "alter table images add column [added later] text",  # a migration's kind of change
    "create index [a new index] on images (name)",  # not a column, but the schema moved: read again
])
def test_what_a_reader_keeps_by_schema_is_read_again_only_after_the_schema_changes(catalog: Path, change: str) -> None:
    reads: list[set[str]] = []

    def columns(conn: sqlite3.Connection) -> set[str]:
        reads.append({row[1] for row in conn.execute("pragma table_info(images)")})
        return reads[-1]

    with Catalog(catalog) as reader:  # read-only, like a server's search thread
        assert reader.by_schema("columns", columns) == reader.by_schema("columns", columns) == reader.columns()
        assert len(reads) == 1
        with sqlite3.connect(catalog) as writer:  # another connection, as a build's migration is
            writer.execute(change)
        assert reader.by_schema("columns", columns) == reader.columns()
        assert len(reads) == 2
        assert ("added later" in reader.columns()) == change.startswith("alter")
