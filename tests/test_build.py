"""``build``: the catalog it writes, incremental re-runs, bad files, and crash safety."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasette_imgsearch.build.builder import Builder, build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import from_blob, index_path
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.models.cache import ModelCache
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.vectors.index import index_state

from .conftest import run_cli


def rows(db: Path, sql: str = "select * from images order by path") -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def by_path(db: Path) -> dict[str, dict]:
    return {r["path"]: r for r in rows(db)}


def rebuild(db: Path, folder: Path | None, model: str, **options) -> tuple[str, ModelCache]:
    """Build with a model cache of its own: whether it holds the model says whether the run loaded it."""
    models = ModelCache()
    builder = Builder(db, folder, BuildOptions(ModelChoice(model=model), batch_size=8, **options), models=models)
    try:
        return builder.run().line(), models
    finally:
        builder.close()


def test_a_build_writes_one_row_per_image_with_its_facts(catalog: Path, images: Path) -> None:
    stored = by_path(catalog)
    assert len(stored) == 60
    row = stored["red-circle-00000.jpg"] if "red-circle-00000.jpg" in stored else next(iter(stored.values()))
    assert row["name"] == row["path"] and row["folder"] == ""
    assert (row["format"], row["width"], row["height"]) == ("JPEG", 128, 128)
    assert row["size"] == (images / row["path"]).stat().st_size
    assert row["modified"].endswith("+00:00") and len(row["hash"]) == 32
    thumbnail = Image.open(io.BytesIO(row["thumbnail"]))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 256
    vector = from_blob(row["embedding"])
    assert vector.dtype == np.dtype("<f4") and vector.shape == (32,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_the_catalog_records_model_folder_and_a_fresh_index(catalog: Path, images: Path, toy_model: str) -> None:
    opened = Catalog(catalog)
    try:
        assert opened.meta("model") == str(Path(toy_model).resolve())
        assert opened.meta("dimension") == 32
        assert opened.image_folder() == images.resolve()
        assert index_state(opened).fresh
    finally:
        opened.close()
    assert index_path(catalog).exists()


@pytest.mark.slow
def test_the_stored_embedding_matches_the_recipe(catalog: Path, images: Path, toy_model: str) -> None:
    """The recipe: model.encode(Image.open(path)), normalised."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(toy_model, device="cpu")
    for row in rows(catalog)[:5]:
        expected = model.encode(Image.open(images / row["path"]))
        expected = expected / np.linalg.norm(expected)
        assert float(from_blob(row["embedding"]) @ expected) >= 0.995


def test_a_second_run_reads_nothing_and_loads_no_model(catalog: Path, images: Path, toy_model: str) -> None:
    line, models = rebuild(catalog, images, toy_model)
    assert line == "60 images: 0 added, 0 moved, 0 updated, 0 removed, 0 failed, 60 unchanged"
    assert not models.is_loaded(toy_model)


def test_the_folder_may_be_left_out_once_the_catalog_knows_it(catalog: Path, toy_model: str) -> None:
    assert rebuild(catalog, None, toy_model)[0].endswith("60 unchanged")


def test_moved_and_renamed_files_keep_their_row_and_embedding(catalog: Path, images: Path, toy_model: str) -> None:
    before = by_path(catalog)
    names = sorted(before)[:2]
    (images / "album").mkdir()
    shutil.move(images / names[0], images / "album" / names[0])
    shutil.move(images / names[1], images / "renamed.jpg")
    line, models = rebuild(catalog, images, toy_model)
    assert line == "60 images: 0 added, 2 moved, 0 updated, 0 removed, 0 failed, 58 unchanged"
    assert not models.is_loaded(toy_model)
    after = by_path(catalog)
    assert after[f"album/{names[0]}"]["id"] == before[names[0]]["id"]
    assert after[f"album/{names[0]}"]["folder"] == "album"
    assert after["renamed.jpg"]["id"] == before[names[1]]["id"]
    assert after["renamed.jpg"]["embedding"] == before[names[1]]["embedding"]


def test_a_changed_file_is_re_embedded_under_the_same_id(catalog: Path, images: Path, toy_model: str) -> None:
    before = by_path(catalog)
    name = sorted(before)[0]
    Image.open(images / sorted(before)[-1]).save(images / name)  # another picture's pixels
    line, _ = rebuild(catalog, images, toy_model)
    assert "1 updated" in line
    after = by_path(catalog)
    assert after[name]["id"] == before[name]["id"]
    assert after[name]["hash"] != before[name]["hash"]
    assert after[name]["embedding"] != before[name]["embedding"]


