"""The sibling FAISS index: keyed by row id, written atomically, and never trusted when stale."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import index_path
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.vectors.index import filled_index, index_state, read_index, write_index
from datasette_imgsearch.vectors.kinds import KINDS, kind_of

from .conftest import run_cli


def unit_rows(count: int, dimension: int = 32, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


APPROXIMATE = [name for name, kind in KINDS.items() if kind.approximate]
RERANKED = [name for name, kind in KINDS.items() if kind.rerank]


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_index_type_is_keyed_by_row_id(kind: str) -> None:
    matrix = unit_rows(2000)
    ids = np.arange(1000, 3000, dtype=np.int64)
    index = filled_index(kind_of(kind), matrix.shape[1], len(ids), lambda wanted: matrix[:wanted], [(ids, matrix)])
    assert index.ntotal == 2000
    _, found = index.search(matrix[:20], 1)
    assert (found[:, 0] == ids[:20]).mean() >= 0.9  # approximate types may miss a few


def test_the_index_file_holds_the_catalogs_ids(catalog: Path) -> None:
    index = read_index(index_path(catalog))
    conn = sqlite3.connect(catalog)
    ids = sorted(r[0] for r in conn.execute("select id from images"))
    conn.close()
    assert sorted(faiss.vector_to_array(index.id_map).tolist()) == ids


def test_a_catalog_change_makes_the_index_stale_until_rebuilt(catalog: Path) -> None:
    opened = Catalog(catalog, write=True)
    try:
        assert index_state(opened).fresh
        with opened.db.conn:
            opened.db.conn.execute("delete from images where id = (select min(id) from images)")
        state = index_state(opened)
        assert not state.fresh and "catalog changed" in state.reason
    finally:
        opened.close()
    assert "wrote" in run_cli("index", catalog)
    assert "fresh" in run_cli("info", catalog)


def test_a_foreign_index_file_is_detected(catalog: Path, tmp_path: Path, images: Path, toy_model: str) -> None:
    other = tmp_path / "other.db"
    shutil.copytree(images, tmp_path / "fewer")
    for path in sorted((tmp_path / "fewer").iterdir())[:10]:
        path.unlink()
    run_cli("build", other, tmp_path / "fewer", "--model", toy_model, "--silent")
    shutil.copy(index_path(other), index_path(catalog))
    state = index_state(Catalog(catalog))
    assert not state.fresh and "not the file this catalog wrote" in state.reason


def test_the_index_file_is_hashed_only_when_it_is_not_the_file_written_and_then_once(
    images: Path, tmp_path: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasette_imgsearch.vectors import index

    catalog = tmp_path / "photos.db"
    build(catalog, images, BuildOptions(ModelChoice(model=toy_model), batch_size=16))
    hashed: list[Path] = []
    real = index.sha256_of
    monkeypatch.setattr(index, "sha256_of", lambda path: hashed.append(path) or real(path))
    monkeypatch.setattr(index, "HASHED", LRU(64))
    with Catalog(catalog) as opened:
        assert index_state(opened).fresh and index_state(opened).fresh
    assert hashed == []  # the very file build wrote: recognised by its stamp
    moved = index_path(catalog).with_name("copy")
    shutil.copy(index_path(catalog), moved)
    moved.replace(index_path(catalog))  # the same bytes in another file, as a copy to another machine gives
    with Catalog(catalog) as opened:
        assert index_state(opened).fresh and index_state(opened).fresh
    assert hashed == [index_path(catalog)]  # hashed once, then remembered


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_index_types_can_be_chosen_and_are_remembered(catalog: Path, kind: str) -> None:
    assert f"({kind}, 60 vectors)" in run_cli("index", catalog, "--type", kind)
    assert Catalog(catalog).meta("index_type") == kind
    searcher = Searcher(catalog)
    hits = searcher.search("a red circle", 5)
    assert f"({kind})" in searcher.store.current().vectors_from
    assert len(hits) == 5 and searcher.store.current().size == 60


def test_a_stale_or_missing_index_never_gives_wrong_rows(catalog: Path) -> None:
    searcher = Searcher(catalog)
    first = searcher.search("a red circle", 3)
    gone = first[0].id
    conn = sqlite3.connect(catalog)
    with conn:
        conn.execute("delete from images where id = ?", [gone])
    conn.close()
    after = searcher.search("a red circle", 3)
    assert gone not in [hit.id for hit in after]
    assert "caught up with 1 row changed since" in searcher.store.current().vectors_from
    assert [h.id for h in Searcher(catalog).search("a red circle", 3)] == [h.id for h in after]  # a fresh load too
    index_path(catalog).unlink()
    assert [h.id for h in Searcher(catalog).search("a red circle", 3)] == [h.id for h in after]


def test_a_rebuilt_index_is_picked_up_without_a_restart(catalog: Path) -> None:
    searcher = Searcher(catalog)
    searcher.search("a square", 3)
    assert "(exact)" in searcher.store.current().vectors_from
    run_cli("index", catalog, "--type", "hnsw")
    searcher.search("a square", 3)
    assert "hnsw" in searcher.store.current().vectors_from


def test_the_index_is_written_atomically(catalog: Path) -> None:
    write_index(Catalog(catalog, write=True))
    assert not Path(str(index_path(catalog)) + ".tmp").exists()


@pytest.mark.parametrize("mapping", ["memory-mapped", "read in full"])
def test_an_ivf_index_is_memory_mapped_where_faiss_can_and_answers_alike(
    catalog: Path, monkeypatch: pytest.MonkeyPatch, mapping: str
) -> None:
    import faiss

    from datasette_imgsearch.search.searcher import Searcher
    from datasette_imgsearch.vectors.index import read_index

    run_cli("index", catalog, "--type", "ivf")
    expected = [h.id for h in Searcher(catalog).search("a blue square", 5)]
    if mapping == "read in full":  # a FAISS without memory mapping
        monkeypatch.delattr(faiss, "IO_FLAG_MMAP")
    index = read_index(index_path(catalog))  # held: the lists below belong to it
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    assert type(lists).__name__ == ("OnDiskInvertedLists" if mapping == "memory-mapped" else "ArrayInvertedLists")
    assert [h.id for h in Searcher(catalog).search("a blue square", 5)] == expected


@pytest.mark.parametrize("kind", ["sq8", "hnsw"])
@pytest.mark.parametrize("mapping", ["memory-mapped", "read in full"])
def test_the_codes_of_other_index_types_are_memory_mapped_where_faiss_can_and_answer_alike(
    catalog: Path, monkeypatch: pytest.MonkeyPatch, kind: str, mapping: str
) -> None:
    import faiss

    from datasette_imgsearch.search.searcher import Searcher

    run_cli("index", catalog, "--type", kind)
    expected = [h.id for h in Searcher(catalog).search("a blue square", 5)]
    if mapping == "read in full":  # a FAISS that cannot map flat codes
        monkeypatch.delattr(faiss, "IO_FLAG_MMAP_IFC")
    index = read_index(index_path(catalog), kind)
    inner = faiss.downcast_index(index.index)
    storage = faiss.downcast_index(inner.storage) if kind == "hnsw" else inner
    assert storage.codes.is_owned == (mapping == "read in full")
    assert [h.id for h in Searcher(catalog).search("a blue square", 5)] == expected
