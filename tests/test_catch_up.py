"""A server that searches while a build writes catches up with the changed rows, never reloading every
vector at each commit, and stays exact throughout."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import index_path
from datasette_imgsearch.images.toyworld import write_world
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.vectors import snapshot, store
from datasette_imgsearch.vectors.kinds import KINDS
from datasette_imgsearch.vectors.ranking import top_k

from .conftest import run_cli


def exact_top(db: Path, vector: np.ndarray, k: int) -> list[int]:
    """The top k over the rows committed right now, straight from the stored embeddings."""
    with Catalog(db) as catalog:
        ids, matrix = catalog.embeddings()
    return [hit.id for hit in top_k(ids, matrix @ vector, k, set(), None)]


def change_the_folder(images: Path, tmp_path: Path) -> None:
    """Six new pictures, two removed, one replaced by new pixels: what a day's photos do to a folder."""
    write_world(tmp_path / "new", count=7, seed=41)
    new = sorted((tmp_path / "new").iterdir())
    for number, picture in enumerate(new[:6]):
        shutil.copy(picture, images / f"new-{number}.jpg")
    old = sorted(images.glob("[a-z]*-[a-z]*.jpg"))
    old[0].unlink()
    old[1].unlink()
    shutil.copy(new[6], old[2])


EXACT_SCORES = [name for name, kind in KINDS.items() if kind.exact_scores]


@pytest.mark.parametrize("kind", EXACT_SCORES + ["no index"])
def test_a_server_searching_during_a_build_catches_up_and_stays_exact(
    catalog: Path, images: Path, tmp_path: Path, toy_model: str, kind: str
) -> None:
    if kind == "no index":
        index_path(catalog).unlink()
    else:
        run_cli("index", catalog, "--type", kind)
    searcher = Searcher(catalog)
    vector, _ = searcher.query_vector("a red circle")
    base = searcher.store.current().base
    change_the_folder(images, tmp_path)
    views: list[str] = []

    def search_now(done: int, total: int) -> None:  # runs between the build's commits
        found = [hit.id for hit in searcher.store.search(vector, 8, set(), None)]
        assert found == exact_top(catalog, vector, 8)
        loaded = searcher.store.current()
        assert loaded.base is base  # caught up, never read in full again
        views.append(loaded.vectors_from)

    build(catalog, images, BuildOptions(ModelChoice(model=toy_model), batch_size=2), progress=search_now)
    assert any("caught up with" in view for view in views)
    found = [hit.id for hit in searcher.store.search(vector, 8, set(), None)]
    assert found == exact_top(catalog, vector, 8)
    assert searcher.store.current().base is not base  # the new index file: one full load
    assert searcher.store.current().size == 64


def test_a_row_changed_in_place_is_found_by_its_new_vector_only(catalog: Path) -> None:
    searcher = Searcher(catalog)
    conn = sqlite3.connect(catalog)
    ids = [row[0] for row in conn.execute("select id from images order by id")]
    changed, donor = ids[3], ids[40]
    old = np.frombuffer(conn.execute("select embedding from images where id = ?", [changed]).fetchone()[0], "<f4")
    new = np.frombuffer(conn.execute("select embedding from images where id = ?", [donor]).fetchone()[0], "<f4")
    assert searcher.store.search(old, 1, set(), None)[0].id == changed
    with conn:
        conn.execute("update images set embedding = (select embedding from images where id = ?) where id = ?", [donor, changed])
    conn.close()
    assert changed not in [hit.id for hit in searcher.store.search(old, 1, set(), None)]
    assert {hit.id for hit in searcher.store.search(new, 2, set(), None)} == {changed, donor}
    assert "caught up with 1 row changed since" in searcher.store.current().vectors_from


