"""``build --engine ray``: the same catalog as a local build, on a local Ray (``pip install '.[ray]'``; CI installs it)."""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.engines.ray import Decode
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import index_path
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.images.toyvideo import write_videos
from datasette_imgsearch.images.toyworld import write_world
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.vectors.index import index_state, read_index

from .conftest import run_cli

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow  # each starts a local Ray: run in CI, not in the minute



@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray for the module, as a small cluster would be: two CPUs, no GPU."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def hostile_folder(folder: Path, world: Path) -> Path:
    """The toy world plus the files a build must record as errors, and an odd name."""
    shutil.copytree(world, folder)
    pictures = sorted(folder.glob("*.jpg"))
    (folder / "not-an-image.jpg").write_bytes(b"this is text, not a JPEG")
    (folder / "truncated.jpg").write_bytes(pictures[0].read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    shutil.copy(pictures[1], folder / "spaced name, ünïcode.jpg")
    return folder


def rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        columns = "id, path, name, folder, format, width, height, size, mtime_ns, hash, thumbnail"
        return conn.execute(f"select {columns} from images order by id").fetchall()
    finally:
        conn.close()


def errors(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("select path, error, message from imgsearch_errors order by path").fetchall()
    finally:
        conn.close()


def vectors(db: Path) -> tuple[np.ndarray, np.ndarray]:
    with Catalog(db) as catalog:
        return catalog.embeddings()


def assert_same_catalog(local: Path, distributed: Path) -> None:
    assert rows(distributed) == rows(local)
    assert errors(distributed) == errors(local)
    local_ids, local_matrix = vectors(local)
    ray_ids, ray_matrix = vectors(distributed)
    assert (ray_ids == local_ids).all()
    assert np.sum(ray_matrix * local_matrix, axis=1).min() >= 0.9999
    with Catalog(distributed) as catalog:
        assert index_state(catalog).fresh
    index = read_index(index_path(distributed))
    assert index.ntotal == len(local_ids)


def options(toy_model: str, engine: str, **more: object) -> BuildOptions:
    return BuildOptions(ModelChoice(model=toy_model), batch_size=16, engine=engine, **more)


def test_a_ray_build_gives_the_catalog_a_local_build_gives(tmp_path: Path, world: Path, toy_model: str) -> None:
    folder = hostile_folder(tmp_path / "images", world)
    write_videos(folder, count=1, seed=3)  # a video's frames travel as one stacked batch and come back apart
    local = build(tmp_path / "local.db", folder, options(toy_model, "local"))
    distributed = build(tmp_path / "ray.db", folder, options(toy_model, "ray"))
    assert distributed.line() == local.line() == "65 images: 62 added, 0 moved, 0 updated, 0 removed, 3 failed, 0 unchanged"
    assert_same_catalog(tmp_path / "local.db", tmp_path / "ray.db")
    assert {error for _, error, _ in errors(tmp_path / "ray.db")} == {"not-an-image", "empty", "corrupt"}


def test_a_ray_update_sends_out_only_new_and_changed_files(tmp_path: Path, world: Path, toy_model: str) -> None:
    folder = hostile_folder(tmp_path / "images", world)
    build(tmp_path / "local.db", folder, options(toy_model, "local"))
    shutil.copy(tmp_path / "local.db", tmp_path / "ray.db")
    pictures = sorted(folder.glob("[a-z]*-*.jpg"))
    (folder / "album").mkdir()
    shutil.move(pictures[2], folder / "album" / pictures[2].name)  # moved: no decoding, same row
    pictures[3].unlink()  # removed
    shutil.copy(pictures[4], folder / "copy.jpg")  # a copy: reuses the stored embedding
    (folder / "not-an-image.jpg").unlink()  # an error that went away
    write_world(tmp_path / "more", count=1, seed=99)
    shutil.copy(next((tmp_path / "more").iterdir()), folder / "new.jpg")  # new pixels: embedded on Ray
    shutil.copy(pictures[6], folder / "truncated.jpg")  # a broken file mended with catalogued bytes
    local = build(tmp_path / "local.db", folder, options(toy_model, "local"))
    distributed = build(tmp_path / "ray.db", folder, options(toy_model, "ray"))
    assert distributed.line() == local.line() == "65 images: 3 added, 1 moved, 0 updated, 1 removed, 1 failed, 59 unchanged"
    assert_same_catalog(tmp_path / "local.db", tmp_path / "ray.db")


def test_an_interrupted_ray_build_leaves_a_consistent_catalog_and_carries_on(
    tmp_path: Path, world: Path, toy_model: str
) -> None:
    folder = hostile_folder(tmp_path / "images", world)

    def stop_after_40(done: int, total: int) -> None:
        if done == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "ray.db", folder, options(toy_model, "ray"), progress=stop_after_40)
    conn = sqlite3.connect(tmp_path / "ray.db")
    assert conn.execute("pragma integrity_check").fetchone() == ("ok",)
    committed = conn.execute("select count(*) from images").fetchone()[0]
    conn.close()
    assert 0 < committed < 61  # whole batches only
    resumed = build(tmp_path / "ray.db", folder, options(toy_model, "ray"))
    assert resumed.unchanged == committed
    build(tmp_path / "local.db", folder, options(toy_model, "local"))
    assert_same_catalog(tmp_path / "local.db", tmp_path / "ray.db")


def test_a_ray_reembed_switches_models_like_a_local_one(tmp_path: Path, world: Path, toy_model: str) -> None:
    folder = hostile_folder(tmp_path / "images", world)
    build(tmp_path / "local.db", folder, options(toy_model, "local"))
    shutil.copy(tmp_path / "local.db", tmp_path / "ray.db")
    build(tmp_path / "local.db", folder, options(toy_model, "local", reembed=True))
    summary = build(tmp_path / "ray.db", folder, options(toy_model, "ray", reembed=True))
    assert summary.updated == 61
    assert_same_catalog(tmp_path / "local.db", tmp_path / "ray.db")


def test_the_command_line_builds_on_ray(tmp_path: Path, world: Path, toy_model: str) -> None:
    output = run_cli("build", tmp_path / "photos.db", world, "--model", toy_model, "--engine", "ray", "--silent")
    assert "60 images: 60 added" in output
    assert "60 added" not in run_cli("build", tmp_path / "photos.db", "--engine", "ray", "--silent")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ray-address", "auto"], "--ray-address and --ray-encoders go with --engine ray"),
        (["--ray-encoders", "2"], "--ray-address and --ray-encoders go with --engine ray"),
        (["--engine", "spark"], "'spark' is not one of 'local', 'ray'"),
    ],
)
def test_ray_options_are_checked(tmp_path: Path, world: Path, toy_model: str, arguments: list[str], message: str) -> None:
    output = run_cli("build", tmp_path / "photos.db", world, "--model", toy_model, *arguments, expect=2)
    assert message in output
    assert not (tmp_path / "photos.db").exists()