def test_a_touched_file_is_unchanged(catalog: Path, images: Path, toy_model: str) -> None:
    name = sorted(by_path(catalog))[0]
    os.utime(images / name, ns=(1, 10**18))
    line, models = rebuild(catalog, images, toy_model)
    assert line.endswith("0 failed, 60 unchanged") and not models.is_loaded(toy_model)
    assert by_path(catalog)[name]["mtime_ns"] == 10**18


def test_removed_files_leave_the_catalog_and_the_index_and_come_back_with_their_id(
    catalog: Path, images: Path, toy_model: str
) -> None:
    before = by_path(catalog)
    name = sorted(before)[3]
    kept = images.parent / "kept.jpg"
    shutil.move(images / name, kept)
    assert rebuild(catalog, images, toy_model)[0] == "60 images: 0 added, 0 moved, 0 updated, 1 removed, 0 failed, 59 unchanged"
    assert name not in by_path(catalog)
    assert [r["path"] for r in rows(catalog, "select path from imgsearch_removed")] == [name]
    output = json.loads(run_cli("search", catalog, "row:" + str(sorted(before.values(), key=lambda r: r["id"])[0]["id"]),
                                "-k", "100", "--json"))
    assert before[name]["id"] not in [hit["id"] for hit in output]
    shutil.move(kept, images / "back again.jpg")
    line, models = rebuild(catalog, images, toy_model)
    assert line == "60 images: 1 added, 0 moved, 0 updated, 0 removed, 0 failed, 59 unchanged"
    assert not models.is_loaded(toy_model)
    assert by_path(catalog)["back again.jpg"]["id"] == before[name]["id"]


def test_a_copy_reuses_the_embedding_without_the_model(catalog: Path, images: Path, toy_model: str) -> None:
    name = sorted(by_path(catalog))[0]
    shutil.copy(images / name, images / "copy.jpg")
    line, models = rebuild(catalog, images, toy_model)
    assert line.startswith("61 images: 1 added") and not models.is_loaded(toy_model)
    stored = by_path(catalog)
    assert stored["copy.jpg"]["embedding"] == stored[name]["embedding"]
    assert stored["copy.jpg"]["id"] != stored[name]["id"]


def bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_FILES = {
    "zero.jpg": (lambda good: b"", "empty"),
    "notes.jpg": (lambda good: b"meeting notes, not a picture\n", "not-an-image"),
    "truncated.jpg": (lambda good: good[: len(good) // 3], "corrupt"),
    # Fixed bytes: one random tail in 250 makes Pillow read a chunk past the end ("corrupt" rather than this).
    "corrupt.png": (lambda good: b"\x89PNG\r\n\x1a\n" + random.Random(181).randbytes(200), "not-an-image"),
    "bomb.png": (lambda good: bomb(), "too-large"),
}


def test_bad_files_become_error_rows_and_the_rest_is_catalogued(images: Path, tmp_path: Path, toy_model: str) -> None:
    good = next(images.iterdir()).read_bytes()
    for name, (make, _) in BAD_FILES.items():
        (images / name).write_bytes(make(good))
    os.symlink(images / "loop.jpg", images / "loop.jpg")
    (images / os.fsdecode(b"caf\xe9.jpg")).write_bytes(good)
    db = tmp_path / "photos.db"
    output = run_cli("build", db, images, "--model", toy_model, "--max-megapixels", "50", "--silent")
    assert output.strip() == "67 images: 60 added, 0 moved, 0 updated, 0 removed, 7 failed, 0 unchanged"
    errors = {r["path"]: r for r in rows(db, "select * from imgsearch_errors")}
    assert {name: errors[name]["error"] for name in BAD_FILES} == {name: kind for name, (_, kind) in BAD_FILES.items()}
    assert errors["loop.jpg"]["error"] == "unreadable"
    assert errors["caf\\xe9.jpg"]["error"] == "bad-name"
    assert "81 megapixels, above the 50 megapixel cap" in errors["bomb.png"]["message"]
    assert all(r["message"] and r["at"] for r in errors.values())

    (images / "notes.jpg").write_bytes(good[:-1] + b"\xd9")  # fixed: a real picture now
    os.unlink(images / "zero.jpg")
    output = run_cli("build", db, "--model", toy_model, "--max-megapixels", "50", "--silent")
    assert output.strip().startswith("66 images: 1 added")
    remaining = {r["path"] for r in rows(db, "select path from imgsearch_errors")}
    assert "notes.jpg" not in remaining and "zero.jpg" not in remaining and "truncated.jpg" in remaining


def test_a_catalogued_file_that_turns_corrupt_leaves_the_live_catalog(catalog: Path, images: Path, toy_model: str) -> None:
    name = sorted(by_path(catalog))[0]
    (images / name).write_bytes(b"garbage")
    line, _ = rebuild(catalog, images, toy_model)
    assert "1 failed" in line
    assert name not in by_path(catalog)
    assert rows(catalog, "select error from imgsearch_errors")[0]["error"] == "not-an-image"


@pytest.mark.parametrize("name", ["with space.jpg", "ünïcödé 写真.jpg", "quote's.jpg", "semi;colon.jpg", "sub dir/x y.png"])
def test_odd_file_names_are_catalogued(tmp_path: Path, toy_model: str, name: str) -> None:
    folder = tmp_path / "images"
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 20, 20)).save(folder / name)
    db = tmp_path / "odd.db"
    assert run_cli("build", db, folder, "--model", toy_model, "--silent").strip().startswith("1 images: 1 added")
    assert [r["path"] for r in rows(db)] == [name]