@pytest.mark.parametrize("selectors", ["FAISS leaves the hidden rows out", "FAISS without selectors"])
@pytest.mark.parametrize("kind", [name for name in EXACT_SCORES if KINDS[name].approximate])
def test_an_index_search_leaves_out_the_rows_changed_since_and_fetches_only_k(
    catalog: Path, monkeypatch: pytest.MonkeyPatch, kind: str, selectors: str
) -> None:
    import faiss

    if selectors == "FAISS without selectors":
        monkeypatch.delattr(faiss, "IDSelectorNot")
    fetched: list[tuple[int, bool]] = []
    from_index = store.VectorStore._from_index

    def counting(self, base, vectors, want, rerank=None, restriction=None):  # type: ignore[no-untyped-def]
        fetched.append((want, restriction is not None))
        return from_index(self, base, vectors, want, rerank, restriction)

    monkeypatch.setattr(store.VectorStore, "_from_index", counting)
    run_cli("index", catalog, "--type", kind)
    searcher = Searcher(catalog)
    conn = sqlite3.connect(catalog)
    ids = [row[0] for row in conn.execute("select id from images order by id")]
    vector = searcher.store.embedding(ids[5])
    top = [hit.id for hit in searcher.store.search(vector, 6, set(), None)]
    donors = [id_ for id_ in reversed(ids) if id_ not in top][:3]
    with conn:  # the best match and two more changed in place, one removed
        conn.executemany("update images set embedding = (select embedding from images where id = ?) where id = ?",
                         zip(donors, top[:3]))
        conn.execute("delete from images where id = ?", [top[3]])
    conn.close()
    fetched.clear()
    found = [hit.id for hit in searcher.store.search(vector, 6, {ids[0]}, None)]
    assert found == [id_ for id_ in exact_top(catalog, vector, 7) if id_ != ids[0]][:6]
    assert not set(top[:4]) & set(found)
    assert fetched == ([(7, True)] if selectors == "FAISS leaves the hidden rows out" else [(7 + 4, False)])


def test_filtered_search_during_a_catch_up_sees_new_rows_and_not_removed_ones(catalog: Path) -> None:
    searcher = Searcher(catalog)
    conn = sqlite3.connect(catalog)
    ids = [row[0] for row in conn.execute("select id from images order by id")]
    with conn:
        conn.execute("delete from images where id = ?", [ids[0]])
        conn.execute("insert into images (path, name, folder, size, modified, mtime_ns, hash, embedding) "
                     "select 'copy.jpg', 'copy.jpg', '', size, modified, mtime_ns, hash, embedding from images where id = ?",
                     [ids[1]])
        added = conn.execute("select max(id) from images").fetchone()[0]
    conn.close()
    vector = searcher.store.embedding(ids[1])
    hits = searcher.store.search(vector, 3, set(), None)
    assert {hits[0].id, hits[1].id} == {ids[1], added}
    among = searcher.store.search(vector, 5, set(), None, candidates=np.array([ids[0], added, ids[2]]))
    assert [hit.id for hit in among] == [added, ids[2]]