def test_without_ray_installed_the_build_says_how_to_get_it(
    tmp_path: Path, world: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    output = run_cli("build", tmp_path / "photos.db", world, "--model", toy_model, "--engine", "ray", expect=1)
    assert "pip install 'datasette-imgsearch[ray]'" in output
    assert not (tmp_path / "photos.db").exists()


def test_a_worker_that_cannot_see_the_image_folder_stops_the_build(tmp_path: Path, toy_model: str) -> None:
    """Rather than recording every file as unreadable (Decode runs on each worker as it starts)."""
    with pytest.raises(CatalogError, match="every worker must see the images at the same path"):
        Decode(toy_model, options(toy_model, "ray"), frozenset(), str(tmp_path / "not-shared"), None)


def test_decode_workers_get_a_clip_models_preprocessing_without_its_weights(world: Path, toy_model: str) -> None:
    import torch
    from PIL import Image

    from datasette_imgsearch.models.cache import load_embedder
    from datasette_imgsearch.models.embedder import Embedder

    embedder = load_embedder(toy_model, "cpu", "fp32")
    sent = pickle.loads(pickle.dumps(embedder.pixels_only()))  # what the driver ships to each decode worker
    assert len(pickle.dumps(sent)) < 10_000  # the toy model's weights alone are 1.5 MB
    decode = Decode(toy_model, options(toy_model, "ray"), frozenset(), str(world), sent)
    assert decode.preprocessor() is sent
    for picture in sorted(world.glob("*.jpg"))[:3]:
        image = Image.open(picture).convert("RGB")
        assert torch.equal(sent.preprocess(image)["pixel_values"], embedder.preprocess(image)["pixel_values"])
    assert sent.shrink_to(256) == embedder.shrink_to(256)
    through_sentence_transformers = Embedder(toy_model, "cpu", "fp32", plain=False)
    assert through_sentence_transformers.pixels_only() is None  # its workers load the model, as before



@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_an_unreachable_cluster_fails_at_once_with_one_line_naming_it(tmp_path: Path, world: Path, toy_model: str,
                                                                       address: str) -> None:
    started = time.monotonic()
    output = run_cli("build", tmp_path / "photos.db", world, "--model", toy_model, "--engine", "ray",
                     "--ray-address", address, "--silent", expect=1)
    assert time.monotonic() - started < 30
    assert f"cannot reach the Ray cluster at {address}" in output and output.count("\n") <= 2
