"""Semantic ranking inside a filter: any WHERE first, then the exact k best of the rows that passed."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from datasette.app import Datasette

from datasette_imgsearch.catalog.schema import from_blob
from datasette_imgsearch.images.toyworld import label_of
from datasette_imgsearch.search.arguments import Candidates
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.vectors import snapshot, store
from datasette_imgsearch.vectors.index import restricted_to
from datasette_imgsearch.vectors.kinds import KINDS

from .conftest import candidates_of, run_cli
from .test_plugin import sql

BLUE = "(select json_group_array(id) from images where name like 'blue-%')"


def brute_force(db: Path, vector: np.ndarray, where: str) -> list[int]:
    """Every passing row scored one by one: what a filtered ranking must equal."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"select id, embedding from images where {where}").fetchall()
    scored = sorted(((-float(from_blob(blob) @ vector), id_) for id_, blob in rows))
    return [id_ for _, id_ in scored]


@pytest.mark.parametrize("first_pass", [False, True], ids=["float32 pass", "bfloat16 first pass"])
@pytest.mark.parametrize("where,gathered", [
    ("name like 'blue-%'", False),        # a quarter of the rows: one pass over all, the candidates picked out
    ("name not like 'red-circle%'", False),  # most rows: the same
    ("id in (3, 17, 42)", True),          # a few rows (under a twelfth): their vectors are gathered
])
def test_a_filtered_ranking_is_the_exact_ranking_of_the_rows_that_passed(
    shared_catalog: Path, where: str, gathered: bool, first_pass: bool
) -> None:
    searcher = Searcher(shared_catalog)
    searcher.store.first_pass_rows = 1 if first_pass else 10**9  # 1: as if it held millions of rows
    with sqlite3.connect(shared_catalog) as conn:
        candidates = np.array([r[0] for r in conn.execute(f"select id from images where {where}")], dtype=np.int64)
    vector, _ = searcher.query_vector("a red circle")
    hits = searcher.search("a red circle", 10, None, candidates_of(candidates))
    expected = brute_force(shared_catalog, vector, where)[:10]
    assert [h.id for h in hits] == expected
    assert len(hits) == min(10, len(candidates))
    with sqlite3.connect(shared_catalog) as conn:
        exact = [float(from_blob(conn.execute("select embedding from images where id = ?", [h.id]).fetchone()[0]) @ vector)
                 for h in hits]
    assert [h.score for h in hits] == pytest.approx(exact, abs=1e-5)
    assert (searcher.store.current().base.rough is not None) == (first_pass and not gathered)


@pytest.mark.parametrize("lookup", ["id table", "binary search"])
@pytest.mark.parametrize("order", ["shuffled", "repeated", "with ids that are not rows"])
def test_candidates_in_any_order_with_repeats_rank_like_the_sorted_unique_ids(
    shared_catalog: Path, monkeypatch: pytest.MonkeyPatch, lookup: str, order: str
) -> None:
    if lookup == "binary search":  # what ids too sparse for a table (large gaps) go through
        monkeypatch.setattr(snapshot, "ID_TABLE_SLACK", 0)
    with sqlite3.connect(shared_catalog) as conn:
        passing = [r[0] for r in conn.execute("select id from images where name not like 'red-circle%'")]
    given = list(reversed(passing))
    if order == "repeated":
        given = given + passing[:20]
    elif order == "with ids that are not rows":
        given = [0, 10**9, 2**63 - 1] + given
    searcher = Searcher(shared_catalog)
    loaded = searcher.store.current()
    hits = searcher.search("a red circle", 60, None, Candidates(json.dumps(given)))
    vector, _ = searcher.query_vector("a red circle")
    assert [h.id for h in hits] == brute_force(shared_catalog, vector, "name not like 'red-circle%'")
    assert (loaded.base.row_of_id is not None) == (lookup == "id table")


def test_an_approximate_index_still_ranks_the_candidates_exactly(catalog: Path) -> None:
    run_cli("index", catalog, "--type", "hnsw")
    searcher = Searcher(catalog)
    assert "hnsw" in searcher.store.current().vectors_from
    with sqlite3.connect(catalog) as conn:
        candidates = np.array([r[0] for r in conn.execute("select id from images where name like 'green-%'")], dtype=np.int64)
    vector, _ = searcher.query_vector("a green square")
    hits = searcher.search("a green square", 8, None, candidates_of(candidates))
    assert [h.id for h in hits] == brute_force(catalog, vector, "name like 'green-%'")[:8]


