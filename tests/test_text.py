"""Words in pictures: read at build by a real OCR model (RapidOCR's PP-OCRv4), searched by the same query
as what the pictures show, in one ranking, through every door."""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from datasette_imgsearch.build import builder as builder_module
from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.errors import CatalogError, QueryError
from datasette_imgsearch.images.toytext import draw_words, fonts, mixed_queries, shown_and_said_first, write_text_world
from datasette_imgsearch.images.toyworld import draw_image
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search.fusion import fuse, text_query_of, text_ranking
from datasette_imgsearch.search.registry import searcher_for
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.text import stage
from datasette_imgsearch.text.matching import split_query
from datasette_imgsearch.text.reader import TextReader, shared_reader
from datasette_imgsearch.vectors.ranking import Hit

from .conftest import candidates_of, run_cli

if TYPE_CHECKING:
    from datasette.app import Datasette

pytest.importorskip("rapidocr_onnxruntime", reason="the ocr extra is not installed")
if not all(fonts()):
    pytest.skip("the toy text world needs fonts-dejavu and fonts-wqy-zenhei", allow_module_level=True)


@pytest.fixture(scope="module")
def text_world(tmp_path_factory: pytest.TempPathFactory, toy_model: str) -> tuple[Path, dict[str, Any]]:
    """48 toy pictures, every other one with English or Chinese words on it, catalogued with OCR on;
    (the catalog, the truth by file name)."""
    folder = tmp_path_factory.mktemp("text")
    write_text_world(folder / "images", count=48, seed=3)
    truth = json.loads((folder / "images" / "truth.json").read_text())
    build(folder / "photos.db", folder / "images", BuildOptions(ModelChoice(model=toy_model), batch_size=16, ocr=True))
    return folder / "photos.db", truth


