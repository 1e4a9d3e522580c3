"""Browsing a photo catalog in Datasette: errors that are the client's answer 4xx, never 500."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest
from datasette.app import Datasette

from .test_plugin import make_datasette

rich = pytest.importorskip("rich", reason="rich is what turns Datasette's 404s into 500s; our dependencies install it")


@pytest.mark.asyncio
@pytest.mark.parametrize("path,status", [
    ("/photos/images/-/foo", 404), ("/a/b/c/d", 404), ("/photos/images/-/imgsearch/thumbnail/abc", 404),
    ("/no-such-database", 404), ("/no-such-database.json", 404), ("/photos/no_such_table", 404),
    ("/photos/images/-/imgsearch/thumbnail/99999", 404), ("/photos/images/99999", 404),
])
async def test_urls_that_match_nothing_answer_404_with_rich_installed(
    shared_catalog: Path, path: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = make_datasette(shared_catalog)
    await ds.invoke_startup()
    response = await ds.client.get(path)
    assert response.status_code == status, response.text[:200]
    if path.endswith(".json"):
        assert response.json()["ok"] is False
    assert "Traceback" not in capsys.readouterr().err  # no traceback flood for a client's mistake


@pytest.mark.asyncio
async def test_a_forbidden_page_is_a_403_with_rich_installed(shared_catalog: Path) -> None:
    ds = make_datasette(shared_catalog, {"allow": {"id": "alice"}})
    await ds.invoke_startup()
    for path in ("/photos", "/photos/images", "/-/versions.json"):
        assert (await ds.client.get(path)).status_code == 403, path


async def started(ds: Datasette) -> Datasette:
    await ds.invoke_startup()
    return ds


# Paging that is right -----------------------------------------------------------------------------------
SEARCH_JSON = "/photos/images/-/imgsearch.json"


@pytest.mark.asyncio
@pytest.mark.parametrize("k,pages", [(5, [5]), (4, [4, 1]), (2, [2, 2, 1])])
async def test_a_next_link_only_when_more_rows_exist(shared_catalog: Path, k: int, pages: list[int]) -> None:
    ds = await started(make_datasette(shared_catalog))
    params: dict[str, str] = {"q": "a red circle", "k": str(k), "name__startswith": "red-circle"}  # 5 rows pass
    counts = []
    while True:
        data = (await ds.client.get(SEARCH_JSON, params=params)).json()
        counts.append(data["count"])
        page = await ds.client.get("/photos/images/-/imgsearch", params=params)
        assert ("imgsearch-next" in page.text) == (data["next_url"] is not None)
        if data["next_url"] is None:
            break
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(data["next_url"]).query))
    assert counts == pages


@pytest.mark.asyncio
async def test_an_uploads_next_page_is_the_same_picture_posted_again(shared_catalog: Path) -> None:
    ds = await started(make_datasette(shared_catalog))
    picture = sorted((shared_catalog.parent / "images").glob("blue-square-*.jpg"))[0].read_bytes()
    files = {"image": ("ref.jpg", picture, "image/jpeg")}
    first = (await ds.client.post(SEARCH_JSON, files=files, data={"k": "5"})).json()
    assert first["count"] == 5 and first["next_url"] and "q=" not in first["next_url"]
    second = (await ds.client.post(first["next_url"], files=files, data={"k": "5"})).json()
    assert second["ok"] and second["count"] == 5
    assert not {row["id"] for row in first["results"]} & {row["id"] for row in second["results"]}
    everything = (await ds.client.post(SEARCH_JSON, files=files, data={"k": "10"})).json()
    assert [row["id"] for row in everything["results"]] == [row["id"] for row in first["results"] + second["results"]]


@pytest.mark.asyncio
async def test_a_query_and_an_upload_together_are_refused_not_one_silently(shared_catalog: Path) -> None:
    ds = await started(make_datasette(shared_catalog))
    picture = sorted((shared_catalog.parent / "images").glob("*.jpg"))[0].read_bytes()
    response = await ds.client.post(SEARCH_JSON + "?q=red", files={"image": ("ref.jpg", picture, "image/jpeg")})
    assert response.status_code == 400 and "not both" in response.json()["error"]


# Strength on the page ------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_query_with_no_strong_match_shows_no_grid_unless_asked(shared_catalog: Path) -> None:
    ds = await started(make_datasette(shared_catalog))
    page = await ds.client.get("/photos/images/-/imgsearch", params={"q": "xyzzy plugh quux"})
    assert "imgsearch-show-weak" in page.text and 'class="imgsearch-grid"' not in page.text
    data = (await ds.client.get(SEARCH_JSON, params={"q": "xyzzy plugh quux"})).json()
    assert data["count"] == 24 and not any(row["strong"] for row in data["results"])  # the JSON keeps every hit
    weak = await ds.client.get("/photos/images/-/imgsearch", params={"q": "xyzzy plugh quux", "_weak": "1"})
    assert 'class="imgsearch-grid"' in weak.text and weak.text.count('class="thumb"') == 24
    strong = await ds.client.get("/photos/images/-/imgsearch", params={"q": "a red circle"})
    assert "imgsearch-show-weak" not in strong.text and 'class="imgsearch-grid"' in strong.text


# Table and row pages made for photos -----------------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_table_page_links_to_the_search_and_the_row_page_shows_the_picture(shared_catalog: Path) -> None:
    ds = await started(make_datasette(shared_catalog))
    table = (await ds.client.get("/photos/images")).text
    assert '"search": "/photos/images/-/imgsearch"' in table and "Search these images by text or example" in table
    row = (await ds.client.get("/photos/images/3")).text
    assert '"original": "/photos/images/-/imgsearch/original/3"' in row
    assert '"json": "/photos/images/-/imgsearch.json?q=row:3&k=8"' in row
    other = (await ds.client.get("/photos/imgsearch_errors")).text
    assert "IMGSEARCH" not in other  # nothing on the catalog's other tables


@pytest.mark.asyncio
async def test_suggested_facets_have_values_and_the_top_folder_has_a_name(shared_catalog: Path) -> None:
    ds = await started(make_datasette(shared_catalog))
    data = (await ds.client.get(SEARCH_JSON, params={"q": "a red circle", "_facet": "folder"})).json()
    assert "camera_model" not in data["suggested_facets"] and "year" not in data["suggested_facets"]  # no EXIF here
    assert data["facets"]["folder"][0]["label"] == "(top folder)"


# The gallery: the table's pictures with or without a query -------------------------------------------------
PAGE = "/photos/images/-/imgsearch"


def names_on(page: str) -> list[str]:
    return re.findall(r'class="name" href="[^"]+" title="([^"]+)"', page)


@pytest.mark.asyncio
async def test_without_a_query_the_page_is_a_gallery_filtered_sorted_and_paged_by_url(shared_catalog: Path) -> None:
    ds = await started(make_datasette(shared_catalog))
    first = (await ds.client.get(PAGE, params={"_sort_desc": "name", "k": "12"})).text
    names = names_on(first)
    assert len(names) == 12 and names == sorted(names, reverse=True)
    assert "imgsearch-next" in first
    second = (await ds.client.get(PAGE, params={"_sort_desc": "name", "k": "12", "_next": "12"})).text
    assert names_on(second)[0] < names[-1]  # the next page carries on in the same order
    red = names_on((await ds.client.get(PAGE, params={"name__startswith": "red-", "_sort": "name"})).text)
    assert red and all(name.startswith("red-") for name in red) and red == sorted(red)
    faceted = (await ds.client.get(PAGE, params={"_facet": "format"})).text
    assert "imgsearch-facets" in faceted and "JPEG" in faceted


@pytest.mark.asyncio
async def test_strong_matches_can_be_sorted_by_any_column_and_a_plain_ranking_cannot(shared_catalog: Path) -> None:
    ds = await started(make_datasette(shared_catalog))
    sorted_strong = await ds.client.get(PAGE, params={"q": "a red circle", "min_score": "strong", "_sort": "name"})
    names = names_on(sorted_strong.text)
    assert names and names == sorted(names) and all(name.startswith("red-circle") for name in names[:3])
    refused = await ds.client.get(PAGE, params={"q": "a red circle", "_sort": "name"})
    assert refused.status_code == 400 and "strong matches only" in refused.text
    wrong = await ds.client.get(PAGE, params={"_sort": "embedding"})
    assert wrong.status_code == 400 and "cannot sort by" in wrong.text


# Good neighbours ---------------------------------------------------------------------------------------------
MAP_QUERY = """
select id, latitude, longitude,
       json_object('image', 'images/-/imgsearch/thumbnail/' || id, 'alt', name, 'title', name,
                   'description', coalesce(taken, ''), 'link', 'images/' || id) as popup
