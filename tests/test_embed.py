"""Models: loading, the fast preprocessing, batched text queries, separate text models."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasette_imgsearch.batcher import Batcher
from datasette_imgsearch.embed import Embedder, load_embedder, same_model
from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.query import Searcher

from .conftest import run_cli


@pytest.mark.parametrize("size", [(301, 207), (64, 64), (640, 480), (90, 400), (3, 1000)])
def test_the_fast_preprocessing_gives_the_processors_own_numbers(toy_model: str, size: tuple[int, int]) -> None:
    embedder = load_embedder(toy_model, "cpu")
    assert embedder._pixels is not None, "the toy model's processor should take the fast path"
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    fast = embedder.preprocess(image)["pixel_values"]
    reference = embedder.model.preprocess([image])["pixel_values"]
    assert fast.shape == reference.shape
    assert float((fast - reference).abs().max()) < 1e-4


def test_concurrent_text_queries_are_encoded_together_and_correctly() -> None:
    calls: list[int] = []

    def encode(items: list[int]) -> np.ndarray:
        calls.append(len(items))
        time.sleep(0.05)  # a busy model, so that others queue up
        return np.array([[item * 2.0] for item in items])

    batcher = Batcher(encode)
    results: dict[int, float] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, float(batcher(n)[0]))) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: n * 2.0 for n in range(12)}
    assert sum(calls) == 12 and len(calls) < 12


def test_an_error_reaches_every_caller_of_the_batch() -> None:
    def encode(items: list[str]) -> np.ndarray:
        raise ValueError("model on fire")

    batcher = Batcher(encode)
    with pytest.raises(ValueError, match="model on fire"):
        batcher("x")
    with pytest.raises(ValueError, match="model on fire"):
        batcher("y")  # and the batcher is not left stuck


def test_batched_and_single_text_vectors_agree(toy_model: str) -> None:
    embedder = load_embedder(toy_model, "cpu")
    texts = ["a red circle", "something blue", "a much longer description of a small green triangle"]
    together = embedder.encode_texts(texts)
    for text, row in zip(texts, together):
        assert float(embedder.encode_text(text) @ row) > 0.9999


@pytest.mark.parametrize("recorded,asked,same", [
    ("clip-ViT-B-32", "clip-ViT-B-32", True),
    ("clip-ViT-B-32", "clip-ViT-L-14", False),
])
def test_model_names_compare_as_recorded(recorded: str, asked: str, same: bool) -> None:
    assert same_model(recorded, asked) is same


def test_a_relative_model_folder_is_the_same_model_as_its_absolute_path(toy_model: str, monkeypatch) -> None:
    monkeypatch.chdir(Path(toy_model).parent)
    assert same_model(str(Path(toy_model).resolve()), "./toy-clip")


def test_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a usable sentence-transformers or Hugging Face CLIP folder"):
        Embedder(str(tmp_path), "cpu")


def test_a_device_that_is_not_there() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="no CUDA GPU"):
        Embedder("unused", "cuda")


def test_a_separate_text_model_is_recorded_and_used(tmp_path: Path, images: Path, toy_model: str) -> None:
    text_model = tmp_path / "text-model"
    shutil.copytree(toy_model, text_model)
    db = tmp_path / "photos.db"
    run_cli("build", db, images, "--model", toy_model, "--text-model", text_model, "--silent")
    assert f"text_model:  {text_model.resolve()}" in run_cli("info", db)
    searcher = Searcher(db)
    assert searcher.text_model_name == str(text_model.resolve())
    assert len(searcher.search("a red circle", 3)) == 3


def test_querying_with_a_model_of_another_dimension_says_so(shared_catalog: Path, other_dimension_model: Path) -> None:
    output = run_cli("search", shared_catalog, "a red circle", "--text-model", other_dimension_model, expect=1)
    assert "gives 16-dimensional vectors, but this catalog holds 32-dimensional ones" in output


def test_a_text_model_of_another_dimension_is_refused_at_query_time(
    tmp_path: Path, images: Path, toy_model: str, other_dimension_model: Path
) -> None:
    db = tmp_path / "photos.db"
    run_cli("build", db, images, "--model", toy_model, "--text-model", other_dimension_model, "--silent")
    assert "16-dimensional" in run_cli("search", db, "a red circle", expect=1)
    assert run_cli("search", db, "--image", sorted(images.iterdir())[0], "--json", "-k", "1")