def test_an_exif_rotated_photo_is_stored_upright(tmp_path: Path, toy_model: str) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (300, 100), (20, 20, 200)).save(folder / "rotated.jpg", exif=exif)
    db = tmp_path / "rotated.db"
    build(db, folder, BuildOptions(ModelChoice(model=toy_model)))
    row = rows(db)[0]
    assert (row["width"], row["height"]) == (100, 300)
    assert Image.open(io.BytesIO(row["thumbnail"])).size == (85, 256)


def test_no_thumbnails(tmp_path: Path, images: Path, toy_model: str) -> None:
    db = tmp_path / "bare.db"
    run_cli("build", db, images, "--model", toy_model, "--no-thumbnails", "--silent")
    assert {r["thumbnail"] for r in rows(db)} == {None}


def test_another_model_is_refused_with_a_way_out(catalog: Path, images: Path, tmp_path: Path, toy_model: str) -> None:
    other = tmp_path / "other-model"
    shutil.copytree(toy_model, other)
    output = run_cli("build", catalog, images, "--model", other, expect=1)
    assert f"was built with the model '{Path(toy_model).resolve()}'" in output
    assert "--reembed" in output and "Traceback" not in output
    before = by_path(catalog)
    output = run_cli("build", catalog, images, "--model", other, "--reembed", "--silent")
    assert output.strip() == "60 images: 0 added, 0 moved, 60 updated, 0 removed, 0 failed, 0 unchanged"
    after = by_path(catalog)
    assert {p: r["id"] for p, r in after.items()} == {p: r["id"] for p, r in before.items()}
    assert Catalog(catalog).meta("model") == str(other.resolve())


@pytest.mark.parametrize("model,message", [
    ("no-such-model-anywhere", "cannot load the model 'no-such-model-anywhere'"),
    ("./no/such/folder", "no model folder at no/such/folder"),
])
def test_a_missing_model_is_one_readable_line(tmp_path: Path, images: Path, model: str, message: str) -> None:
    output = run_cli("build", tmp_path / "x.db", images, "--model", model, "--silent", expect=1)
    assert message in output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1


def test_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    output = run_cli("build", tmp_path / "x.db", tmp_path / "nowhere", expect=1)
    assert "does not exist" in output
    (tmp_path / "file.jpg").write_bytes(b"x")
    assert "is a file" in run_cli("build", tmp_path / "x.db", tmp_path / "file.jpg", expect=2)


def test_moving_the_catalog_and_its_folder_together_keeps_everything(catalog: Path, tmp_path: Path, toy_model: str) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in (catalog, index_path(catalog)):
        shutil.move(path, moved / path.name)
    shutil.move(tmp_path / "images", moved / "images")
    line, _ = rebuild(moved / "photos.db", None, toy_model)
    assert line.endswith("60 unchanged")
    assert Catalog(moved / "photos.db").image_folder() == (moved / "images").resolve()


@pytest.mark.slow
def test_a_killed_build_leaves_a_consistent_catalog_and_the_next_run_carries_on(
    tmp_path: Path, toy_model: str
) -> None:
    from datasette_imgsearch.images.toyworld import write_world

    folder = tmp_path / "many"
    write_world(folder, count=400, seed=3)
    db = tmp_path / "killed.db"
    command = [sys.executable, "-m", "datasette_imgsearch", "build", str(db), str(folder), "--model", toy_model,
               "--batch-size", "8", "--workers", "1", "--silent"]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:  # closed at once: an unclosed connection lives until garbage collection and holds the file
            with contextlib.closing(sqlite3.connect(db)) as poll:
                committed = poll.execute("select count(*) from images").fetchone()[0]
        except sqlite3.Error:
            committed = 0
        if committed >= 16:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    conn = sqlite3.connect(db)
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    partial = conn.execute("select count(*) from images").fetchone()[0]
    conn.close()
    assert 16 <= partial < 400, "the build finished before it could be killed; give it more files"
    output = run_cli("build", db, folder, "--model", toy_model, "--silent")
    assert output.strip() == f"400 images: {400 - partial} added, 0 moved, 0 updated, 0 removed, 0 failed, {partial} unchanged"
    assert rows(db, "select count(distinct path) as n from images")[0]["n"] == 400


