"""The Datasette plugin, through ``datasette.client``: SQL functions, the page, JSON, uploads, safety."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from datasette.app import Datasette
from datasette.version import __version__ as datasette_version
from PIL import Image

from datasette_imgsearch.search.registry import searcher_for

from .conftest import run_cli

DATASETTE_1 = not datasette_version.startswith("0.")
SEARCH = "/photos/images/-/imgsearch"


def make_datasette(path: Path, config: dict[str, Any] | None = None) -> Datasette:
    """Permissions and plugin settings live in metadata on 0.65 and in datasette.yaml's config on 1.0."""
    if config is None:
        return Datasette([str(path)])
    return Datasette([str(path)], config=config) if DATASETTE_1 else Datasette([str(path)], metadata=config)


async def started(ds: Datasette, path: Path) -> Datasette:
    await ds.invoke_startup()
    searcher_for(path).wait_until_loaded(120)
    return ds


@pytest_asyncio.fixture
async def ds(shared_catalog: Path) -> Datasette:
    return await started(make_datasette(shared_catalog), shared_catalog)


async def sql(ds: Datasette, query: str, **params: Any) -> Any:
    response = await ds.client.get("/photos.json", params={"sql": query, "_shape": "array", **params}, follow_redirects=True)
    return response


def png_bytes(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


# SQL functions -------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_imgsearch_returns_ranked_ids_and_scores(ds: Datasette) -> None:
    response = await sql(ds, "select imgsearch('a red circle', 5) as hits")
    assert response.status_code == 200
    hits = json.loads(response.json()[0]["hits"])
    assert len(hits) == 5 and set(hits[0]) == {"id", "score", "strength"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


@pytest.mark.asyncio
async def test_the_readme_recipe_returns_rows_in_rank_order(ds: Datasette) -> None:
    recipe = """
        select images.id, images.path, json_extract(hit.value, '$.score') as score
        from json_each(imgsearch(:q, 8)) as hit
        join images on images.id = json_extract(hit.value, '$.id')
        order by hit.key
    """
    rows = (await sql(ds, recipe, q="a red circle")).json()
    api = (await ds.client.get(SEARCH + ".json", params={"q": "a red circle", "k": 8})).json()
    assert [r["id"] for r in rows] == [r["id"] for r in api["results"]]
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in api["results"]], abs=1e-5)


@pytest.mark.asyncio
async def test_imgsearch_score_filters_first_and_ranks_exactly(ds: Datasette) -> None:
    rows = (await sql(ds, """
        select path, imgsearch_score(embedding, 'a circle') as score from images
        where path like 'blue-%' order by score desc limit 20
    """)).json()
    assert len(rows) == 15  # every blue picture, however weak a circle it is
    assert all(r["path"].startswith("blue-") for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(r["path"].startswith("blue-circle") for r in rows[:5])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "query,message",
    [
        ("select imgsearch('')", "imgsearch(): the query is empty"),
        ("select imgsearch('dog', 0)", "imgsearch(): k must be between 1 and 1000, not 0"),
        ("select imgsearch('row:99999')", "imgsearch(): row:99999 is not in the catalog"),
        ("select imgsearch('red', 5, 'high')", "imgsearch(): min_score must be a number"),
    ],
)
async def test_bad_sql_calls_are_clear_sql_errors(ds: Datasette, query: str, message: str) -> None:
    response = await sql(ds, query)
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # sqlite3 reports the traceback too
@pytest.mark.parametrize("query", [
    "select imgsearch_score(path, 'dog') from images",
    "select imgsearch_score(embedding, '') from images",
])
async def test_imgsearch_score_errors_fail_the_query(ds: Datasette, query: str) -> None:
    """imgsearch_score runs once per row through Python's fast path, whose errors carry no message."""
    response = await sql(ds, query)
    assert response.status_code == 400
    assert "user-defined function raised exception" in response.json()["error"]


@pytest.mark.asyncio
@pytest.mark.parametrize("function", ["imgsearch('x')", "imgsearch_connection_token()"])
async def test_functions_exist_only_on_catalog_databases(tmp_path: Path, catalog: Path, function: str) -> None:
    """A catalog served beside other databases adds nothing to their connections."""
    import sqlite3

    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("create table t (x)").connection.close()
    ds = Datasette([str(plain), str(catalog)])
    response = await ds.client.get("/plain.json", params={"sql": f"select {function}"}, follow_redirects=True)
    assert "no such function" in response.json()["error"]


