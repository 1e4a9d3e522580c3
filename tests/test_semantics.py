"""Meaning, not plumbing: with the toy-world CLIP, every door brings back the right pictures.

A swapped colour channel, a wrong normalisation, a tokenizer mix-up or a mangled upload would all
pass a shape-of-the-array test; each of these fails here. The shared catalog holds five pictures of
each of the twelve colour-and-shape classes; file names say what each shows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import pytest_asyncio
from datasette.app import Datasette
from PIL import Image

from datasette_imgsearch.images.toyworld import COLOURS, SHAPES, draw_image, label_of
from datasette_imgsearch.search.registry import searcher_for

from .conftest import run_cli

CLASSES = [(colour, shape) for colour in COLOURS for shape in SHAPES]
SEARCH = "/photos/images/-/imgsearch"


def labels(paths: list[str]) -> list[tuple[str, str]]:
    return [label_of(path) for path in paths]


def cli_top(catalog: Path, query: str, k: int = 5) -> list[tuple[str, str]]:
    return labels([hit["path"] for hit in json.loads(run_cli("search", catalog, query, "-k", k, "--json"))])


def mostly(found: list[tuple[str, str]], wanted, at_least: int = 4) -> bool:
    """The best hit is right and at least ``at_least`` of the five are."""
    return wanted(found[0]) and sum(map(wanted, found)) >= at_least


@pytest.mark.parametrize("colour,shape", CLASSES)
def test_a_caption_brings_its_class(shared_catalog: Path, colour: str, shape: str) -> None:
    found = cli_top(shared_catalog, f"a {colour} {shape}")
    assert mostly(found, lambda label: label == (colour, shape)), found


@pytest.mark.parametrize("colour", list(COLOURS))
def test_a_colour_brings_that_colour(shared_catalog: Path, colour: str) -> None:
    found = cli_top(shared_catalog, f"something {colour}")
    assert all(label[0] == colour for label in found), found


@pytest.mark.parametrize("shape", SHAPES)
def test_a_shape_brings_that_shape_in_any_colour(shared_catalog: Path, shape: str) -> None:
    found = cli_top(shared_catalog, f"a {shape}")
    assert mostly(found, lambda label: label[1] == shape), found


@pytest.mark.parametrize("query,wanted", [
    ("red circle - red + blue", ("blue", "circle")),
    ("yellow square - square + triangle", ("yellow", "triangle")),
    ("2:a green thing + a circle", ("green", "circle")),
])
def test_arithmetic_moves_through_the_space(shared_catalog: Path, query: str, wanted: tuple[str, str]) -> None:
    found = cli_top(shared_catalog, query)
    assert mostly(found, lambda label: label == wanted), found


def test_more_like_a_row_brings_its_class(shared_catalog: Path) -> None:
    hits = json.loads(run_cli("search", shared_catalog, "a red circle", "-k", "1", "--json"))
    row = hits[0]["id"]
    found = cli_top(shared_catalog, f"row:{row}", k=4)
    assert mostly(found, lambda label: label == ("red", "circle"), at_least=3), found


def test_a_fresh_picture_finds_its_class(shared_catalog: Path, tmp_path: Path) -> None:
    """A reference image the catalog has never seen, drawn with another random seed."""
    import random

    picture = tmp_path / "reference.png"
    draw_image("blue", "square", random.Random(12345)).save(picture)
    output = json.loads(run_cli("search", shared_catalog, "--image", picture, "-k", "5", "--json"))
    assert mostly(labels([hit["path"] for hit in output]), lambda label: label == ("blue", "square")), output


@pytest_asyncio.fixture
async def ds(shared_catalog: Path) -> Datasette:
    datasette = Datasette([str(shared_catalog)])
    await datasette.invoke_startup()
    searcher_for(shared_catalog).wait_until_loaded(120)
    return datasette


@pytest.mark.asyncio
async def test_imgsearch_in_sql_brings_red_circles(ds: Datasette) -> None:
    response = await ds.client.get("/photos.json", follow_redirects=True, params={"_shape": "array", "sql": """
        select images.path from json_each(imgsearch('a red circle', 5)) as hit
        join images on images.id = json_extract(hit.value, '$.id') order by hit.key"""})
    found = labels([row["path"] for row in response.json()])
    assert mostly(found, lambda label: label == ("red", "circle")), found


@pytest.mark.asyncio
async def test_the_json_api_brings_yellow_triangles(ds: Datasette) -> None:
    response = await ds.client.get(SEARCH + ".json", params={"q": "a yellow triangle", "k": 5})
    found = labels([row["path"] for row in response.json()["results"]])
    assert mostly(found, lambda label: label == ("yellow", "triangle")), found


@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
async def test_an_uploaded_blue_square_brings_blue_squares(ds: Datasette, fmt: str) -> None:
    import random

    buffer = io.BytesIO()
    draw_image("blue", "square", random.Random(777)).save(buffer, format=fmt)
    response = await ds.client.post(SEARCH + ".json", files={"image": (f"upload.{fmt.lower()}", buffer.getvalue())},
                                    data={"k": "5"})
    found = labels([row["path"] for row in response.json()["results"]])
    assert mostly(found, lambda label: label == ("blue", "square")), found


@pytest.mark.asyncio
async def test_an_upload_with_alpha_is_seen_on_white(ds: Datasette) -> None:
    """A green triangle whose transparent pixels hide pure red: seen on white it is a green triangle;
    a decoder that dropped the alpha channel would show it on red."""
    import math

    from PIL import ImageDraw

    picture = Image.new("RGBA", (128, 128), (255, 0, 0, 0))
    corners = [(64 + 36 * math.cos(0.3 + 2 * math.pi * i / 3), 64 + 36 * math.sin(0.3 + 2 * math.pi * i / 3)) for i in range(3)]
    ImageDraw.Draw(picture).polygon(corners, fill=(35, 160, 55, 255))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    response = await ds.client.post(SEARCH + ".json", files={"image": ("alpha.png", buffer.getvalue(), "image/png")},
                                    data={"k": "5"})
    found = labels([row["path"] for row in response.json()["results"]])
    assert all(colour == "green" for colour, _ in found), found
    assert mostly(found, lambda label: label == ("green", "triangle"), at_least=3), found