def copy_of(text_world: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    """A private copy of the text world's catalog and pictures, which a test may change."""
    db, _ = text_world
    shutil.copytree(db.parent / "images", tmp_path / "images")
    for suffix in ("", ".faiss"):
        shutil.copy(str(db) + suffix, str(tmp_path / "photos.db") + suffix)
    return tmp_path / "photos.db"


def words_in(truth: dict[str, Any]) -> list[str]:
    return sorted({word for facts in truth.values() for word in facts["words"]})


def has(truth: dict[str, Any], path: str, word: str) -> bool:
    return any(word in said for said in truth[Path(path).name]["words"])


# Reading ----------------------------------------------------------------------------------------------
def test_every_word_on_a_picture_is_read_and_pictures_without_words_read_as_empty(text_world: tuple) -> None:
    db, truth = text_world
    with Catalog(db) as catalog:
        rows = catalog.db.execute("select path, text, text_lines from images").fetchall()
        assert catalog.error_count() == 0
    assert len(rows) == len(truth)
    missed = [(path, word) for path, text, _ in rows for word in truth[path]["words"] if word not in (text or "")]
    assert missed == []
    assert all(text is not None for _, text, _ in rows)  # every picture read, once
    blank = [text for path, text, _ in rows if not truth[path]["words"]]
    assert sum(1 for text in blank if text) <= 1  # a shape's edge is seldom taken for a word


def test_each_line_has_its_box_in_the_upright_pictures_pixels(text_world: tuple) -> None:
    db, truth = text_world
    with Catalog(db) as catalog:
        rows = catalog.db.execute("select width, height, text_lines from images where text != ''").fetchall()
    for width, height, lines in rows:
        for line in json.loads(lines):
            assert set(line) == {"text", "box", "confidence"} and 0.6 <= line["confidence"] <= 1
            assert len(line["box"]) == 4 and all(0 <= x <= width and 0 <= y <= height for x, y in line["box"])


def test_a_large_photo_is_read_at_its_words_size_not_shrunk_away(tmp_path: Path) -> None:
    """Words a twentieth of a 12 MP photo's height: the detector sees it small, the recogniser reads the
    boxes cut from the photo itself."""
    picture = draw_image("green", "square", random.Random(1), 480).resize((4000, 3000))
    written = draw_words(picture, ("PHARMACY",), random.Random(2))
    lines = TextReader().read(written)
    assert "PHARMACY" in " ".join(line.text for line in lines)


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_sign_photographed_sideways_or_upside_down_is_read(turn: int) -> None:
    picture = draw_words(draw_image("blue", "circle", random.Random(4), 480), ("BAKERY",), random.Random(5))
    lines = shared_reader().read(picture.rotate(turn, expand=True))
    assert "BAKERY" in " ".join(line.text for line in lines)


@pytest.mark.parametrize("size", [(1, 1), (3, 900), (2000, 2)])
def test_a_picture_the_model_cannot_read_has_no_words_and_breaks_nothing(size: tuple[int, int]) -> None:
    assert TextReader().read(Image.new("RGB", size, (200, 30, 30))) == []


def test_an_ocr_failure_on_one_picture_reads_as_no_words(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = TextReader()

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION")

    monkeypatch.setattr(reader, "_engine", fail)
    assert reader.read(Image.new("RGB", (64, 64))) == []


def test_the_toy_world_command_writes_pictures_with_words_and_their_truth(tmp_path: Path) -> None:
    output = run_cli("toy-world", tmp_path / "signs", "--words", "--count", "4")
    assert output.strip() == f"wrote 4 images to {tmp_path / 'signs'}"
    truth = json.loads((tmp_path / "signs" / "truth.json").read_text())
    assert len(truth) == 4 and truth["picture-00000.jpg"]["words"]
    assert Image.open(tmp_path / "signs" / "picture-00000.jpg").size == (640, 480)


# The build's text stage ---------------------------------------------------------------------------------
def test_no_ocr_leaves_text_unread_and_a_later_build_reads_it_without_embedding_again(
    text_world: tuple, tmp_path: Path, toy_model: str
) -> None:
    db, truth = text_world
    shutil.copytree(db.parent / "images", tmp_path / "images")
    fresh = tmp_path / "fresh.db"
    output = run_cli("build", fresh, tmp_path / "images", "--model", toy_model, "--no-ocr")
    assert "text not read (--no-ocr)" in output
    with Catalog(fresh) as catalog:
        assert catalog.db.execute("select count(*) from images where text is null").fetchone()[0] == len(truth)
        version = catalog.catalog_version
    output = run_cli("build", fresh, "--model", toy_model, "--ocr")
    assert f"text read in {len(truth)} pictures" in output and f"{len(truth)} unchanged" in output
    with Catalog(fresh) as catalog:
        assert catalog.catalog_version == version  # not one embedding written
        assert catalog.db.execute("select count(*) from images where text is null").fetchone()[0] == 0
    assert "text up to date" in run_cli("build", fresh, "--model", toy_model)


def test_a_build_killed_while_reading_keeps_what_it_read_and_the_next_carries_on(
    text_world: tuple, tmp_path: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = copy_of(text_world, tmp_path)
    with Catalog(db, write=True) as catalog:
        catalog.db.execute("update images set text = null, text_lines = null")
        catalog.db.conn.commit()
    monkeypatch.setattr(stage, "COMMIT_ROWS", 4)
    calls = {"count": 0}
    real_read = TextReader.read

    def read_then_die(self: TextReader, image: Image.Image) -> list:
        calls["count"] += 1
        if calls["count"] == 11:
            raise KeyboardInterrupt
        return real_read(self, image)

    monkeypatch.setattr(TextReader, "read", read_then_die)
    with pytest.raises(KeyboardInterrupt):
        build(db, None, BuildOptions(ModelChoice(model=toy_model), ocr=True))
    with Catalog(db) as catalog:
        assert catalog.db.execute("select count(*) from images where text is not null").fetchone()[0] == 8
    monkeypatch.setattr(TextReader, "read", real_read)
    summary = build(db, None, BuildOptions(ModelChoice(model=toy_model), ocr=True))
    assert summary.text.startswith(f"text read in {len(text_world[1]) - 8} pictures")


def test_a_changed_picture_is_read_again_and_a_moved_one_keeps_its_words(
    text_world: tuple, tmp_path: Path, toy_model: str
) -> None:
    db = copy_of(text_world, tmp_path)
    with Catalog(db) as catalog:
        before = dict(catalog.db.execute("select path, text from images").fetchall())
    folder = tmp_path / "images"
    (folder / "moved").mkdir()
    shutil.move(folder / "picture-00002.jpg", folder / "moved" / "picture-00002.jpg")
    draw_words(draw_image("red", "circle", random.Random(4), 240).resize((320, 240)), ("MUSEUM",),
               random.Random(5)).save(folder / "picture-00004.jpg")
    summary = build(db, None, BuildOptions(ModelChoice(model=toy_model), ocr=True))
    assert summary.moved == 1 and summary.updated == 1
    assert summary.text.startswith("text read in 1 pictures")  # only the changed one
    with Catalog(db) as catalog:
        said = dict(catalog.db.execute("select path, text from images").fetchall())
    assert said["picture-00004.jpg"] == "MUSEUM"
    assert said["moved/picture-00002.jpg"] == before["picture-00002.jpg"] != ""


def test_ocr_asked_for_without_the_model_installed_says_how_to_install_it(
    tmp_path: Path, toy_model: str, world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builder_module, "ocr_available", lambda: False)
    with pytest.raises(CatalogError, match=r"pip install 'datasette-imgsearch\[ocr\]'"):
        build(tmp_path / "photos.db", world, BuildOptions(ModelChoice(model=toy_model), ocr=True))
    assert not (tmp_path / "photos.db").exists()
    summary = build(tmp_path / "photos.db", world, BuildOptions(ModelChoice(model=toy_model)))  # auto: off
    assert summary.text == "text not read: pip install 'datasette-imgsearch[ocr]'"


# The query ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("query", "picture_query", "phrases"), [
    ("a red circle", "a red circle", ()),
    ('"OPEN"', "OPEN", ("OPEN",)),
    ('a red circle "OPEN 24" + "咖啡"', "a red circle OPEN 24 + 咖啡", ("OPEN 24", "咖啡")),
    ('say "" nothing', "say nothing", ()),
])
def test_quoted_phrases_are_taken_out_and_the_picture_model_reads_the_words(query: str, picture_query: str,
                                                                           phrases: tuple) -> None:
    assert split_query(query) == (picture_query, phrases)


@pytest.mark.parametrize(("query", "words"), [
    ("a red circle", ("red", "circle")),
    ("2:OPEN sign + beach - night", ("OPEN", "sign", "beach")),
    ("咖啡 of", ("咖啡",)),
    ("row:3 + EXIT", ("EXIT",)),
])
def test_the_words_that_rank_by_text_are_those_of_added_terms_with_three_letters_or_another_script(
    query: str, words: tuple
) -> None:
    assert text_query_of(query).words == words


def test_fusion_puts_a_picture_that_shows_and_says_it_first_and_ranks_as_before_without_text() -> None:
    picture = [Hit(1, 0.9), Hit(2, 0.8), Hit(3, 0.7)]
    assert fuse(picture, [], 3) == picture
    fused = fuse(picture, [Hit(3, 0.7), Hit(9, 0.1)], 4)
    assert [hit.id for hit in fused] == [3, 9, 1, 2]  # 9 ranks just below the picture ranking there
    assert [hit.text_match for hit in fused] == [True, True, False, False]


def test_the_text_ranking_puts_more_words_first_then_the_better_picture() -> None:
    scores = {1: 0.1, 2: 0.5, 3: 0.3, 4: 0.9}

    def best_of(ids: np.ndarray, count: int) -> list[Hit]:
        return sorted((Hit(int(i), scores[int(i)]) for i in ids), key=lambda hit: -hit.score)[:count]

    assert [hit.id for hit in text_ranking({1: 2, 2: 1, 3: 2, 4: 1}, best_of)] == [3, 1, 4, 2]


def precision_at_5(searcher: Searcher, truth: dict[str, Any], word: str, query: str) -> float:
    with Catalog(searcher.db_path) as catalog:
        hits = searcher.search(query, 5)
        paths = catalog.paths([hit.id for hit in hits])
    holding = sum(1 for facts in truth.values() if any(word in said for said in facts["words"]))
    shown = [paths[hit.id] for hit in hits[:min(5, holding)]]
    return sum(has(truth, path, word) for path in shown) / len(shown)


def test_single_words_in_english_and_chinese_find_the_pictures_that_hold_them(text_world: tuple, toy_model: str) -> None:
    db, truth = text_world
    searcher = searcher_for(db, ModelChoice(model=toy_model))
    scores = {word: precision_at_5(searcher, truth, word, word) for word in words_in(truth)}
    assert sum(scores.values()) / len(scores) >= 0.9, scores
    assert any(not word.isascii() for word in scores) and any(word.isascii() for word in scores)


def test_part_of_a_chinese_word_finds_it_and_lower_case_finds_capitals(text_world: tuple, toy_model: str) -> None:
    db, truth = text_world
    searcher = searcher_for(db, ModelChoice(model=toy_model))
    assert precision_at_5(searcher, truth, "咖啡店", "咖啡") == 1.0
    assert precision_at_5(searcher, truth, "BAKERY", "bakery") == 1.0


def test_quoted_words_must_be_in_the_picture(text_world: tuple, toy_model: str) -> None:
    db, truth = text_world
    searcher = searcher_for(db, ModelChoice(model=toy_model))
    hits = searcher.search('a red square "店"', 48)
    with Catalog(db) as catalog:
        paths = catalog.paths([hit.id for hit in hits])
    assert sorted(Path(paths[hit.id]).name for hit in hits) == sorted(
        name for name, facts in truth.items() if any("店" in word for word in facts["words"]))
    assert searcher.search('"NOWHERE TO BE READ"', 10) == []


def test_a_picture_that_shows_and_says_the_query_ranks_above_those_that_do_one(text_world: tuple, toy_model: str) -> None:
    db, truth = text_world
    searcher = searcher_for(db, ModelChoice(model=toy_model))
    with Catalog(db) as catalog:
        id_of = {path: id_ for id_, path in catalog.db.execute("select id, path from images")}
    cases = mixed_queries(truth, id_of)
    wins = sum(shown_and_said_first([hit.id for hit in searcher.search(query, 10)], both, one) for query, both, one in cases)
    assert wins / len(cases) >= 0.9


def test_text_matches_are_kept_by_min_score_and_a_query_no_picture_says_ranks_as_before(
    text_world: tuple, toy_model: str
) -> None:
    db, _ = text_world
    searcher = searcher_for(db, ModelChoice(model=toy_model))
    assert all(hit.text_match for hit in searcher.search("BAKERY", 3, min_score="strong"))
    plain = searcher.search("a yellow circle", 10)
    assert not any(hit.text_match for hit in plain)
    vector, _ = searcher.query_vector("a yellow circle")
    assert [hit.id for hit in plain] == [hit.id for hit in searcher.store.search(vector, 10, set(), None)]


@pytest.mark.parametrize("query", ['""', '"   "'])
def test_a_query_of_empty_quotes_says_what_is_wrong(text_world: tuple, toy_model: str, query: str) -> None:
    searcher = searcher_for(text_world[0], ModelChoice(model=toy_model))
    with pytest.raises(QueryError, match="the query is empty"):
        searcher.search(query, 5)


@pytest.mark.parametrize("tokenizer", ["trigram", "unicode61", None])
def test_every_full_text_index_and_none_give_the_same_answers(
    text_world: tuple, tmp_path: Path, toy_model: str, tokenizer: str | None
) -> None:
    """SQLite without the trigram tokenizer, or without FTS5: the same hits, found by scans."""
    db = copy_of(text_world, tmp_path)
    conn = sqlite3.connect(db)
    conn.executescript("drop table images_fts; drop trigger images_ai; drop trigger images_ad; drop trigger images_au;")
    if tokenizer:
        conn.execute(f"create virtual table images_fts using fts5(text, name, folder, description, keywords, "
                     f"tokenize='{tokenizer}', content=[images])")
        conn.execute("insert into images_fts(images_fts) values ('rebuild')")
    conn.commit()
    conn.close()
    expected = searcher_for(text_world[0], ModelChoice(model=toy_model))
    found = Searcher(db, ModelChoice(model=toy_model))
    for query in ('"咖啡"', "BAKERY", '"PHARMACY" a red square', "药店", '"50%_off"'):
        assert [(h.id, h.text_match) for h in found.search(query, 8)] == [(h.id, h.text_match) for h in expected.search(query, 8)]


# The doors ----------------------------------------------------------------------------------------------
def test_the_cli_quotes_the_words_that_matched_and_its_json_gives_text_and_boxes(text_world: tuple, toy_model: str) -> None:
    db, truth = text_world
    lines = run_cli("search", db, "BAKERY", "-k", "3", "--model", toy_model).splitlines()
    assert all("“" in line and "BAKERY" in line for line in lines[:3])
    data = json.loads(run_cli("search", db, '"咖啡"', "--json", "--model", toy_model))
    assert data and all(hit["text_match"] and "咖啡" in hit["text"] and hit["text_boxes"] for hit in data)
    assert all("咖啡" in box["text"] and len(box["box"]) == 4 for hit in data for box in hit["text_boxes"])


def test_sql_ranks_by_text_too_and_datasettes_own_search_finds_the_words(text_world: tuple, toy_model: str) -> None:
    import asyncio

    db, truth = text_world

    async def ask() -> tuple[list, list]:
        ds = await served(db, toy_model)
        sql = ("select images.path, json_extract(hit.value, '$.text_match') as matched from json_each(imgsearch('EXIT', 2)) "
               "as hit join images on images.id = json_extract(hit.value, '$.id')")
        ranked = (await ds.client.get("/photos.json", params={"sql": sql, "_shape": "array"}, follow_redirects=True)).json()
        found = (await ds.client.get("/photos/images.json", params={"_search": "PHARMACY", "_shape": "array"},
                                     follow_redirects=True)).json()
        return ranked, found

    ranked, found = asyncio.run(ask())
    assert [row["matched"] for row in ranked] == [1, 1] and all(has(truth, row["path"], "EXIT") for row in ranked)
    assert sorted(row["path"] for row in found) == sorted(n for n, f in truth.items() if "PHARMACY" in f["words"])


async def served(db: Path, toy_model: str) -> "Datasette":
    from datasette.app import Datasette

    from .test_plugin import DATASETTE_1

    config = {"plugins": {"datasette-imgsearch": {"model": toy_model}}}
    ds = Datasette([str(db)], **({"config": config} if DATASETTE_1 else {"metadata": config}))
    await ds.invoke_startup()
    return ds


@pytest.mark.asyncio
async def test_the_page_outlines_the_matched_words_and_quotes_them_and_the_json_gives_boxes(
    text_world: tuple, toy_model: str
) -> None:
    db, truth = text_world
    ds = await served(db, toy_model)
    data = (await ds.client.get("/photos/images/-/imgsearch.json", params={"q": "SALE", "k": "2"})).json()
    assert [r["text_match"] for r in data["results"]] == [True, True]
    assert all("SALE" in r["text"] and r["text_boxes"][0]["text"] == "SALE" for r in data["results"])
    page = (await ds.client.get("/photos/images/-/imgsearch", params={"q": "SALE", "k": "2"})).text
    assert page.count("<polygon") == 2 and "“SALE" in page and "No strong matches" not in page
    row_id = data["results"][0]["id"]
    row_page = (await ds.client.get(f"/photos/images/{row_id}")).text
    assert re.search(r"[12] lines? read", row_page) and "SALE" in row_page
    assert "text_lines" in row_page and '"box"' not in row_page  # a count, not a wall of JSON


@pytest.mark.asyncio
async def test_a_catalog_served_read_only_from_before_text_still_answers(tmp_path: Path, toy_model: str) -> None:
    from datasette.app import Datasette

    from .test_plugin import DATASETTE_1

    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "catalog-v5.db", path)
    config = {"plugins": {"datasette-imgsearch": {"model": toy_model}}}
    ds = Datasette([], immutables=[str(path)], **({"config": config} if DATASETTE_1 else {"metadata": config}))
    await ds.invoke_startup()
    data = (await ds.client.get("/old/images/-/imgsearch.json", params={"q": '"OPEN" a red circle', "k": "3"})).json()
    assert data["count"] == 3 and "text" not in data["results"][0] and not data["results"][0]["text_match"]