def test_info_reports_counts_model_and_index(catalog: Path, toy_model: str) -> None:
    output = run_cli("info", catalog)
    assert "images:      60" in output and "errors:      0" in output
    assert str(Path(toy_model).resolve()) in output and "fresh" in output
    facts = json.loads(run_cli("info", catalog, "--json"))
    assert facts["images"] == 60 and facts["index_fresh"] is True


def test_a_database_that_is_not_a_catalog(tmp_path: Path) -> None:
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("create table t (x)").connection.close()
    assert "is not an imgsearch catalog" in run_cli("info", plain, expect=1)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    assert "not a usable SQLite database" in run_cli("info", garbage, expect=1)


def test_catalog_error_is_raised_by_the_library_too(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="name the image folder"):
        build(tmp_path / "new.db", None)


@pytest.mark.datasette
def test_the_same_commands_run_as_datasette_imgsearch(catalog: Path) -> None:
    from click.testing import CliRunner
    from datasette.cli import cli as datasette_cli

    result = CliRunner().invoke(datasette_cli, ["imgsearch", "info", str(catalog)])
    assert result.exit_code == 0, result.output
    assert "images:      60" in result.output


def test_toy_world_writes_labelled_pictures(tmp_path: Path) -> None:
    from datasette_imgsearch.images.toyworld import COLOURS, SHAPES, label_of

    assert run_cli("toy-world", tmp_path / "shapes", "--count", "24", "--seed", "3").strip().startswith("wrote 24 images")
    files = sorted((tmp_path / "shapes").iterdir())
    assert len(files) == 24
    assert {label_of(f) for f in files} == {(c, s) for c in COLOURS for s in SHAPES}
    assert Image.open(files[0]).size == (128, 128)


def test_an_interrupted_reembed_must_be_finished_with_its_model(
    catalog: Path, images: Path, toy_model: str, other_dimension_model: Path, tmp_path: Path
) -> None:
    from datasette_imgsearch.models.names import model_key

    opened = Catalog(catalog, write=True)
    opened.set_meta(reembedding=model_key(str(other_dimension_model)))  # as a run killed before staging leaves it
    opened.close()
    third = tmp_path / "third-model"
    shutil.copytree(toy_model, third)
    assert "an interrupted --reembed" in run_cli("build", catalog, "--model", third, expect=1)
    output = run_cli("build", catalog, "--silent")  # carries on with the half-done model
    assert output.strip() == "60 images: 0 added, 0 moved, 60 updated, 0 removed, 0 failed, 0 unchanged"
    assert {len(from_blob(r["embedding"])) for r in rows(catalog)} == {16}
    finished = Catalog(catalog)
    assert finished.meta("model") == model_key(str(other_dimension_model)) and finished.meta("dimension") == 16
    assert finished.meta("reembedding") is None


def test_heic_photos_are_catalogued_with_the_heif_extra(tmp_path: Path, toy_model: str) -> None:
    pillow_heif = pytest.importorskip("pillow_heif", reason="the optional 'heif' extra is installed in CI")
    from datasette_imgsearch.images.toyworld import draw_image

    pillow_heif.register_heif_opener()
    folder = tmp_path / "phone"
    folder.mkdir()
    import random

    draw_image("red", "circle", random.Random(1)).save(folder / "IMG_0001.HEIC")
    db = tmp_path / "photos.db"
    assert run_cli("build", db, folder, "--model", toy_model, "--silent").startswith("1 images: 1 added")
    row = rows(db)[0]
    assert row["path"] == "IMG_0001.HEIC" and row["format"] == "HEIF" and row["thumbnail"][:2] == b"\xff\xd8"
    hits = json.loads(run_cli("search", db, "--image", folder / "IMG_0001.HEIC", "--json"))
    assert hits[0]["path"] == "IMG_0001.HEIC" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_fetch_model_saves_a_folder_that_builds_the_same_vectors(
    tmp_path: Path, images: Path, toy_model: str, catalog: Path
) -> None:
    saved = tmp_path / "saved-model"
    assert "32-dimensional" in run_cli("fetch-model", toy_model, "--save-to", saved)
    db = tmp_path / "again.db"
    run_cli("build", db, images, "--model", saved, "--silent")
    first, second = by_path(catalog), by_path(db)
    assert all(np.allclose(from_blob(first[p]["embedding"]), from_blob(second[p]["embedding"]), atol=1e-6) for p in first)


def test_fetch_model_offline_says_so_in_one_line() -> None:
    output = run_cli("fetch-model", "clip-ViT-B-32", expect=1)
    assert "not in the local cache and the Hugging Face hub cannot be reached" in output
    assert len(output.strip().splitlines()) == 1