@pytest.mark.parametrize("kind", [name for name, kind in KINDS.items() if kind.approximate])
def test_many_candidates_are_searched_in_the_index_restricted_to_them(
    catalog: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(store, "EXACT_CANDIDATES", 0)  # as if a million rows passed the filter
    restricted = []
    monkeypatch.setattr(store, "restricted_to",
                        lambda index, kind, ids, share: restricted.append(len(ids)) or restricted_to(index, kind, ids, share))
    run_cli("index", catalog, "--type", kind)
    searcher = Searcher(catalog)
    where = "name like 'green-%' or name like 'red-%'"
    with sqlite3.connect(catalog) as conn:
        candidates = np.array([r[0] for r in conn.execute(f"select id from images where {where}")], dtype=np.int64)
    vector, _ = searcher.query_vector("a green square")
    hits = [h.id for h in searcher.search("a green square", 8, None, candidates_of(candidates))]
    expected = brute_force(catalog, vector, where)[:8]
    assert restricted == [len(candidates)]
    assert set(hits) <= set(candidates.tolist())
    if kind == "sq8":  # 8-bit scores, never re-scored: near-ties within a class may swap
        assert len(set(hits) & set(expected)) >= 6
    else:
        assert hits == expected


def test_without_search_time_selectors_in_faiss_the_candidates_are_read_exactly(
    catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    monkeypatch.setattr(store, "EXACT_CANDIDATES", 0)
    monkeypatch.delattr(faiss, "IDSelectorBitmap")
    run_cli("index", catalog, "--type", "ivfsq8")
    searcher = Searcher(catalog)
    vector, _ = searcher.query_vector("a blue circle")
    with sqlite3.connect(catalog) as conn:
        candidates = np.array([r[0] for r in conn.execute("select id from images where name like 'blue-%'")], dtype=np.int64)
    hits = searcher.search("a blue circle", 5, None, candidates_of(candidates))
    assert [h.id for h in hits] == brute_force(catalog, vector, "name like 'blue-%'")[:5]


@pytest.mark.parametrize("kind", ["hnsw", "ivfsq8"])
def test_the_restricted_index_search_sees_rows_committed_since_and_not_removed_ones(
    catalog: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(store, "EXACT_CANDIDATES", 0)
    run_cli("index", catalog, "--type", kind)
    searcher = Searcher(catalog)
    conn = sqlite3.connect(catalog)
    blue = [r[0] for r in conn.execute("select id from images where name like 'blue-%' order by id")]
    vector = searcher.store.embedding(blue[0])
    assert searcher.store.search(vector, 1, set(), None, candidates=np.array(blue))[0].id == blue[0]
    with conn:
        conn.execute("insert into images (path, name, folder, size, modified, mtime_ns, hash, embedding) "
                     "select 'copy.jpg', 'copy.jpg', '', size, modified, mtime_ns, hash, embedding from images where id = ?",
                     [blue[0]])
        added = conn.execute("select max(id) from images").fetchone()[0]
        conn.execute("delete from images where id = ?", [blue[0]])
    conn.close()
    hits = searcher.store.search(vector, 3, set(), None, candidates=np.array([*blue, added]))
    assert hits[0].id == added and blue[0] not in [h.id for h in hits]
    assert "caught up with" in searcher.store.current().vectors_from


@pytest.mark.asyncio
async def test_in_sql_the_filter_runs_first_and_k_rows_come_back(shared_catalog: Path) -> None:
    ds = Datasette([str(shared_catalog)])
    await ds.invoke_startup()
    recipe = f"""
        select images.name from json_each(imgsearch('a red circle', 10, null, {BLUE})) as hit
        join images on images.id = json_extract(hit.value, '$.id') order by hit.key"""
    names = [row["name"] for row in (await sql(ds, recipe)).json()]
    assert len(names) == 10 and all(label_of(name)[0] == "blue" for name in names)
    assert all(label_of(name) == ("blue", "circle") for name in names[:4])  # the closest blue things to a red circle


@pytest.mark.asyncio
@pytest.mark.parametrize("candidates,message", [
    ("'not json'", "this is not JSON"),
    ("'[1, \"x\"]'", "candidates must be a JSON array of row ids"),
    ("'{\"id\": 1}'", "candidates must be a JSON array of row ids"),
    ("42", "candidates must be a JSON array of row ids"),
    ("'[-1]'", "candidates must be a JSON array of row ids"),
    ("'[1.5]'", "candidates must be a JSON array of row ids"),
    ("'[99999999999999999999]'", "candidates must be a JSON array of row ids"),
    ("'[1, null]'", "candidates must be a JSON array of row ids"),
])
async def test_bad_candidates_are_a_readable_sql_error(shared_catalog: Path, candidates: str, message: str) -> None:
    ds = Datasette([str(shared_catalog)])
    response = await sql(ds, f"select imgsearch('a red circle', 5, null, {candidates}) as h")
    assert response.status_code == 400 and "imgsearch(): candidates must be" in response.text and message in response.text


@pytest.mark.asyncio
@pytest.mark.parametrize("candidates,count", [("'[]'", 0), ("'[999999, 1]'", 1), ("'[5, 1, 5, 3]'", 3), ("null", 5)])
async def test_empty_unknown_and_null_candidates(shared_catalog: Path, candidates: str, count: int) -> None:
    ds = Datasette([str(shared_catalog)])
    await ds.invoke_startup()
    response = await sql(ds, f"select imgsearch('a red circle', 5, null, {candidates}) as h")
    assert len(json.loads(response.json()[0]["h"])) == count


def test_a_changed_catalog_changes_the_filtered_answer(catalog: Path, images: Path, toy_model: str) -> None:
    searcher = Searcher(catalog)
    with sqlite3.connect(catalog) as conn:
        blue = np.array([r[0] for r in conn.execute("select id from images where name like 'blue-%'")], dtype=np.int64)
    before = searcher.search("a blue circle", 3, None, candidates_of(blue))
    for path in images.glob("blue-circle-*"):
        shutil.move(path, images.parent / path.name)  # out of the catalogued folder
    run_cli("build", catalog, "--silent")
    after = searcher.search("a blue circle", 3, None, candidates_of(blue))
    assert {h.id for h in after}.isdisjoint({h.id for h in before}) and all(h.id in set(blue) for h in after)