def test_filters_still_apply_to_a_search_by_words(text_world: tuple, toy_model: str) -> None:
    db, truth = text_world
    searcher = searcher_for(db, ModelChoice(model=toy_model))
    with Catalog(db) as catalog:
        ids = {path: id_ for id_, path in catalog.db.execute("select id, path from images")}
    among = [id_ for path, id_ in ids.items() if path < "picture-00024.jpg"]
    hits = searcher.search("BAKERY", 10, candidates=candidates_of(among))
    assert hits and {hit.id for hit in hits} <= set(among)
    matched = {hit.id for hit in hits if hit.text_match}
    assert matched == {ids[name] for name, facts in truth.items() if "BAKERY" in facts["words"] and ids[name] in among}


def test_info_says_how_far_the_words_are_read(text_world: tuple, tmp_path: Path) -> None:
    db = copy_of(text_world, tmp_path)
    with_words = sum(1 for facts in text_world[1].values() if facts["words"])
    assert f"read in {len(text_world[1])} pictures, {with_words} with words\n" in run_cli("info", db)
    with Catalog(db, write=True) as catalog:
        catalog.db.execute("update images set text = null where id <= 3")
        catalog.db.conn.commit()
    assert "3 not read yet" in run_cli("info", db)
    old = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "catalog-v5.db", old)
    assert "text:" not in run_cli("info", old)