from images where latitude is not null and longitude is not null
"""


@pytest.mark.asyncio
async def test_the_readmes_map_query_gives_datasette_cluster_map_a_picture_and_a_link_per_marker(catalog: Path) -> None:
    import json
    import sqlite3

    conn = sqlite3.connect(catalog)
    with conn:
        conn.execute("update images set latitude = 51.5 + id / 1000.0, longitude = -0.1 where id <= 5")
    conn.close()
    config = {"databases": {"photos": {"queries": {"map": {"sql": MAP_QUERY}}}}}
    ds = await started(make_datasette(catalog, config))
    rows = (await ds.client.get("/photos/map.json", params={"_shape": "array"}, follow_redirects=True)).json()
    assert len(rows) == 5 and {"id", "latitude", "longitude", "popup"} <= set(rows[0])
    popup = json.loads(rows[0]["popup"])
    assert set(popup) == {"image", "alt", "title", "description", "link"}
    for relative in (popup["image"], popup["link"]):  # relative to the query's page, /photos/map
        response = await ds.client.get("/photos/" + relative)
        assert response.status_code == 200, relative
    assert len(json.dumps(rows)) < 2_000  # a marker carries a link to its picture, never the picture's bytes


@pytest.mark.asyncio
@pytest.mark.parametrize("path", [
    "/photos/images", "/photos/images/3",
    "/photos?sql=select+id,+thumbnail,+embedding+from+images+limit+20", "/photos/images/-/imgsearch?q=a+red+circle",
])
async def test_pages_stay_small_with_datasette_render_images_installed(shared_catalog: Path, path: str) -> None:
    """datasette-render-images turns every image BLOB into a ``data:`` URL; on this catalog's pages the
    plugin's own cells come first, so the bytes never reach the page."""
    pytest.importorskip("datasette_render_images")
    ds = await started(make_datasette(shared_catalog))
    assert "datasette-render-images" in [p["name"] for p in (await ds.client.get("/-/plugins.json")).json()]
    page = await ds.client.get(path, follow_redirects=True)
    assert page.status_code == 200 and not re.search(r"data:image/(jpeg|png|webp|gif)", page.text)
    assert len(page.content) < 250_000  # 60 rows of some 30 columns (210 KB on 1.0); as data: URLs the thumbnails add 140 KB