def test_the_calibration_extends_its_best_scores_over_appended_rows_and_redoes_them_after_an_edit(catalog: Path) -> None:
    searcher = Searcher(catalog)
    rng = np.random.default_rng(5)
    probes = rng.normal(size=(4, 32)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    conn = sqlite3.connect(catalog)

    def commit(sql: str, *params: object) -> None:
        with conn:
            conn.execute(sql, params)

    def appended(vector: np.ndarray, name: str) -> None:
        commit("insert into images (path, name, folder, size, modified, mtime_ns, hash, embedding) "
               "values (?, ?, '', 1, '2024-01-01T00:00:00+00:00', 0, ?, ?)", name, name, name, vector.astype("<f4").tobytes())

    def assert_best_is_exact() -> None:
        with Catalog(catalog) as opened:
            _, matrix = opened.embeddings()
        assert np.allclose(searcher.store.best_scores(probes, searcher.store.current()), (probes @ matrix.T).max(axis=1),
                           atol=1e-6)

    assert_best_is_exact()
    appended(probes[0], "first.jpg")
    first = searcher.store.current().delta
    assert_best_is_exact()
    appended(probes[1], "second.jpg")
    assert searcher.store.current().delta.appended_to == first.serial  # only the new row was scored
    assert_best_is_exact()
    commit("update images set embedding = ? where id = (select min(id) from images)", probes[2].astype("<f4").tobytes())
    assert searcher.store.current().delta.appended_to == 0  # a base row changed in place sorts before the new rows
    assert_best_is_exact()
    commit("update images set embedding = ? where path = 'first.jpg'", (-probes[0]).astype("<f4").tobytes())
    assert searcher.store.current().delta.appended_to == 0  # an edited row: scored again in full
    assert_best_is_exact()
    conn.close()


def test_a_delta_past_a_quarter_of_its_base_is_read_in_full(catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshot, "CATCH_UP_MIN_ROWS", 0)
    searcher = Searcher(catalog)
    base = searcher.store.current().base
    conn = sqlite3.connect(catalog)
    with conn:
        conn.execute("delete from images where id in (select id from images order by id limit 10)")
    assert searcher.store.current().base is base  # 10 of 60: caught up
    with conn:
        conn.execute("delete from images where id in (select id from images order by id limit 10)")
    conn.close()
    assert searcher.store.current().base is not base  # 20 of 60: read again
    expected = "stored embeddings (exact; index stale by more changed rows than a catch-up carries)"
    assert searcher.store.current().vectors_from == expected
    assert searcher.store.current().size == 40


def test_the_change_log_holds_what_the_index_or_the_duplicate_groups_lack(catalog: Path) -> None:
    def logged() -> int:
        conn = sqlite3.connect(catalog)
        try:
            return conn.execute("select count(*) from imgsearch_changes").fetchone()[0]
        finally:
            conn.close()

    assert logged() == 0  # the build's index holds every change
    conn = sqlite3.connect(catalog)
    with conn:
        conn.execute("delete from images where id = (select min(id) from images)")
        conn.execute("update images set embedding = embedding where id = (select max(id) from images)")
    conn.close()
    assert logged() == 2
    with Catalog(catalog) as opened:
        assert len(opened.changed_since(int(opened.meta("index_version")))) == 2
    run_cli("index", catalog)
    assert logged() == 2  # the near-duplicate groups have not read them yet
    run_cli("build", catalog)
    assert logged() == 0


def test_a_migrated_catalog_logs_changes_from_its_migration_on(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "catalog-v1.db", old)
    with Catalog(old, write=True) as catalog:
        migrated_at = catalog.catalog_version
        assert int(catalog.meta("changes_from")) == migrated_at
        assert catalog.changed_since(migrated_at - 1) is None  # changes before it were never logged
        assert len(catalog.changed_since(migrated_at)) == 0


def test_a_search_ranks_the_state_of_the_catalog_it_was_given(catalog: Path) -> None:
    """A request reads its terms, their strength and its hits from one snapshot: a build that commits in
    between changes the next request's answers, not half of this one's."""
    searcher = Searcher(catalog)
    asked = searcher.store.current()
    best = searcher.search("a red circle", 1, snapshot=asked)[0].id
    with sqlite3.connect(catalog) as conn:  # its picture now looks like the catalog's last row
        conn.execute("update images set embedding = (select embedding from images order by id desc limit 1) where id = ?",
                     [best])
    assert searcher.search("a red circle", 1, snapshot=asked)[0].id == best
    assert searcher.search("a red circle", 1)[0].id != best
    assert searcher.store.current().fingerprint != asked.fingerprint


def test_a_search_of_an_unchanged_catalog_asks_its_state_once_and_its_columns_never(catalog: Path) -> None:
    """In a busy server each row SQLite hands back releases the GIL, which the search thread then waits to
    take back: a request asks the catalog's version once, and its columns only when its schema changed."""
    searcher = Searcher(catalog)
    searcher.search("a blue square", 10)
    statements: list[str] = []
    searcher.store.catalog().db.conn.set_trace_callback(statements.append)  # this thread's kept connection
    snapshot = searcher.store.current()
    readings = searcher.readings("a green triangle", snapshot)
    searcher.strong_score(readings, snapshot)
    assert searcher.search("a green triangle", 10, snapshot=snapshot)
    asked = " ".join(statements)
    assert asked.count("'catalog_version'") == 1
    assert "table_info" not in asked and "sqlite_master" not in asked
