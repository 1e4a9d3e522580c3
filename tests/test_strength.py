"""Match strength: each hit of a text query measured against what random text finds in the same catalog."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from datasette.app import Datasette

from datasette_imgsearch.errors import QueryError
from datasette_imgsearch.images.toyworld import COLOURS, SHAPES, draw_image
from datasette_imgsearch.search.arguments import check_min_score
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.search.strength import STRONG, Calibration, random_texts

from .conftest import run_cli
from .test_plugin import make_datasette, sql, started

CLASS_QUERIES = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
NONSENSE = ["xyzzy plugh", "qwv kjh", "lorem ipsum dolor", "!!!", "asdf", "zzzz"]


@pytest.mark.parametrize(
    "score, strength", [(0.05, 0.0), (0.1, 0.0), (0.15, 0.25), (0.3, 0.5), (0.35, 0.75), (0.5, 1.0)],
)
def test_strength_is_the_share_of_random_texts_whose_best_match_scores_lower(score: float, strength: float) -> None:
    assert Calibration(np.array([0.1, 0.2, 0.3, 0.4])).strength(score) == strength


def test_the_strong_score_is_the_lowest_score_that_is_strong() -> None:
    calibration = Calibration(np.sort(np.random.default_rng(0).uniform(0, 0.3, 200)))
    cut = calibration.strong_score
    assert calibration.strength(cut) >= STRONG
    assert calibration.strength(float(np.nextafter(cut, -1))) < STRONG


@pytest.mark.parametrize("given, wanted", [("strong", "strong"), (" Strong ", "strong"), ("0.2", 0.2), ("", None)])
def test_min_score_takes_a_cosine_or_strong(given: str, wanted: object) -> None:
    assert check_min_score(given) == wanted


@pytest.fixture(scope="module")
def searcher(shared_catalog: Path) -> Searcher:
    return Searcher(shared_catalog)


@pytest.mark.parametrize("query", CLASS_QUERIES + ["something red", "a triangle", "红"])
def test_every_real_description_finds_strong_matches(searcher: Searcher, query: str) -> None:
    hits = searcher.search(query, 5)
    if query == "红":  # no multilingual model here: CLIP's text tower reads it as noise
        assert hits[0].strength < STRONG
        return
    assert all(hit.strength >= STRONG for hit in hits), hits


@pytest.mark.parametrize("query", NONSENSE)
def test_a_nonsense_query_looks_like_one(searcher: Searcher, query: str) -> None:
    assert searcher.search(query, 1)[0].strength < STRONG
    assert searcher.search(query, 5, "strong") == []


def test_strong_means_the_same_for_fresh_random_text_as_the_cut_off_promises(searcher: Searcher) -> None:
    fresh = random_texts(300, seed=1)  # not the strings the catalog was calibrated with
    strong = sum(searcher.search(text, 1)[0].strength >= STRONG for text in fresh)
    assert strong / len(fresh) <= 0.03  # 1 in 100 expected; the calibration itself comes from 200 samples


def test_strength_agrees_with_the_calibration_and_only_strong_hits_pass_the_cut_off(searcher: Searcher) -> None:
    calibration = searcher.calibration(searcher.store.current())
    hits = searcher.search("something yellow", 60)
    assert [hit.strength for hit in hits] == [float(np.mean(calibration.best < hit.score)) for hit in hits]
    strong = searcher.search("something yellow", 60, "strong")
    assert strong == [hit for hit in hits if hit.strength >= STRONG] and 0 < len(strong) < len(hits)


def test_row_terms_and_pictures_get_no_strength_and_refuse_the_strong_cut_off(searcher: Searcher, world: Path) -> None:
    assert searcher.search("row:1", 3)[0].strength is None
    with pytest.raises(QueryError, match="text queries only, not for row: terms"):
        searcher.search("row:1 + red", 3, "strong")
    picture = next(world.iterdir()).read_bytes()
    assert searcher.image_ranking(picture)(3)[0].strength is None
    with pytest.raises(QueryError, match="text queries only, not for pictures"):
        searcher.image_ranking(picture, "strong")


def test_the_command_line_marks_strong_hits(shared_catalog: Path) -> None:
    lines = run_cli("search", shared_catalog, "a blue square", "-k", "3").splitlines()
    assert all(re.match(r"^ +\d  0\.\d{4}  100%\*  blue-square-", line) for line in lines[:3]), lines
    assert run_cli("search", shared_catalog, "xyzzy plugh", "--min-score", "strong", "--json").strip() == "[]"
    hits = json.loads(run_cli("search", shared_catalog, "a blue square", "-k", "2", "--json"))
    assert [set(hit) for hit in hits] == [{"id", "score", "strength", "path", "near_copies"}] * 2


@pytest_asyncio.fixture
async def ds(shared_catalog: Path) -> Datasette:
    return await started(make_datasette(shared_catalog), shared_catalog)


@pytest.mark.asyncio
@pytest.mark.parametrize("query, count", [("a red circle", 5), ("xyzzy plugh", 0)])
async def test_sql_takes_strong_as_the_cut_off(ds: Datasette, query: str, count: int) -> None:
    response = await sql(ds, "select imgsearch(:q, 5, 'strong') as hits", q=query)
    hits = json.loads(response.json()[0]["hits"])
    assert len(hits) == count and all(hit["strength"] >= STRONG for hit in hits)


@pytest.mark.asyncio
async def test_the_json_gives_strength_and_the_strong_score(ds: Datasette) -> None:
    data = (await ds.client.get("/photos/images/-/imgsearch.json", params={"q": "a green circle", "k": 8})).json()
    assert all(r["strong"] is True and r["strength"] == 1.0 for r in data["results"][:5])
    assert all(r["strong"] == (r["score"] >= data["strong_score"]) for r in data["results"])
    data = (await ds.client.get("/photos/images/-/imgsearch.json", params={"q": "row:2", "k": 3})).json()
    assert data["strong_score"] is None and {r["strength"] for r in data["results"]} == {None}


@pytest.mark.asyncio
async def test_the_page_marks_strong_hits_and_says_when_there_are_none(ds: Datasette) -> None:
    page = (await ds.client.get("/photos/images/-/imgsearch", params={"q": "a green circle", "k": 12})).text
    assert page.count('class="strength strong"') >= 5 and 'id="imgsearch-weak"' not in page
    page = (await ds.client.get("/photos/images/-/imgsearch", params={"q": "xyzzy plugh", "k": 12})).text
    assert 'class="strength strong"' not in page and "No strong matches" in page
    page = (await ds.client.get("/photos/images/-/imgsearch", params={"q": "xyzzy plugh", "min_score": "strong"})).text
    assert "0 results" in page and re.search(r'name="min_score" value="strong" checked', page)


@pytest.mark.asyncio
async def test_an_upload_with_the_strong_cut_off_gets_a_400(ds: Datasette) -> None:
    import random

    buffer = io.BytesIO()
    draw_image("red", "circle", random.Random(1)).save(buffer, format="PNG")
    response = await ds.client.post("/photos/images/-/imgsearch.json", data={"min_score": "strong"},
                                    files={"image": ("red.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 400 and "text queries only" in response.json()["error"]


def test_the_random_texts_are_encoded_once_per_model_and_kept_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_model: str
) -> None:
    from datasette_imgsearch.models.cache import load_embedder
    from datasette_imgsearch.search.strength import random_text_vectors

    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))
    embedder = load_embedder(toy_model, "cpu")
    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return embedder.encode_texts(texts)

    first = random_text_vectors(embedder.identity, encode, embedder.dimension)
    again = random_text_vectors(embedder.identity, encode, embedder.dimension)
    assert calls == [200] and np.array_equal(first, again)
    random_text_vectors(("another model",), encode, embedder.dimension)
    assert calls == [200, 200]
    for cached in (tmp_path / "cache").glob("*.npy"):
        cached.write_bytes(b"not a numpy file")  # a damaged cache file is encoded again
    assert np.array_equal(random_text_vectors(embedder.identity, encode, embedder.dimension), first) and calls == [200, 200, 200]
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("a cache folder that cannot be made")
    assert np.array_equal(random_text_vectors(embedder.identity, encode, embedder.dimension), first)


def test_a_model_folder_changed_in_place_is_another_model(tmp_path: Path, toy_model: str) -> None:
    from datasette_imgsearch.models.embedder import Embedder

    folder = tmp_path / "model"
    shutil.copytree(toy_model, folder)
    before = Embedder(str(folder), "cpu").identity
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")
    assert Embedder(str(folder), "cpu").identity != before
