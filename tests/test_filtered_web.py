"""Filters, facets and pagination beside a semantic query, on the search page and in its JSON."""

from __future__ import annotations

import io
import re
import sqlite3
import urllib.parse
from pathlib import Path

import pytest
import pytest_asyncio
from datasette.app import Datasette
from PIL import Image

from datasette_imgsearch.images.toyworld import label_of
from datasette_imgsearch.search.searcher import Searcher

from .conftest import candidates_of
from .test_plugin import SEARCH, make_datasette, started


@pytest_asyncio.fixture
async def ds(shared_catalog: Path) -> Datasette:
    return await started(make_datasette(shared_catalog), shared_catalog)


async def get_json(ds: Datasette, **params: str) -> dict:
    response = await ds.client.get(SEARCH + ".json", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def path_and_query(url: str) -> tuple[str, dict]:
    parts = urllib.parse.urlsplit(url)
    return parts.path, dict(urllib.parse.parse_qsl(parts.query))


@pytest.mark.asyncio
async def test_a_filter_beside_the_query_ranks_exactly_within_the_rows_that_pass(ds: Datasette, shared_catalog: Path) -> None:
    found = await get_json(ds, q="a red circle", k="10", name__startswith="blue")
    assert found["count"] == 10 and all(label_of(r["name"])[0] == "blue" for r in found["results"])
    assert found["filters"] == 'where name starts with "blue"'
    with sqlite3.connect(shared_catalog) as conn:
        blue = [r[0] for r in conn.execute("select id from images where name like 'blue%'")]
    expected = Searcher(shared_catalog).search("a red circle", 10, None, candidates_of(blue))
    assert [r["id"] for r in found["results"]] == [h.id for h in expected]


@pytest.mark.asyncio
async def test_facets_count_the_results_and_link_to_a_narrower_search(ds: Datasette) -> None:
    found = await get_json(ds, q="something blue", k="12", _facet="name")
    names = found["facets"]["name"]
    assert sum(f["count"] for f in names) == 12 and not any(f["selected"] for f in names)
    assert "format" in found["suggested_facets"] and "name" not in found["suggested_facets"]
    path, query = path_and_query(names[0]["toggle_url"])
    assert path == SEARCH + ".json" and query["name"] == names[0]["value"] and query["q"] == "something blue"
    narrowed = await get_json(ds, **query)
    assert [r["name"] for r in narrowed["results"]] == [names[0]["value"]]
    assert narrowed["facets"]["name"][0]["selected"] is True
    assert "name" not in path_and_query(narrowed["facets"]["name"][0]["toggle_url"])[1]  # the same link lifts it


@pytest.mark.asyncio
async def test_next_continues_the_ranking(ds: Datasette) -> None:
    whole = await get_json(ds, q="a green square", k="10")
    first = await get_json(ds, q="a green square", k="5")
    assert first["next"] == 5
    second = await get_json(ds, **path_and_query(first["next_url"])[1])
    assert [r["id"] for r in first["results"] + second["results"]] == [r["id"] for r in whole["results"]]


@pytest.mark.asyncio
async def test_the_sql_link_carries_the_filter(ds: Datasette) -> None:
    found = await get_json(ds, q="a red circle", k="6", width__gte="100", name__contains="square")
    response = await ds.client.get(found["sql_url"].replace("?", ".json?", 1) + "&_shape=array", follow_redirects=True)
    assert [row["id"] for row in response.json()] == [r["id"] for r in found["results"]]


@pytest.mark.asyncio
@pytest.mark.parametrize("params,message", [
    ({"colour": "red"}, "cannot filter on 'colour'"),
    ({"width__bogus": "1"}, "unknown filter operator"),
    ({"_facet": "embedding"}, "cannot facet by 'embedding'"),
    ({"_next": "abc"}, "_next must be a result offset"),
    ({"_next": "5000"}, "_next must be a result offset below 1000"),
])
async def test_bad_filters_facets_and_offsets_are_400(ds: Datasette, params: dict, message: str) -> None:
    response = await ds.client.get(SEARCH + ".json", params={"q": "red", **params})
    assert response.status_code == 400 and message in response.json()["error"]


@pytest.mark.asyncio
async def test_an_upload_is_ranked_within_the_filter_in_its_url(ds: Datasette, shared_catalog: Path) -> None:
    path = sorted((shared_catalog.parent / "images").glob("red-circle-*"))[0]
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    files = {"image": ("ref.png", buffer.getvalue(), "image/png")}
    response = await ds.client.post(SEARCH + ".json?name__startswith=yellow", files=files, data={"k": "4"})
    assert response.status_code == 200 and all(label_of(r["name"])[0] == "yellow" for r in response.json()["results"])


@pytest.mark.asyncio
async def test_the_page_shows_the_filter_facets_and_the_next_page(ds: Datasette) -> None:
    page = await ds.client.get(SEARCH, params={"q": "a red circle", "k": "12", "name__startswith": "red", "_facet": "name"})
    assert page.status_code == 200
    assert "Ranking only rows where name starts with" in page.text and "clear filters" in page.text
    assert 'class="imgsearch-facets"' in page.text and "Facet the results by" in page.text
    assert 'id="imgsearch-next"' in page.text  # 15 red pictures: a second page of 12 exists
    action = re.search(r'<form[^>]*id="imgsearch-form"[^>]*action="([^"]+)"', page.text).group(1)
    assert "name__startswith=red" in action and "q=" not in action  # the form keeps the filter, not the old query


@pytest.mark.asyncio
async def test_more_like_this_keeps_the_chosen_count(ds: Datasette) -> None:
    found = await get_json(ds, q="a red circle", k="7")
    assert all(path_and_query(r["more_like_this_url"])[1] == {"q": f"row:{r['id']}", "k": "7"} for r in found["results"])


@pytest.mark.asyncio
async def test_the_row_page_shows_the_picture_beside_the_path_and_links_more_like_this(ds: Datasette) -> None:
    page = await ds.client.get("/photos/images/3")
    assert '<img src="/photos/images/-/imgsearch/thumbnail/3"' in page.text
    assert 'href="/photos/images/-/imgsearch?q=row%3A3">more like this</a>' in page.text


@pytest.mark.asyncio
async def test_a_row_query_shows_the_row_it_searches_by(ds: Datasette) -> None:
    page = await ds.client.get(SEARCH, params={"q": "row:7 - 0.5:red"})
    assert 'Searching by <img src="/photos/images/-/imgsearch/thumbnail/7"' in page.text


@pytest.mark.asyncio
async def test_the_sql_link_exports_a_short_thumbnail_link_and_shows_the_picture(ds: Datasette) -> None:
    found = await get_json(ds, q="a red circle", k="3")
    html = await ds.client.get(found["sql_url"], follow_redirects=True)
    assert '<img src="/photos/images/-/imgsearch/thumbnail/' in html.text and "data:image/jpeg" not in html.text
    csv = await ds.client.get(found["sql_url"].replace("?", ".csv?", 1), follow_redirects=True)
    header, first = csv.text.splitlines()[:2]
    first_id = found["results"][0]["id"]
    assert header.endswith("thumbnail_url") and first.endswith(f"/photos/images/-/imgsearch/thumbnail/{first_id}")
