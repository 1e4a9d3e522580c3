"""Queries in any language: each term goes to CLIP's text tower or to the catalog's multilingual model.

The toy multilingual model (``tests/fixtures/toy-multilingual``, made by
``scripts/train_toy_multilingual.py``) was distilled into the toy CLIP's text space from Chinese and
Russian captions; the Chinese phrasings below were held out of its training.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import pytest_asyncio
from datasette.app import Datasette

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.errors import CatalogError, ModelError, QueryError
from datasette_imgsearch.images.toyworld import COLOURS, SHAPES, label_of
from datasette_imgsearch.models import cache, embedder
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.models.languages import english_like, multilingual_model, reader_of
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.settings import Settings

from .conftest import run_cli
from .test_plugin import make_datasette, started
from .test_plugin import sql as run_sql

CHINESE_COLOURS = {"red": ("红色", "红"), "green": ("绿色", "绿"), "blue": ("蓝色", "蓝"), "yellow": ("黄色", "黄")}
CHINESE_SHAPES = {"circle": ("圆形", "圆"), "square": ("正方形", "方块"), "triangle": ("三角形", "三角")}
HELD_OUT = ("{C}的{s}", "一个{c}{s}", "一张{C}的{s}的照片")  # never seen in training
CLASSES = [(colour, shape) for colour in COLOURS for shape in SHAPES]


def chinese(template: str, colour: str, shape: str) -> str:
    (full_c, short_c), (full_s, short_s) = CHINESE_COLOURS[colour], CHINESE_SHAPES[shape]
    return template.format(C=full_c, c=short_c, S=full_s, s=short_s)


def precision_at_5(paths: list[str], colour: str, shape: str) -> float:
    return sum(label_of(path) == (colour, shape) for path in paths[:5]) / 5


@pytest.fixture(scope="module")
def ml_catalog(tmp_path_factory: pytest.TempPathFactory, world: Path, toy_model: str, toy_multilingual: str) -> Path:
    """The toy world built with the toy multilingual model recorded beside the toy CLIP."""
    folder = tmp_path_factory.mktemp("multilingual")
    shutil.copytree(world, folder / "images")
    path = folder / "photos.db"
    build(path, folder / "images", BuildOptions(ModelChoice(model=toy_model, multilingual_model=toy_multilingual), batch_size=16))
    return path


def paths_of(catalog: Path, hits: list) -> list[str]:
    with Catalog(catalog) as opened:
        found = opened.paths([hit.id for hit in hits])
    return [found[hit.id] for hit in hits]


# The routing rule --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, english",
    [("a red circle", True), ("t-shirt, 2:1 & co.", True), ("un chien", True), ("红色的圆", False),
     ("синий квадрат", False), ("café", False), ("Straße", False), ("a 红 circle", False)],
)
def test_a_term_is_english_like_when_it_is_plain_ascii(text: str, english: bool) -> None:
    assert english_like(text) is english


@pytest.mark.parametrize(
    "text, route, multilingual, reader",
    [("a dog", "auto", "m", "clip"), ("一只狗", "auto", "m", "multilingual"), ("一只狗", "auto", None, "clip"),
     ("一只狗", "clip", "m", "clip"), ("a dog", "multilingual", "m", "multilingual")],
)
def test_each_term_is_routed_by_its_script_unless_the_route_says_otherwise(
    text: str, route: str, multilingual: str | None, reader: str
) -> None:
    assert reader_of(text, route, multilingual) == reader


def test_the_multilingual_route_without_a_multilingual_model_says_how_to_set_one() -> None:
    with pytest.raises(QueryError, match="--multilingual-model"):
        reader_of("a dog", "multilingual", None)


@pytest.mark.parametrize(
    "image_model, recorded, override, expected",
    [("clip-ViT-B-32", None, None, "clip-ViT-B-32-multilingual-v1"),  # the default for the default model
     ("clip-ViT-L-14", None, None, None),  # no default for other models
     ("/models/my-clip", "/models/my-student", None, "/models/my-student"),
     ("clip-ViT-B-32", "none", None, None),  # switched off at build time
     ("clip-ViT-B-32", "none", "/models/student", "/models/student"),  # the server's setting wins
     ("clip-ViT-B-32", None, "none", None)],
)
def test_which_multilingual_model_a_catalog_has(
    image_model: str, recorded: str | None, override: str | None, expected: str | None
) -> None:
    assert multilingual_model(image_model, recorded, override) == expected


def test_an_unknown_route_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="route setting must be one of auto, clip, multilingual"):
        Settings(ModelChoice(route="english"))


# Held-out Chinese, through every door ----------------------------------------------------------------
@pytest.mark.parametrize("template", HELD_OUT)
def test_held_out_chinese_captions_find_their_class(ml_catalog: Path, template: str) -> None:
    searcher = Searcher(ml_catalog)
    for colour, shape in CLASSES:
        query = chinese(template, colour, shape)
        paths = paths_of(ml_catalog, searcher.search(query, 5))
        assert precision_at_5(paths, colour, shape) >= 0.9, (query, paths)


@pytest.mark.parametrize("colour, shape", CLASSES)
def test_the_command_line_answers_chinese(ml_catalog: Path, colour: str, shape: str) -> None:
    query = chinese("{C}的{s}", colour, shape)
    hits = json.loads(run_cli("search", ml_catalog, query, "-k", "5", "--json"))
    assert precision_at_5([hit["path"] for hit in hits], colour, shape) >= 0.9


def test_the_command_line_says_which_terms_the_multilingual_model_read(ml_catalog: Path, toy_multilingual: str) -> None:
    output = run_cli("search", ml_catalog, "红色的圆 - 红色 + blue", "-k", "3")
    assert f"read by {toy_multilingual}: 红色的圆, 红色" in output


@pytest.mark.parametrize(
    "query, wanted",
    [("红色的圆 - 红色 + blue", ("blue", "circle")),  # Chinese minus Chinese plus English
     ("a yellow square - yellow + 绿色", ("green", "square")),
     ("синий квадрат - квадрат + 三角形", ("blue", "triangle"))],  # Russian and Chinese
)
def test_mixed_language_arithmetic_brings_the_right_class(ml_catalog: Path, query: str, wanted: tuple[str, str]) -> None:
    paths = paths_of(ml_catalog, Searcher(ml_catalog).search(query, 5))
    assert precision_at_5(paths, *wanted) >= 0.9, paths


@pytest_asyncio.fixture
async def ml_ds(ml_catalog: Path) -> Datasette:
    return await started(make_datasette(ml_catalog), ml_catalog)


@pytest.mark.asyncio
@pytest.mark.parametrize("colour, shape", CLASSES)
async def test_sql_json_and_page_answer_chinese(ml_ds: Datasette, colour: str, shape: str) -> None:
    query = chinese("一个{c}{s}", colour, shape)
    sql = ("select images.path from json_each(imgsearch(:q, 5)) as hit "
           "join images on images.id = json_extract(hit.value, '$.id') order by hit.key")
    response = await run_sql(ml_ds, sql, q=query)
    assert precision_at_5([row["path"] for row in response.json()], colour, shape) >= 0.9
    response = await ml_ds.client.get("/photos/images/-/imgsearch.json", params={"q": query, "k": 5})
    assert precision_at_5([row["path"] for row in response.json()["results"]], colour, shape) >= 0.9
    page = (await ml_ds.client.get("/photos/images/-/imgsearch", params={"q": query, "k": 12})).text
    names = re.findall(r'title="([^"]+\.jpg)"', page)
    assert precision_at_5(names, colour, shape) >= 0.9, names


@pytest.mark.asyncio
async def test_the_page_and_json_show_which_model_read_each_term(
    ml_ds: Datasette, toy_model: str, toy_multilingual: str
) -> None:
    query = "红色的圆 - 2:红色 + blue + row:1"
    data = (await ml_ds.client.get("/photos/images/-/imgsearch.json", params={"q": query})).json()
    assert [(t["text"], t["row"], t["weight"], t["reader"], t["model"]) for t in data["terms"]] == [
        ("红色的圆", None, 1.0, "multilingual", "toy-multilingual"),  # a folder by its name, never the server's path
        ("红色", None, -2.0, "multilingual", "toy-multilingual"),
        ("blue", None, 1.0, "clip", "toy-clip"),
        (None, 1, 1.0, "row", None),
    ]
    page = (await ml_ds.client.get("/photos/images/-/imgsearch", params={"q": query})).text
    terms = re.sub(r"\s+", " ", re.search(r'id="imgsearch-terms">(.*?)</p>', page, re.S).group(1))
    assert re.sub(r"<[^>]+>", "", terms).strip() == (
        "Read by: 红色的圆 → toy-multilingual − 2:红色 → toy-multilingual + blue → toy-clip + row:1 (its stored picture)"
    )


# Loading, configuration and failures -----------------------------------------------------------------
def test_the_multilingual_model_loads_at_the_first_term_that_needs_it(
    tmp_path: Path, world: Path, toy_model: str, toy_multilingual: str
) -> None:
    student = tmp_path / "student"  # a copy of its own, so no other test has loaded it yet
    shutil.copytree(toy_multilingual, student)
    db = tmp_path / "photos.db"
    build(db, world, BuildOptions(ModelChoice(model=toy_model, multilingual_model=str(student)), batch_size=16))
    cache.MODELS.clear()  # the build checked it; a server starts with nothing loaded
    searcher = Searcher(db)
    searcher.load()
    searcher.search("a red circle", 3)
    assert not cache.is_loaded(str(student))
    assert searcher.state()["multilingual_loaded"] is False
    searcher.search("红色的圆", 3)
    assert cache.is_loaded(str(student))
    assert searcher.state()["multilingual_loaded"] is True


def test_offline_without_the_default_multilingual_model_a_chinese_term_says_what_to_fetch(
    catalog: Path, toy_model: str
) -> None:
    with Catalog(catalog, write=True) as opened:  # a catalog of clip-ViT-B-32, whose default student is not here
        opened.set_meta(model="clip-ViT-B-32")
    searcher = Searcher(catalog, ModelChoice(model=toy_model))
    assert len(searcher.search("a red circle", 3)) == 3  # English never needs it
    with pytest.raises(ModelError) as raised:
        searcher.search("红色的圆", 3)
    message = str(raised.value)
    assert "'红色的圆' is not English-like" in message
    assert "datasette-imgsearch fetch-model clip-ViT-B-32-multilingual-v1" in message
    assert "--multilingual-model PATH" in message
    output = run_cli("search", catalog, "红色的圆", "--model", toy_model, expect=1)
    assert "fetch-model clip-ViT-B-32-multilingual-v1" in output
    output = run_cli("search", catalog, "红色的圆", "--model", toy_model, "--route", "clip", "-k", "2", "--json")
    assert len(json.loads(output)) == 2  # CLIP's text tower reads it, badly but without a download


def test_a_hub_model_that_failed_is_not_tried_again_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    tries = []
    real_load = embedder.load_sentence_transformer

    def counting_load(*arguments: object) -> object:
        tries.append(arguments)
        return real_load(*arguments)

    monkeypatch.setattr(embedder, "load_sentence_transformer", counting_load)
    models = cache.ModelCache()
    for _ in range(3):
        with pytest.raises(ModelError, match="not in the local cache"):
            models.load("no-such-multilingual-model-xyz", "cpu")
    assert len(tries) == 1
    models.failure_memory_seconds = 0.0
    with pytest.raises(ModelError):
        models.load("no-such-multilingual-model-xyz", "cpu")
    assert len(tries) == 2


def test_a_multilingual_model_of_another_dimension_is_refused_at_build_and_at_search(
    tmp_path: Path, world: Path, toy_model: str, other_dimension_model: Path, shared_catalog: Path
) -> None:
    with pytest.raises(CatalogError, match="gives 16-dimensional vectors, but .* gives 32-dimensional ones"):
        choice = ModelChoice(model=toy_model, multilingual_model=str(other_dimension_model))
        build(tmp_path / "photos.db", world, BuildOptions(choice))
    assert not (tmp_path / "photos.db").exists()
    searcher = Searcher(shared_catalog, ModelChoice(multilingual_model=str(other_dimension_model)))
    with pytest.raises(ModelError, match="16-dimensional"):
        searcher.search("红色的圆", 3)


def test_a_multilingual_model_that_is_not_there_is_refused_before_the_build_starts(
    tmp_path: Path, world: Path, toy_model: str
) -> None:
    output = run_cli("build", tmp_path / "photos.db", world, "--model", toy_model,
                     "--multilingual-model", tmp_path / "missing", expect=1)
    assert "no model folder at" in output and "--multilingual-model takes" in output
    assert not (tmp_path / "photos.db").exists()


def test_none_switches_the_multilingual_model_off_and_reembedding_keeps_the_choice(
    tmp_path: Path, images: Path, toy_model: str, toy_multilingual: str
) -> None:
    db = tmp_path / "photos.db"
    run_cli("build", db, images, "--model", toy_model, "--multilingual-model", "none", "--silent")
    assert json.loads(run_cli("info", db, "--json"))["multilingual_model"] is None
    assert Searcher(db).readings("红色的圆")[0].reader == "clip"
    run_cli("build", db, "--multilingual-model", toy_multilingual, "--silent")
    assert json.loads(run_cli("info", db, "--json"))["multilingual_model"] == toy_multilingual
    run_cli("build", db, "--reembed", "--silent")
    assert json.loads(run_cli("info", db, "--json"))["multilingual_model"] == toy_multilingual


@pytest.mark.asyncio
async def test_the_plugin_settings_choose_the_multilingual_model_and_the_route(
    shared_catalog: Path, toy_model: str, toy_multilingual: str
) -> None:
    config = {"plugins": {"datasette-imgsearch": {"multilingual_model": toy_multilingual, "route": "auto"}}}
    ds = make_datasette(shared_catalog, config)
    await ds.invoke_startup()
    data = (await ds.client.get("/photos/images/-/imgsearch.json", params={"q": "黄色的方块", "k": 5})).json()
    assert data["terms"][0]["model"] == Path(toy_multilingual).name
    assert precision_at_5([row["path"] for row in data["results"]], "yellow", "square") >= 0.9
    config["plugins"]["datasette-imgsearch"]["route"] = "clip"
    ds = make_datasette(shared_catalog, config)
    await ds.invoke_startup()
    data = (await ds.client.get("/photos/images/-/imgsearch.json", params={"q": "黄色的方块", "k": 5})).json()
    assert data["terms"][0]["model"] == Path(toy_model).name


@pytest.mark.parametrize("query", ["乱七八糟", "бессмыслица", "ñoñería ßß"])
def test_nonsense_in_other_scripts_looks_like_nonsense_too(ml_catalog: Path, query: str) -> None:
    from datasette_imgsearch.search.strength import STRONG

    searcher = Searcher(ml_catalog)
    assert searcher.readings(query)[0].reader == "multilingual"
    assert searcher.search(query, 1)[0].strength < STRONG
    assert all(hit.strength >= STRONG for hit in searcher.search("一个黄三角", 5))


def test_strong_keeps_its_meaning_for_random_text_in_the_multilingual_scripts(ml_catalog: Path) -> None:
    from datasette_imgsearch.search.strength import STRONG, random_texts

    searcher = Searcher(ml_catalog)
    fresh = random_texts(200, seed=11, foreign=True)  # not the strings the calibration used
    strong = sum(searcher.search(text, 1)[0].strength >= STRONG for text in fresh)
    assert strong / len(fresh) <= 0.03


def test_a_query_is_measured_against_chance_as_the_model_that_read_it_sees_chance(ml_catalog: Path) -> None:
    searcher = Searcher(ml_catalog)
    snapshot = searcher.store.current()
    for query, readers in (("红色的圆", ("multilingual",)), ("a red circle", ("clip",)),
                           ("红色的圆 + blue", ("clip", "multilingual"))):
        expected = searcher.calibration(snapshot, readers).strong_score
        assert searcher.strong_score(searcher.readings(query)) == expected, query
    for query in ("红色的圆", "a red circle", "синий квадрат", "a blue square"):  # strong reads the same in each
        assert searcher.search(query, 1)[0].strong, query
