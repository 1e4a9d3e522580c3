"""The second hostile pass: one request must not freeze the server, one failure must not last until
restart, private means private, and files that are not files cost nothing."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from datasette.app import Datasette

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.models.cache import ModelCache, load_embedder
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search import loading
from datasette_imgsearch.search.strength import cached_vectors, random_text_vectors

from .test_plugin import make_datasette, started


@pytest_asyncio.fixture
async def ds_shared(shared_catalog: Path) -> Datasette:
    return await started(make_datasette(shared_catalog), shared_catalog)


# Failures that pass are tried again ------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_model_folder_that_comes_back_is_used_without_a_restart(
    tmp_path: Path, world: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "RETRY_SECONDS", 0.0)
    model = tmp_path / "model"
    shutil.copytree(toy_model, model)
    db = tmp_path / "photos.db"
    build(db, world, BuildOptions(ModelChoice(model=str(model)), batch_size=16), models=ModelCache())  # not this process's
    model.rename(tmp_path / "away")
    ds = make_datasette(db)
    await ds.invoke_startup()
    for query in ("a red circle", "row:3"):
        response = await ds.client.get("/photos/images/-/imgsearch.json", params={"q": query})
        assert response.status_code == 503 and "no model folder" in response.json()["error"]
    (tmp_path / "away").rename(model)
    for query in ("a red circle", "row:3"):
        response = await ds.client.get("/photos/images/-/imgsearch.json", params={"q": query})
        assert response.status_code == 200 and response.json()["count"] > 0, response.text


def test_a_failed_load_is_not_tried_again_before_its_time() -> None:
    attempts: list[int] = []

    def load() -> None:
        attempts.append(1)
        raise RuntimeError("the model is not there")

    background = loading.BackgroundLoad(load, lambda: "a model", retry_seconds=3600)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            background.wait(10)
    assert len(attempts) == 1
    background.retry_seconds = 0
    with pytest.raises(RuntimeError):
        background.wait(10)
    assert len(attempts) == 2


# A damaged strength cache is never trusted -------------------------------------------------------------
def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A .npy header that claims ``shape`` of float32, with a few bytes after it."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (shape,)
    header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\x00" * 64


DAMAGES = ["another dimension", "NaN", "Inf", "zero vectors", "a header claiming 72 TiB", "a FIFO", "a folder",
           "float64", "one row short"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_strength_cache_is_encoded_again(
    tmp_path: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    embedder = load_embedder(toy_model, "cpu")
    good = random_text_vectors(embedder.identity, embedder.encode_texts, embedder.dimension)
    (path,) = (tmp_path / "cache").glob("*.npy")
    path.unlink()
    rows, dimension = good.shape
    if damage == "another dimension":
        np.save(path, np.ones((rows, 16), dtype=np.float32) / 4)
    elif damage in ("NaN", "Inf"):
        np.save(path, np.full((rows, dimension), np.nan if damage == "NaN" else np.inf, dtype=np.float32))
    elif damage == "zero vectors":
        np.save(path, np.zeros((rows, dimension), dtype=np.float32))
    elif damage == "a header claiming 72 TiB":
        path.write_bytes(npy_claiming((200, 10**11)))
    elif damage == "a FIFO":
        os.mkfifo(path)
    elif damage == "a folder":
        path.mkdir()
    elif damage == "float64":
        np.save(path, good.astype(np.float64))
    else:
        np.save(path, good[:-1])
    found: list[np.ndarray] = []
    reader = threading.Thread(target=lambda: found.append(
        random_text_vectors(embedder.identity, embedder.encode_texts, embedder.dimension)), daemon=True)
    reader.start()
    reader.join(30)
    assert found, "the cache reader blocked"
    assert np.array_equal(found[0], good)
    repaired = cached_vectors(path, good.shape)  # written again, where a file can take the damaged one's place
    assert (repaired is None) if damage == "a folder" else np.array_equal(repaired, good)


def test_a_repaired_strength_cache_is_read(tmp_path: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    embedder = load_embedder(toy_model, "cpu")
    good = random_text_vectors(embedder.identity, embedder.encode_texts, embedder.dimension)
    (path,) = (tmp_path / "cache").glob("*.npy")
    assert np.array_equal(cached_vectors(path, good.shape), good)

    def refuse(texts: list[str]) -> np.ndarray:
        raise AssertionError("a good cache file is read, not encoded again")

    assert np.array_equal(random_text_vectors(embedder.identity, refuse, embedder.dimension), good)


def test_every_search_works_while_a_strength_cache_is_damaged_and_after_it_is_repaired(
    tmp_path: Path, shared_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasette_imgsearch.search.searcher import Searcher

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    Searcher(shared_catalog).search("a red circle", 3)
    for path in (tmp_path / "cache").glob("*.npy"):
        np.save(path, np.ones((200, 16), dtype=np.float32) / 4)
    hits = Searcher(shared_catalog).search("a red circle", 3)
    assert len(hits) == 3 and all(hit.strength is not None for hit in hits)


async def status_of(ds: Datasette, path: str) -> int:
    return (await ds.client.get(path)).status_code


# Bad requests are 400s with a message, never 500s, never SQL in a body ---------------------------------
BAD_SEARCHES = {
    "an integer SQLite cannot hold": [("q", "a red circle"), ("id__gt", "99999999999999999999999")],
    "malformed JSON for a JSON filter": [("q", "a red circle"), ("path__arraycontains", "x")],
    "a superscript digit as the offset": [("q", "a red circle"), ("_next", "²")],
    "an Arabic-Indic digit as the offset": [("q", "a red circle"), ("_next", "٣")],
    "a superscript digit as a row id": [("q", "row:²")],
    "Arabic-Indic digits as k": [("q", "a red circle"), ("k", "١٠")],
    "Arabic-Indic digits as min_score": [("q", "a red circle"), ("min_score", "٠.٥")],
    "a thousand filters": [("q", "a red circle")] + [("path__contains", f"{n}") for n in range(1000)],
    "five hundred facets": [("q", "a red circle")] + [("_facet", "path")] * 500,
    "a thousand empty filters": [("q", "a red circle")] + [("path__contains", "")] * 1000,
}


@pytest.mark.asyncio
@pytest.mark.parametrize("page", ["/photos/images/-/imgsearch.json", "/photos/images/-/imgsearch"])
@pytest.mark.parametrize("case", list(BAD_SEARCHES))
async def test_bad_search_requests_are_400s_that_say_why(ds_shared: Datasette, page: str, case: str) -> None:
    response = await ds_shared.client.get(page + "?" + urllib.parse.urlencode(BAD_SEARCHES[case]))
    assert response.status_code == 400, response.text[:300]
    assert "json_group_array" not in response.text and "traceback" not in response.text.lower()  # no SQL, no trace


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/photos/images/-/imgsearch/thumbnail/٣", "/photos/images/-/imgsearch/original/²"])
async def test_picture_routes_take_ascii_row_ids_only(ds_shared: Datasette, path: str) -> None:
    assert (await ds_shared.client.get(path)).status_code in (302, 400, 404)  # never taken as row 3 or 2


@pytest.mark.parametrize("text", ["[1,2,]", "[+1]", "[007]", "[1 2]", "[1,,2]", "[,]", "[1.5]", "[-1]", "[٣]", "[1e3]"])
def test_candidates_are_strict_json_arrays_of_whole_numbers(text: str) -> None:
    from datasette_imgsearch.errors import QueryError
    from datasette_imgsearch.search.arguments import Candidates

    with pytest.raises(QueryError, match="candidates must be"):
        Candidates(text).ids  # noqa: B018 - reading them is what is refused


@pytest.mark.parametrize("text,ids", [("[]", []), ("[ ]", []), ("[0]", [0]), ("[3, 17,42]", [3, 17, 42]), ("[10,0]", [10, 0])])
def test_well_formed_candidates_are_read(text: str, ids: list[int]) -> None:
    from datasette_imgsearch.search.arguments import Candidates

    assert Candidates(text).ids.tolist() == ids


@pytest.mark.asyncio
async def test_a_filter_that_runs_past_the_sql_time_limit_is_a_readable_400(catalog: Path) -> None:
    conn = sqlite3.connect(catalog)
    with conn:  # 300,000 more rows, so that a scan of the table takes longer than the limit
        conn.execute("""
            with recursive n(i) as (select 1 union all select i + 1 from n where i < 300000)
            insert into images (path, name, folder, size, modified, mtime_ns, hash, embedding)
            select 'more/' || i || '.jpg', i || '.jpg', 'more', 1, '2020', 1, 'h' || i,
                   (select embedding from images limit 1) from n""")
    conn.close()
    ds = Datasette([str(catalog)], settings={"sql_time_limit_ms": 5})
    await ds.invoke_startup()
    response = await ds.client.get("/photos/images/-/imgsearch.json", params={"q": "a red circle", "path__contains": "zzz"})
    assert response.status_code == 400
    assert "longer than this server lets a query run" in response.json()["error"]
    assert "json_group_array" not in response.text


# Files that are not files ------------------------------------------------------------------------------
def test_a_fifo_and_a_link_to_a_device_are_error_rows_and_the_rest_is_catalogued(
    tmp_path: Path, images: Path, toy_model: str
) -> None:
    os.mkfifo(images / "x.jpg")
    (images / "z.jpg").symlink_to("/dev/zero")
    db = tmp_path / "photos.db"
    finished: list[str] = []
    builder = threading.Thread(target=lambda: finished.append(
        build(db, images, BuildOptions(ModelChoice(model=toy_model), batch_size=16)).line()), daemon=True)
    builder.start()
    builder.join(120)
    assert finished, "the build blocked"
    assert finished[0].startswith("62 images: 60 added") and "2 failed" in finished[0]
    conn = sqlite3.connect(db)
    errors = dict(conn.execute("select path, message from imgsearch_errors"))
    assert set(errors) == {"x.jpg", "z.jpg"} and all("not a regular file" in message for message in errors.values())


def test_folders_nested_deeper_than_pythons_recursion_limit_are_catalogued(
    tmp_path: Path, world: Path, toy_model: str
) -> None:
    folder = deepest = tmp_path / "images"
    folder.mkdir()
    levels = []
    for _ in range(1100):
        deepest = deepest / "d"
        deepest.mkdir()
        levels.append(deepest)
    pictures = sorted(world.iterdir())
    shutil.copy(pictures[0], folder / "top.jpg")
    shutil.copy(pictures[1], deepest / "deep.jpg")
    try:
        line = build(tmp_path / "photos.db", folder, BuildOptions(ModelChoice(model=toy_model))).line()
        assert line.startswith("2 images: 2 added")
    finally:  # pytest's own clean-up of tmp_path recurses, and would stop at this depth
        (deepest / "deep.jpg").unlink()
        for level in reversed(levels):
            level.rmdir()


# Failed files are remembered like good ones ------------------------------------------------------------
def test_failed_files_are_examined_again_only_when_they_change(
    tmp_path: Path, images: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasette_imgsearch.images import pixels

    for number in range(20):
        (images / f"empty-{number}.jpg").write_bytes(b"")
    db = tmp_path / "photos.db"
    options = BuildOptions(ModelChoice(model=toy_model), batch_size=16)
    assert "20 failed" in build(db, images, options).line()
    read: list[str] = []
    real = pixels.read_bytes
    monkeypatch.setattr(pixels, "read_bytes", lambda path, *limit: read.append(Path(path).name) or real(path, *limit))
    assert build(db, images, options).line() == "80 images: 0 added, 0 moved, 0 updated, 0 removed, 20 failed, 60 unchanged"
    assert read == []
    (images / "empty-3.jpg").write_bytes(b"still not a picture")
    assert "20 failed" in build(db, images, options).line() and read == ["empty-3.jpg"]
    shutil.copy(sorted(images.glob("*-0000*.jpg"))[0], images / "empty-5.jpg")  # fixed
    line = build(db, images, options).line()
    assert line.startswith("80 images: 1 added") and "19 failed" in line and read[-1] == "empty-5.jpg"
    assert sqlite3.connect(db).execute("select count(*) from imgsearch_errors").fetchone() == (19,)


# An index rewrite is one step for a reader -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "ivfsq8"])
def test_a_reader_during_an_index_rewrite_ends_up_on_the_new_index(
    catalog: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    from datasette_imgsearch.catalog.catalog import Catalog
    from datasette_imgsearch.search.searcher import Searcher
    from datasette_imgsearch.vectors import index

    searcher = Searcher(catalog)
    searcher.search("a red circle", 3)
    real_replace = os.replace
    seen: list[str] = []

    def replace_then_search(source: object, target: object) -> None:  # a query lands right after the swap
        real_replace(source, target)
        seen.append(searcher.store.current().vectors_from)

    monkeypatch.setattr(index.os, "replace", replace_then_search)
    with Catalog(catalog, write=True) as opened:
        index.write_index(opened, kind)
    monkeypatch.undo()
    assert seen  # and whatever it read then, it is on the new file now, not the stored embeddings for ever
    assert searcher.store.current().vectors_from.startswith(f"photos.db.faiss ({'exact' if kind == 'flat' else kind})")
    assert len(searcher.search("a blue square", 3)) == 3


# Private means private ---------------------------------------------------------------------------------
CATALOG_URLS = ["/photos/images.json", "/photos/imgsearch_removed.json", "/photos/imgsearch_meta.json",
                "/photos/imgsearch_errors.json", "/photos/images/-/imgsearch.json?q=a+red+circle",
                "/photos/images/-/imgsearch?q=a+red+circle", "/photos/images/-/imgsearch/thumbnail/1",
                "/photos.json?sql=select+imgsearch('a red circle')"]


@pytest.mark.asyncio
@pytest.mark.parametrize("url", CATALOG_URLS)
async def test_the_private_recipe_hides_every_table_and_page_of_the_catalog(shared_catalog: Path, url: str) -> None:
    ds = make_datasette(shared_catalog, {"databases": {"photos": {"allow": {"id": "alice"}}}})  # the README's recipe
    await ds.invoke_startup()
    anonymous = await ds.client.get(url, follow_redirects=True)
    assert anonymous.status_code in (403, 404), url
    alice = {"ds_actor": ds.sign({"a": {"id": "alice"}}, "actor")}
    assert (await ds.client.get(url, cookies=alice, follow_redirects=True)).status_code == 200, url


@pytest.mark.asyncio
async def test_the_status_page_follows_the_instances_permission_and_shows_no_server_paths(shared_catalog: Path) -> None:
    ds = make_datasette(shared_catalog, {"allow": {"id": "alice"}})
    await ds.invoke_startup()
    for path in ("/-/imgsearch.json", "/-/imgsearch", "/-/versions.json"):
        assert (await ds.client.get(path)).status_code == 403, path
    alice = {"ds_actor": ds.sign({"a": {"id": "alice"}}, "actor")}
    response = await ds.client.get("/-/imgsearch.json", cookies=alice)
    assert response.status_code == 200 and "photos" in response.json()["catalogs"]
    assert str(shared_catalog.parent) not in response.text and "/fixtures/" not in response.text
    search = await ds.client.get("/photos/images/-/imgsearch.json", params={"q": "a red circle"}, cookies=alice)
    assert "/fixtures/" not in search.text and search.json()["terms"][0]["model"] == "toy-clip"