# The page and the JSON API ---------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_search_page_shows_a_form_and_ranked_thumbnails(ds: Datasette) -> None:
    empty = await ds.client.get(SEARCH)
    assert empty.status_code == 200
    assert 'name="q"' in empty.text and 'type="file" name="image"' in empty.text
    page = await ds.client.get(SEARCH, params={"q": "a red circle", "k": "12"})
    assert page.status_code == 200
    assert "12 results" in page.text
    assert page.text.count("/photos/images/-/imgsearch/thumbnail/") == 12
    assert "more like this" in page.text and "View as a SQL query" in page.text


@pytest.mark.asyncio
async def test_the_json_api_returns_rows_without_blobs(ds: Datasette) -> None:
    response = await ds.client.get(SEARCH + ".json", params={"q": "something yellow", "k": 4})
    data = response.json()
    assert response.status_code == 200 and data["ok"] is True and data["count"] == 4
    first = data["results"][0]
    assert {"id", "score", "path", "width", "height", "taken", "row_url", "thumbnail_url"} <= set(first)
    assert "embedding" not in first and "thumbnail" not in first
    assert first["row_url"] == f"/photos/images/{first['id']}"


@pytest.mark.asyncio
async def test_concurrent_json_searches_all_join_one_model_run_then_one_pass(
    ds: Datasette, shared_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searches wait for the model in threads of their own, so as many as arrive together share its next
    run, whatever the number of cores (the event loop's default pool holds CPU count + 4 threads), and
    then the same pass over the vectors."""
    searches = 12
    searcher = searcher_for(shared_catalog)
    embedder = searcher.models.text_embedder(searcher.store.current())
    queries = [f"a red ball {uuid.uuid4().hex[:6]} {n}" for n in range(searches)]  # new: no cached vectors
    passes: list[int] = []
    pass_batcher = searcher.store._exact_batcher
    score = pass_batcher.function
    monkeypatch.setattr(pass_batcher, "function", lambda items: (passes.append(len(items)), score(items))[1])
    with embedder._lock:  # the model is busy: the first search takes the next turn, the others queue behind it
        requests = asyncio.ensure_future(asyncio.gather(*(ds.client.get(SEARCH + ".json", params={"q": q}) for q in queries)))
        deadline = time.monotonic() + 20
        while len(embedder._text_batcher.queue) < searches - 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        queued = len(embedder._text_batcher.queue)
    responses = await requests
    assert queued == searches - 1
    # the eleven that queued share one pass; the first, encoded alone, joins them when the scheduler lets
    # it reach the pass after them, else it passes on its own: every search passes once either way
    assert sum(passes) == searches and max(passes) >= searches - 1
    assert [response.json()["query"] for response in responses] == queries


@pytest.mark.asyncio
async def test_the_sql_link_shows_the_same_ranking(ds: Datasette) -> None:
    data = (await ds.client.get(SEARCH + ".json", params={"q": "a green square", "k": 6})).json()
    link = data["sql_url"]
    assert link.startswith("/photos?sql=")
    as_sql = await ds.client.get(link.replace("/photos?", "/photos.json?") + "&_shape=array", follow_redirects=True)
    assert [row["id"] for row in as_sql.json()] == [r["id"] for r in data["results"]]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "params,status,message",
    [
        ({}, 400, "add ?q=... to the URL"),
        ({"q": "   "}, 400, "add ?q=... to the URL"),
        ({"q": "dog", "k": "lots"}, 400, "k must be a whole number"),
        ({"q": "dog", "k": "5000"}, 400, "k must be between 1 and 1000"),
        ({"q": "dog", "min_score": "x"}, 400, "min_score must be a number"),
        ({"q": "dog +"}, 400, "has no term after it"),
    ],
)
async def test_bad_json_requests_get_a_message(ds: Datasette, params: dict, status: int, message: str) -> None:
    response = await ds.client.get(SEARCH + ".json", params=params)
    assert response.status_code == status
    assert response.json()["ok"] is False and message in response.json()["error"]


@pytest.mark.asyncio
async def test_the_page_shows_errors_in_place(ds: Datasette) -> None:
    page = await ds.client.get(SEARCH, params={"q": "row:nope"})
    assert page.status_code == 400 and "row: takes a row id" in page.text and 'name="q"' in page.text


@pytest.mark.asyncio
async def test_only_the_catalog_table_has_a_search_page(ds: Datasette) -> None:
    assert (await ds.client.get("/photos/imgsearch_errors/-/imgsearch")).status_code == 404
    assert (await ds.client.get("/nope/images/-/imgsearch.json?q=x")).status_code == 404


# Uploads -----------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_an_uploaded_image_finds_itself_first(ds: Datasette, shared_catalog: Path) -> None:
    name = sorted(p.name for p in (shared_catalog.parent / "images").iterdir())[0]
    data = (shared_catalog.parent / "images" / name).read_bytes()
    response = await ds.client.post(SEARCH + ".json", files={"image": (name, data, "image/jpeg")}, data={"k": "3"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["path"] == name and results[0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.asyncio
async def test_an_upload_on_the_page_shows_results(ds: Datasette, shared_catalog: Path) -> None:
    path = sorted((shared_catalog.parent / "images").iterdir())[0]
    page = await ds.client.post(SEARCH, files={"image": ("ref.png", png_bytes(path), "image/png")}, data={"k": "12"})
    assert page.status_code == 200
    assert "for the uploaded image" in page.text and page.text.count("/-/imgsearch/thumbnail/") == 12


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "files,status,message",
    [
        ({"image": ("notes.jpg", b"this is not a picture", "image/jpeg")}, 400, "not a recognised image format"),
        ({"image": ("empty.jpg", b"", "image/jpeg")}, 400, "choose an image to upload"),
        ({"other": ("x.jpg", b"abc", "image/jpeg")}, 400, "choose an image to upload"),
        ({"image": ("half.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x02", "image/png")},
         400, "the uploaded file cannot be used"),
    ],
)
async def test_bad_uploads_are_refused_with_a_message(ds: Datasette, files: dict, status: int, message: str) -> None:
    response = await ds.client.post(SEARCH + ".json", files=files)
    assert response.status_code == status
    assert message in response.json()["error"]


@pytest.mark.asyncio
async def test_a_form_that_is_not_multipart_is_refused(ds: Datasette) -> None:
    response = await ds.client.post(SEARCH + ".json", content=b'{"q": "x"}', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]


@pytest.mark.asyncio
async def test_uploads_over_the_size_cap_get_413(shared_catalog: Path) -> None:
    config = {"plugins": {"datasette-imgsearch": {"max_upload_mb": 0.01}}}
    ds = await started(make_datasette(shared_catalog, config), shared_catalog)
    big = Image.effect_noise((200, 200), 100).convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 10_000
    response = await ds.client.post(SEARCH + ".json", files={"image": ("big.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413
    assert "larger than the 0.01 MB limit" in response.json()["error"]


@pytest.mark.asyncio
async def test_the_megapixel_cap_applies_to_uploads(shared_catalog: Path) -> None:
    config = {"plugins": {"datasette-imgsearch": {"max_megapixels": 0.5}}}
    ds = await started(make_datasette(shared_catalog, config), shared_catalog)
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 1000)).save(buffer, format="PNG")
    response = await ds.client.post(SEARCH + ".json", files={"image": ("huge.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 400 and "above the 0.5 megapixel cap" in response.json()["error"]


# Permissions and CSRF -----------------------------------------------------------------------------
RESTRICTED = {"databases": {"photos": {"tables": {"images": {"allow": {"id": "alice"}}}}}}


@pytest.mark.asyncio
@pytest.mark.parametrize("path", [SEARCH + "?q=red", SEARCH + ".json?q=red", SEARCH + "/thumbnail/1", SEARCH + "/original/1"])
async def test_a_restricted_table_is_forbidden_to_others(shared_catalog: Path, path: str) -> None:
    ds = await started(make_datasette(shared_catalog, RESTRICTED), shared_catalog)
    assert (await ds.client.get(path)).status_code == 403
    bob = {"ds_actor": ds.sign({"a": {"id": "bob"}}, "actor")}
    assert (await ds.client.get(path, cookies=bob)).status_code == 403
    alice = {"ds_actor": ds.sign({"a": {"id": "alice"}}, "actor")}
    assert (await ds.client.get(path, cookies=alice)).status_code == 200


@pytest.mark.asyncio
async def test_uploads_from_a_browser_need_csrf_protection_to_pass(ds: Datasette, shared_catalog: Path) -> None:
    data = sorted((shared_catalog.parent / "images").iterdir())[0].read_bytes()
    files = {"image": ("ref.jpg", data, "image/jpeg")}
    if DATASETTE_1:  # 1.0a27+: Sec-Fetch-Site / Origin checks
        refused = await ds.client.post(SEARCH + ".json", files=files, headers={"sec-fetch-site": "cross-site"})
        allowed = await ds.client.post(SEARCH + ".json", files=files, headers={"sec-fetch-site": "same-origin"})
    else:  # 0.65: the token as the page's script sends it (a header) or as its plain form does (a field)
        token = (await ds.client.get(SEARCH)).cookies["ds_csrftoken"]
        cookies = {"ds_csrftoken": token}
        refused = await ds.client.post(SEARCH + ".json", files=files, cookies=cookies)
        allowed = await ds.client.post(SEARCH + ".json", files=files, cookies=cookies, headers={"x-csrftoken": token})
        as_field = await ds.client.post(SEARCH, files=files, data={"csrftoken": token}, cookies=cookies)
        assert as_field.status_code == 200 and "for the uploaded image" in as_field.text
        forged = await ds.client.post(SEARCH, files=files, data={"csrftoken": "forged"}, cookies=cookies)
        assert forged.status_code == 403 and "CSRF token" in forged.text
    assert refused.status_code == 403
    assert allowed.status_code == 200


# Images, cells and menus ----------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_thumbnails_and_originals_are_served_safely(ds: Datasette, shared_catalog: Path) -> None:
    thumbnail = await ds.client.get(SEARCH + "/thumbnail/1")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.headers["x-content-type-options"] == "nosniff"
    assert Image.open(io.BytesIO(thumbnail.content)).format == "JPEG"
    again = await ds.client.get(SEARCH + "/thumbnail/1", headers={"if-none-match": thumbnail.headers["etag"]})
    assert again.status_code == 304
    original = await ds.client.get(SEARCH + "/original/1")
    assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
    path = (await sql(ds, "select path from images where id = 1")).json()[0]["path"]
    assert original.content == (shared_catalog.parent / "images" / path).read_bytes()
    assert (await ds.client.get(SEARCH + "/thumbnail/999999")).status_code == 404


@pytest.mark.asyncio
@pytest.mark.parametrize("hostile", ["'../../../../etc/passwd'", "'/etc/passwd'", "'a' || char(0) || 'b.jpg'"])
async def test_originals_outside_the_folder_are_never_served(catalog: Path, images: Path, hostile: str) -> None:
    import sqlite3

    conn = sqlite3.connect(catalog)
    with conn:
        conn.execute(f"update images set path = {hostile} where id = 1")
    conn.close()
    ds = Datasette([str(catalog)])
    response = await ds.client.get(SEARCH + "/original/1")
    assert response.status_code == 404 and "no longer inside the catalogued folder" in response.text


@pytest.mark.asyncio
async def test_a_database_that_becomes_a_catalog_while_served_is_found_at_the_next_request(
    tmp_path: Path, images: Path, toy_model: str
) -> None:
    """What a request learns of a catalog's columns is kept only while its files stay as they were."""
    import sqlite3

    db = tmp_path / "photos.db"
    sqlite3.connect(db).close()
    ds = Datasette([str(db)])
    before = await ds.client.get(SEARCH + "/thumbnail/1")
    assert before.status_code == 404 and "holds no imgsearch catalog" in before.text
    assert (await ds.client.get(SEARCH + "/thumbnail/1")).status_code == 404  # answered from what it learnt
    run_cli("build", db, images, "--model", toy_model, "--silent")
    assert (await ds.client.get(SEARCH + "/thumbnail/1")).status_code == 200


@pytest.mark.asyncio
async def test_thumbnails_are_made_on_the_fly_when_the_catalog_has_none(tmp_path: Path, images: Path, toy_model: str) -> None:
    db = tmp_path / "photos.db"
    run_cli("build", db, images, "--model", toy_model, "--no-thumbnails", "--silent")
    ds = Datasette([str(db)])
    response = await ds.client.get(SEARCH + "/thumbnail/1")
    assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size == (128, 128)


@pytest.mark.asyncio
async def test_table_and_row_pages_show_thumbnails_and_link_originals(ds: Datasette) -> None:
    table = await ds.client.get("/photos/images")
    assert '<img src="/photos/images/-/imgsearch/thumbnail/1"' in table.text
    assert 'href="/photos/images/-/imgsearch/original/1"' in table.text
    assert SEARCH in table.text  # the table action menu links to the search page
    assert "32-d vector" in table.text and "Binary:" not in table.text  # BLOBs are labels, never links to bytes
    assert "data:image/jpeg" not in table.text
    query = await ds.client.get("/photos", params={"sql": "select thumbnail, embedding from images limit 1"},
                                follow_redirects=True)
    assert "data:image/jpeg" not in query.text and "JPEG, " in query.text and "32-d vector" in query.text


# Staying in step with the catalog -----------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_rebuilt_catalog_is_picked_up_without_a_restart(catalog: Path, images: Path, toy_model: str) -> None:
    ds = await started(make_datasette(catalog), catalog)
    before = json.loads((await sql(ds, "select imgsearch('a red circle', 100) as h")).json()[0]["h"])
    assert len(before) == 60
    shutil.copy(sorted(images.iterdir())[0], images / "copy.jpg")
    for path in sorted(images.iterdir())[1:4]:
        path.unlink()
    run_cli("build", catalog, images, "--silent")
    after = json.loads((await sql(ds, "select imgsearch('a red circle', 100) as h")).json()[0]["h"])
    assert len(after) == 58
    run_cli("index", catalog, "--type", "hnsw")
    assert len(json.loads((await sql(ds, "select imgsearch('a red circle', 100) as h")).json()[0]["h"])) == 58


# Installation and status ------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_plugin_is_listed_as_installed(ds: Datasette) -> None:
    plugins = (await ds.client.get("/-/plugins.json")).json()
    assert "datasette-imgsearch" in {plugin["name"] for plugin in plugins}


@pytest.mark.asyncio
async def test_the_status_endpoint_says_what_is_installed_and_loaded(ds: Datasette) -> None:
    status = (await ds.client.get("/-/imgsearch.json")).json()
    assert status["versions"]["datasette-imgsearch"] and status["versions"]["torch"]
    photos = status["catalogs"]["photos"]
    assert photos["images"] == 60 and photos["dimension"] == 32 and photos["index_fresh"] is True
    assert photos["schema_version"] == photos["schema_version_written"] and "folder" not in photos
    searcher = photos["searcher"]
    assert searcher["loaded"] is True and searcher["load_seconds"] >= 0 and searcher["rows"] == 60
    assert "photos.db.faiss" in searcher["vectors"]


@pytest.mark.asyncio
async def test_the_status_page_is_for_people(ds: Datasette) -> None:
    page = await ds.client.get("/-/imgsearch")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = re.sub(r"<[^>]+>", " ", page.text)
    assert re.search(r"images\s+60", text) and "toy-clip (32-d)" in text and "fresh: flat index of 60 vectors" in text
    assert 'href="/photos/images/-/imgsearch"' in page.text and 'href="/-/imgsearch.json"' in page.text
    assert re.search(r"files that failed\s+none", text)


@pytest.mark.asyncio
async def test_the_status_endpoint_shows_only_catalogs_the_actor_may_view(shared_catalog: Path) -> None:
    ds = make_datasette(shared_catalog, RESTRICTED)
    assert (await ds.client.get("/-/imgsearch.json")).json()["catalogs"] == {}
    alice = {"ds_actor": ds.sign({"a": {"id": "alice"}}, "actor")}
    assert "photos" in (await ds.client.get("/-/imgsearch.json", cookies=alice)).json()["catalogs"]
