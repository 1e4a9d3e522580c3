"""Near-duplicates: the turn-proof hash, the pixel check, groups found at build and kept current."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.duplicates.grouping import PIXEL_LIKENESS, PIXEL_LIKENESS_BUT_A_CORNER, alike
from datasette_imgsearch.duplicates.links import LinkGraph
from datasette_imgsearch.duplicates.listing import groups_by_path
from datasette_imgsearch.duplicates.stage import comparable, update_groups
from datasette_imgsearch.images.likeness import (
    _CORNER_BLOCKS,
    TURNS,
    Signatures,
    _correlations_without_corners,
    _unit,
    corner_likeness,
    distance,
    likeness_hash,
    pixel_likeness,
    turned,
)
from datasette_imgsearch.images.pixels import thumbnail
from datasette_imgsearch.images.toycopies import TRANSFORMS, score_groups, write_copies
from datasette_imgsearch.images.toyworld import COLOURS, SHAPES, draw_image

from .conftest import run_cli

if TYPE_CHECKING:
    from datasette.app import Datasette

T = Image.Transpose


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    import random

    return draw_image("blue", "triangle", random.Random(3), 128)


# The hash ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transpose,name", [
    (T.FLIP_LEFT_RIGHT, "mirrored"), (T.FLIP_TOP_BOTTOM, "upside down"), (T.ROTATE_180, "turned 180°"),
    (T.TRANSPOSE, "transposed"), (T.ROTATE_270, "turned 90° clockwise"), (T.ROTATE_90, "turned 90° anticlockwise"),
    (T.TRANSVERSE, "transverse"),
])
def test_a_turned_or_mirrored_picture_hashes_to_a_turn_of_the_pictures_hash(
    picture: Image.Image, transpose: Image.Transpose, name: str
) -> None:
    turns = turned(np.array([likeness_hash(picture)]))[0]
    apart = distance(turns, np.int64(likeness_hash(picture.transpose(transpose))))
    assert apart[TURNS.index(name)] <= 2 and apart[0] > 8  # found in that turn (a coefficient near 0 may flip)


@pytest.mark.parametrize("edit", [
    lambda im: im.resize((64, 64), Image.Resampling.BICUBIC), lambda im: im.point(lambda v: min(255, int(v * 1.15))),
])
def test_resizing_and_brightening_move_few_bits(picture: Image.Image, edit) -> None:  # type: ignore[no-untyped-def]
    assert distance(likeness_hash(picture), likeness_hash(edit(picture))) <= 4


# The pixels --------------------------------------------------------------------------------------------
def confirmed(first: Image.Image, second: Image.Image) -> bool:
    return alike(Signatures(thumbnail(first)), Signatures(thumbnail(second))) is not None


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_a_copy_made_any_of_the_ways_libraries_fill_up_looks_alike(picture: Image.Image, transform: str) -> None:
    import random

    assert confirmed(picture, TRANSFORMS[transform](picture, random.Random(1)))


@pytest.mark.parametrize("seed", range(4))
def test_another_picture_of_the_same_colour_and_shape_does_not(picture: Image.Image, seed: int) -> None:
    import random

    assert not confirmed(picture, draw_image("blue", "triangle", random.Random(100 + seed), 128))


@pytest.mark.parametrize("seed", [2, 7, 8, 13])  # pictures whose caption covers more than a twentieth of the cells
@pytest.mark.parametrize("flip", [False, True])  # the caption in a bottom corner or, both pictures flipped, a top one
def test_a_copy_with_a_caption_in_a_corner_looks_alike(seed: int, flip: bool) -> None:
    import random

    colour, shape = random.Random(seed).choice(list(COLOURS)), random.Random(seed).choice(SHAPES)
    original = draw_image(colour, shape, random.Random(seed), 128)
    pictures = [original, TRANSFORMS["with an overlay"](original, random.Random(seed))]
    first, second = (Signatures(thumbnail(im.transpose(T.FLIP_TOP_BOTTOM) if flip else im)) for im in pictures)
    whole, most = pixel_likeness(first, second)
    assert whole < PIXEL_LIKENESS and most < PIXEL_LIKENESS_BUT_A_CORNER  # what confirmed pairs before corners
    assert corner_likeness(first, second) >= PIXEL_LIKENESS_BUT_A_CORNER and alike(first, second) == whole


@pytest.mark.parametrize("corner", range(4))
def test_leaving_a_corner_out_is_the_correlation_of_the_rest(corner: int) -> None:
    """The correlations come from sums over the corner alone; they equal those of the signatures without it."""
    rows, columns = (_unit(np.random.default_rng(seed).standard_normal((n, 32 * 32 * 3))) for seed, n in ((0, 5), (1, 3)))
    kept = np.setdiff1d(np.arange(rows.shape[1]), _CORNER_BLOCKS[corner])
    expected = _unit(rows[:, kept]) @ _unit(columns[:, kept]).T
    assert np.allclose(_correlations_without_corners(rows, columns)[corner], expected, atol=1e-9)


# Groups from pairs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,compared", [
    (1, 2, True),  # two pictures
    (1, 10, False),  # a picture and a video (a still of its first frame, say)
    (10, 11, True),  # two videos of 60 s and 60.8 s: within a second
    (12, 13, True),  # 600 s and 610 s: within 2%
    (10, 12, False),  # 60 s and 600 s: another video that opens alike
    (14, 15, True),  # two videos of unknown length
    (10, 14, False),  # one of unknown length
    (20, 21, False),  # two frames: moments of one file
    (1, 20, False),  # a picture and a frame
    (10, 20, False),  # a video and a frame
])
def test_videos_are_compared_only_with_videos_of_about_their_length(a: int, b: int, compared: bool) -> None:
    lengths = {10: 60.0, 11: 60.8, 12: 600.0, 13: 610.0, 14: None, 15: None}
    moving = {**{id_: ("video", length) for id_, length in lengths.items()}, 20: ("frame", 60.0), 21: ("frame", 60.0)}
    assert comparable(a, b, moving) is compared


def test_a_lone_mistaken_pair_between_two_groups_is_cut_and_a_lone_copy_is_kept() -> None:
    graph = LinkGraph(is_picture=lambda node: node >= 0)
    for a, b in [(1, 2), (2, 3), (1, 3), (4, 5), (5, 6)]:
        graph.link(a, b, 0.995)  # copies all but identical: a chain of them is never cut
    graph.link(3, 4, 0.98)  # the one pair that joins two otherwise separate groups
    graph.link(6, 7, 0.975)  # a copy joined by one pair
    graph.link(8, -1)  # a stored group's rows hang on its stand-in, which is no picture
    graph.link(9, -1)
    assert graph.groups() == [[1, 2, 3], [4, 5, 6, 7], [8, 9]]


# Groups at build ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def copies_world(tmp_path_factory: pytest.TempPathFactory, toy_model: str) -> tuple[Path, Path, list, list]:
    """24 toy originals with two copies each, built: (catalog, folder, originals, copies)."""
    root = tmp_path_factory.mktemp("copies")
    originals, copies = write_copies(root / "images", count=24, copies_each=2, seed=3)
    run_cli("build", root / "photos.db", root / "images", "--model", toy_model)
    return root / "photos.db", root / "images", originals, copies


def groups_of(db: Path, folder: Path) -> dict[Path, int | None]:
    with Catalog(db) as catalog:
        return {folder / path: group for path, group in groups_by_path(catalog.db.conn).items()}


async def served(db: Path) -> "Datasette":
    from datasette.app import Datasette

    ds = Datasette([str(db)])
    await ds.invoke_startup()
    return ds


def test_copies_share_their_originals_group_and_other_pictures_stay_apart(copies_world: tuple) -> None:
    db, folder, originals, copies = copies_world
    score = score_groups(groups_of(db, folder), originals, copies)
    assert score.precision >= 0.98 and score.recall >= 0.95, score


def test_a_group_is_named_after_its_keeper_the_largest_picture(copies_world: tuple) -> None:
    db, folder, _, copies = copies_world
    conn = sqlite3.connect(db)
    enlarged = next(copy for copy in copies if copy.transform == "resized to 1.5x")
    row_id, group, keeper = conn.execute(
        "select id, duplicate_group, duplicate_keeper from images where path = ?", [enlarged.path.name]
    ).fetchone()
    assert group == row_id and keeper == 1
    members = conn.execute("select duplicate_keeper from images where duplicate_group = ?", [group]).fetchall()
    assert sorted(members) == [(0,), (0,), (1,)]
    alone = "select count(*) from images where duplicate_group is null and duplicate_keeper is not null"
    assert conn.execute(alone).fetchone() == (0,)
    same_size = {"turned 90°", "turned 180°", "turned 270°", "mirrored", "darker by 20%", "less contrast", "with an overlay"}
    by_original: dict[Path, set[str]] = {}
    for copy in copies:
        by_original.setdefault(copy.original, set()).add(copy.transform)
    original = next(path for path, made in by_original.items() if made <= same_size)
    keeper = conn.execute("select duplicate_keeper from images where path = ?", [original.name]).fetchone()
    assert keeper == (1,)  # as large as its copies, and older: the original is kept


def test_new_changed_and_removed_files_update_the_groups_without_comparing_everything(
    tmp_path: Path, copies_world: tuple, toy_model: str
) -> None:
    _, source, originals, copies = copies_world
    folder = tmp_path / "images"
    shutil.copytree(source, folder)
    db = tmp_path / "photos.db"
    run_cli("build", db, folder, "--model", toy_model)
    original = originals[5]
    Image.open(original).transpose(T.ROTATE_90).save(folder / "new-turned-copy.jpg", quality=90)
    output = run_cli("build", db, folder, "--model", toy_model)
    assert "near-duplicates: 1 pictures compared" in output
    groups = groups_of(db, folder)
    assert groups[folder / "new-turned-copy.jpg"] == groups[folder / original.name] is not None
    keeper = sqlite3.connect(db).execute("select path from images where id = ?", [groups[folder / original.name]]).fetchone()[0]
    (folder / keeper).unlink()  # the keeper leaves: another member takes its place and gives the group its id
    run_cli("build", db, folder, "--model", toy_model)
    after = groups_of(db, folder)
    conn = sqlite3.connect(db)
    survivors = [path for path, group in groups.items() if group == groups[folder / original.name] and path.name != keeper]
    new_group = after[survivors[0]]
    assert new_group is not None and all(after[path] == new_group for path in survivors)
    assert conn.execute("select duplicate_keeper from images where id = ?", [new_group]).fetchone() == (1,)
    for path in survivors[1:]:
        path.unlink()  # one picture left: it is in no group
    run_cli("build", db, folder, "--model", toy_model)
    assert groups_of(db, folder)[survivors[0]] is None


def picture_and_mirror(tmp_path: Path, picture: Image.Image) -> Path:
    """A folder holding ``a.png`` and its mirror image ``a-mirrored.png``."""
    folder = tmp_path / "images"
    folder.mkdir()
    picture.save(folder / "a.png")
    picture.transpose(T.FLIP_LEFT_RIGHT).save(folder / "a-mirrored.png")
    return folder


def test_without_thumbnails_only_copies_whose_hashes_agree_are_grouped(
    tmp_path: Path, picture: Image.Image, toy_model: str
) -> None:
    folder = picture_and_mirror(tmp_path, picture)
    import random

    draw_image("blue", "triangle", random.Random(9), 128).save(folder / "b.png")
    run_cli("build", tmp_path / "photos.db", folder, "--model", toy_model, "--no-thumbnails")
    groups = groups_of(tmp_path / "photos.db", folder)
    assert groups[folder / "a.png"] == groups[folder / "a-mirrored.png"] is not None and groups[folder / "b.png"] is None


def test_a_catalog_of_the_previous_schema_is_hashed_from_its_thumbnails(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "catalog-v4.db", path)
    with Catalog(path, write=True) as catalog:
        summary = update_groups(catalog)
        assert summary.hashed == 10 and summary.checked == 10
        assert catalog.meta("duplicates_version") == catalog.catalog_version
    conn = sqlite3.connect(path)
    assert conn.execute("select count(*) from images where likeness is null").fetchone() == (0,)


# Review ------------------------------------------------------------------------------------------------
def test_the_duplicates_command_lists_each_group_with_its_keeper_first(copies_world: tuple) -> None:
    db, *_ = copies_world
    text = run_cli("duplicates", db)
    assert text.splitlines()[1].startswith("  * ") and "copies beside their keepers" in text
    groups = json.loads(run_cli("duplicates", db, "--json"))
    assert groups and all(g["members"][0]["keeper"] and not any(m["keeper"] for m in g["members"][1:]) for g in groups)
    rows = list(csv.DictReader(io.StringIO(run_cli("duplicates", db, "--csv"))))
    assert len(rows) == sum(g["count"] for g in groups) and {"group", "path", "keeper", "width", "size"} <= set(rows[0])


@pytest.mark.parametrize("args,message", [
    (["--json", "--csv"], "choose one of --json and --csv"),
])
def test_the_duplicates_command_refuses_what_it_cannot_do(copies_world: tuple, args: list[str], message: str) -> None:
    assert message in run_cli("duplicates", copies_world[0], *args, expect=2)


def test_a_catalog_built_before_groups_says_to_build_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "catalog-v4.db", path)
    assert "built before near-duplicates were found: run 'datasette-imgsearch build'" in run_cli("duplicates", path, expect=1)


# Collapsed results -------------------------------------------------------------------------------------
def test_a_search_shows_each_group_once_and_k_counts_what_is_shown(copies_world: tuple) -> None:
    db, *_ = copies_world
    shown = json.loads(run_cli("search", db, "a blue circle", "-k", "6", "--json"))
    every = json.loads(run_cli("search", db, "a blue circle", "-k", "6", "--json", "--all"))
    groups = sqlite3.connect(db).execute("select id, duplicate_group from images").fetchall()
    group_of = dict(groups)
    assert len(shown) == len(every) == 6
    kept = [group_of[hit["id"]] for hit in shown if group_of[hit["id"]] is not None]
    assert len(kept) == len(set(kept)) and any(hit["near_copies"] == 2 for hit in shown)
    assert len({group_of[hit["id"]] for hit in every}) < 6  # every copy: groups repeat
    assert "(+2 near-copies)" in run_cli("search", db, "a blue circle", "-k", "3")


@pytest.mark.asyncio
async def test_the_page_and_json_collapse_near_copies_and_link_to_them(copies_world: tuple) -> None:
    db, *_ = copies_world
    ds = await served(db)
    url = "/photos/images/-/imgsearch"
    data = (await ds.client.get(url + ".json", params={"q": "a blue circle", "k": "6"})).json()
    groups = [r["duplicate_group"] for r in data["results"] if r["duplicate_group"] is not None]
    assert data["count"] == 6 and len(groups) == len(set(groups))
    copied = next(r for r in data["results"] if r["near_copies"])
    gallery = await ds.client.get(copied["near_copies_url"])
    assert gallery.status_code == 200 and gallery.text.count('class="thumb"') == copied["near_copies"] + 1
    every = (await ds.client.get(url + ".json", params={"q": "a blue circle", "k": "6", "collapse": "0"})).json()
    assert every["count"] == 6 and all(r["near_copies"] == 0 for r in every["results"])
    page = (await ds.client.get(url, params={"q": "a blue circle", "k": "6"})).text
    assert "near-copies</a>" in page and "Show every copy" in page
    wrong = await ds.client.get(url + ".json", params={"q": "a blue circle", "collapse": "yes"})
    assert wrong.status_code == 400 and "collapse is 1" in wrong.json()["error"]


@pytest.mark.asyncio
async def test_a_catalog_served_read_only_before_groups_existed_still_answers(tmp_path: Path, toy_model: str) -> None:
    from datasette.app import Datasette

    from .test_plugin import DATASETTE_1

    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "catalog-v4.db", path)
    config = {"plugins": {"datasette-imgsearch": {"model": toy_model}}}  # the fixture names this checkout's folder
    ds = Datasette([], immutables=[str(path)], **({"config": config} if DATASETTE_1 else {"metadata": config}))
    await ds.invoke_startup()
    data = (await ds.client.get("/old/images/-/imgsearch.json", params={"q": "a red circle", "k": "3"})).json()
    assert data["count"] == 3 and "duplicate_group" not in data["results"][0]
    assert (await ds.client.get("/old/images/-/imgsearch", params={"_sort": "name"})).status_code == 200


@pytest.mark.asyncio
async def test_the_duplicates_page_shows_groups_side_by_side_and_the_table_page_links_to_it(copies_world: tuple) -> None:
    db, *_ = copies_world
    ds = await served(db)
    url = "/photos/images/-/imgsearch/duplicates"
    assert url in (await ds.client.get("/photos/images")).text
    first = (await ds.client.get(url + ".json")).json()
    assert first["groups"] >= 21 and len(first["results"]) == 20 and first["next_url"]
    rest = (await ds.client.get(first["next_url"])).json()
    assert len(rest["results"]) == first["groups"] - 20 and rest["next_url"] is None
    group = first["results"][0]
    assert group["members"][0]["keeper"] and (await ds.client.get(group["members"][1]["thumbnail_url"])).status_code == 200
    page = (await ds.client.get(url)).text
    assert page.count('class="imgsearch-group"') == 20 and page.count(">keep</span>") == 20 and "Next groups" in page
    bad = await ds.client.get(url, params={"_next": "-1"})
    assert bad.status_code == 400


# At scale ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hashes,neighbours", [
    ("compared one by one", "every vector"), ("looked up by quarters", "an index made for it"),
])
def test_the_ways_a_large_catalog_is_grouped_find_the_copies_too(
    tmp_path: Path, copies_world: tuple, toy_model: str, monkeypatch: pytest.MonkeyPatch, hashes: str, neighbours: str
) -> None:
    from datasette_imgsearch.duplicates import grouping, stage

    if hashes == "looked up by quarters":
        monkeypatch.setattr(grouping, "EXACT_HASH_COMPARISONS", 0)
    if neighbours == "an index made for it":
        monkeypatch.setattr(stage, "EXACT_NEIGHBOUR_ROWS", 0)
    _, source, originals, copies = copies_world
    folder = tmp_path / "images"
    shutil.copytree(source, folder)
    run_cli("build", tmp_path / "photos.db", folder, "--model", toy_model)
    moved = {tmp_path / "images" / p.name: g for p, g in groups_of(tmp_path / "photos.db", folder).items()}
    score = score_groups(moved, [folder / p.name for p in originals],
                         [type(c)(folder / c.path.name, folder / c.original.name, c.transform) for c in copies])
    assert score.precision >= 0.98 and score.recall >= 0.9, score


def test_a_flat_index_proposes_exactly_the_neighbours_that_comparing_every_vector_does(copies_world: tuple) -> None:
    from datasette_imgsearch.catalog.schema import index_path
    from datasette_imgsearch.duplicates.grouping import BLOCK_ROWS, indexed_neighbour_pairs, neighbour_pairs
    from datasette_imgsearch.vectors.index import read_index

    db, *_ = copies_world
    with Catalog(db) as catalog:
        ids, vectors = catalog.embeddings()
        exact = neighbour_pairs(ids, vectors, catalog.iter_embeddings(BLOCK_ROWS))
        indexed = indexed_neighbour_pairs(ids, vectors, read_index(index_path(db), catalog.meta("index_type")))
    assert exact and indexed == exact


def test_a_large_catalog_with_an_approximate_index_asks_it_for_neighbours(
    tmp_path: Path, copies_world: tuple, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    from datasette_imgsearch.duplicates import grouping, stage
    from datasette_imgsearch.vectors.index import inner_index

    asked = []
    monkeypatch.setattr(stage, "EXACT_NEIGHBOUR_ROWS", 0)
    monkeypatch.setattr(stage, "indexed_neighbour_pairs", lambda ids, queries, index: asked.append(
        type(faiss.downcast_index(inner_index(index))).__name__) or grouping.indexed_neighbour_pairs(ids, queries, index))
    _, source, originals, _ = copies_world
    folder = tmp_path / "images"
    shutil.copytree(source, folder)
    run_cli("build", tmp_path / "photos.db", folder, "--model", toy_model)
    run_cli("index", tmp_path / "photos.db", "--type", "hnsw")
    Image.open(originals[2]).resize((100, 100)).save(folder / "smaller-copy.jpg")
    run_cli("build", tmp_path / "photos.db", folder, "--model", toy_model)
    assert asked == ["IndexIVFScalarQuantizer", "IndexHNSWFlat"]  # made for the first build; the catalog's after
    groups = groups_of(tmp_path / "photos.db", folder)
    assert groups[folder / "smaller-copy.jpg"] == groups[folder / originals[2].name] is not None


@pytest.mark.asyncio
async def test_the_readmes_sql_shows_one_row_per_group_the_best_ranked(copies_world: tuple) -> None:

    db, *_ = copies_world
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    sql = readme.split("one per group is a `group by`")[1].split("```sql\n")[1].split("```")[0]
    ds = await served(db)
    rows = (await ds.client.get("/photos.json", params={"sql": sql.replace("a red bicycle", "a blue circle"),
                                                           "_shape": "array"}, follow_redirects=True)).json()
    every = json.loads(run_cli("search", db, "a blue circle", "-k", "60", "--json", "--all"))
    group_of = dict(sqlite3.connect(db).execute("select path, coalesce(duplicate_group, -id) from images").fetchall())
    best: dict[int, str] = {}
    for hit in every:
        best.setdefault(group_of[hit["path"]], hit["path"])
    assert [row["path"] for row in rows] == list(best.values())[:20]


def test_a_damaged_thumbnail_falls_back_to_the_hashes_and_breaks_nothing(
    tmp_path: Path, picture: Image.Image, toy_model: str
) -> None:
    folder = picture_and_mirror(tmp_path, picture)
    picture.resize((100, 100)).save(folder / "a-smaller.png")
    db = tmp_path / "photos.db"
    run_cli("build", db, folder, "--model", toy_model)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("update images set thumbnail = x'ffd8ffe000' where name = 'a.png'")  # a truncated JPEG
        conn.execute("update images set duplicate_group = null, duplicate_keeper = null")
        conn.execute("delete from imgsearch_meta where key = 'duplicates_version'")  # group everything again
    run_cli("build", db, folder, "--model", toy_model)
    groups = groups_of(db, folder)
    assert groups[folder / "a.png"] == groups[folder / "a-mirrored.png"] == groups[folder / "a-smaller.png"] is not None


def test_a_row_without_a_hash_is_compared_by_its_embedding_only(tmp_path: Path, picture: Image.Image, toy_model: str) -> None:
    folder = picture_and_mirror(tmp_path, picture)
    db = tmp_path / "photos.db"
    run_cli("build", db, folder, "--model", toy_model)
    conn = sqlite3.connect(db)
    with conn:  # as a catalog of an earlier schema whose thumbnail cannot be read
        conn.execute("update images set likeness = null, thumbnail = x'ffd8ffe000' where name = 'a.png'")
        conn.execute("update images set duplicate_group = null, duplicate_keeper = null")
        conn.execute("delete from imgsearch_meta where key = 'duplicates_version'")
    with Catalog(db, write=True) as catalog:
        summary = update_groups(catalog)
    assert summary.checked == 2 and summary.hashed == 0
    assert set(groups_of(db, folder).values()) == {None}  # nothing to confirm a pair with: no pair, and no crash
