"""Shared fixtures: the trained toy-world CLIP, generated image folders and catalogs built from them."""

from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub name fails in seconds, not minutes of retries
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("IMGSEARCH_CACHE", tempfile.mkdtemp(prefix="imgsearch-cache-"))  # not the user's ~/.cache

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.cli import cli
from datasette_imgsearch.images.toyworld import write_world
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search.arguments import Candidates

TOY_MODEL = Path(__file__).parent / "fixtures" / "toy-clip"
TOY_MULTILINGUAL = Path(__file__).parent / "fixtures" / "toy-multilingual"


# Modules whose tests (apart from those marked ``datasette`` one by one) never start Datasette: building,
# embedding, the index, the engines, the command line. CI runs them once per sqlite3 module rather than
# once per Datasette line too (``pytest -m datasette`` on the second line; the README says so).
WITHOUT_DATASETTE = {
    "test_architecture", "test_build", "test_catalog", "test_catch_up", "test_embed", "test_fastclip",
    "test_index", "test_onnx", "test_pixels", "test_query", "test_ray", "test_scan", "test_watch",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``datasette`` every test outside :data:`WITHOUT_DATASETTE`."""
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] not in WITHOUT_DATASETTE:
            item.add_marker(pytest.mark.datasette)


@pytest.fixture(autouse=True)
def _datasette_only_where_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked ``datasette`` that starts one fails, so the mark (and CI's choice of what to run
    on every Datasette line) cannot go stale."""
    if request.node.get_closest_marker("datasette") is None:
        from datasette.app import Datasette

        def refused(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"{request.node.nodeid} starts Datasette: mark it @pytest.mark.datasette")

        monkeypatch.setattr(Datasette, "__init__", refused)


@pytest.fixture(scope="session")
def toy_model() -> str:
    return str(TOY_MODEL)


@pytest.fixture(scope="session")
def toy_multilingual() -> str:
    """The toy world's multilingual text model: Chinese and Russian captions in the toy CLIP's space."""
    return str(TOY_MULTILINGUAL)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 toy-world JPEGs (five of each colour-and-shape class); never modified."""
    folder = tmp_path_factory.mktemp("world")
    write_world(folder, count=60, seed=7)
    return folder


@pytest.fixture
def images(tmp_path: Path, world: Path) -> Path:
    """A private copy of the toy world that a test may change."""
    folder = tmp_path / "images"
    shutil.copytree(world, folder)
    return folder


@pytest.fixture(scope="session")
def shared_catalog(tmp_path_factory: pytest.TempPathFactory, world: Path, toy_model: str) -> Path:
    """A catalog of the toy world (``images/`` beside ``photos.db``) for tests that only read it."""
    folder = tmp_path_factory.mktemp("shared")
    images = folder / "images"
    shutil.copytree(world, images)
    path = folder / "photos.db"
    build(path, images, BuildOptions(ModelChoice(model=toy_model), batch_size=16))
    return path


@pytest.fixture
def catalog(tmp_path: Path, images: Path, shared_catalog: Path) -> Path:
    """A private catalog of ``images`` that a test may change: the shared one's files, copied (what a
    build of the same pictures writes; the catalog finds its folder relative to itself)."""
    path = tmp_path / "photos.db"
    for suffix in ("", ".faiss"):
        shutil.copy(str(shared_catalog) + suffix, str(path) + suffix)
    return path


def candidates_of(ids: object) -> Candidates:
    """The candidates argument SQL's ``json_group_array(id)`` would give for ``ids``."""
    return Candidates(json.dumps([int(i) for i in ids]))


def run_cli(*args: str, expect: int = 0) -> str:
    """Run the command line in-process; assert its exit code; return what it printed."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


@pytest.fixture(scope="session")
def other_dimension_model(tmp_path_factory: pytest.TempPathFactory, toy_model: str) -> Path:
    """A random tiny CLIP with 16-dimensional vectors (the toy model has 32)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(toy_model)
    tokenizer = processor.tokenizer
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=16,
    )
    folder = tmp_path_factory.mktemp("other-dimension")
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
