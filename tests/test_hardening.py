"""Hostile and unlucky input: every door answers with a clear message, never a 500, and loses nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from datasette.app import Datasette
from PIL import Image
from sqlite_utils.utils import sqlite3 as sqlite_utils_sqlite3  # pysqlite3 where installed

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions, Interrupted
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.changes import Upsert
from datasette_imgsearch.catalog.schema import catalog_files, to_blob
from datasette_imgsearch.catalog.writing import exclusive, lock_path
from datasette_imgsearch.cli import interrupted_message
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.models.names import model_key
from datasette_imgsearch.search.registry import searcher_for
from datasette_imgsearch.search.searcher import Searcher

from .conftest import run_cli
from .test_plugin import SEARCH, make_datasette, sql, started


@pytest_asyncio.fixture
async def ds(shared_catalog: Path) -> Datasette:
    return await started(make_datasette(shared_catalog), shared_catalog)


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), "white").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


# Requests ----------------------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path,params,status,message",
    [
        (SEARCH + ".json", {"q": "row:9223372036854775808"}, 400, "row ids go up to 9223372036854775807"),
        (SEARCH + ".json", {"q": "1" + "0" * 40 + ":red"}, 400, "weights go up to 1000"),
        (SEARCH + ".json", {"q": "red", "min_score": "nan"}, 400, "min_score must be a number from -1 to 1"),
        (SEARCH + ".json", {"q": "red", "min_score": "inf"}, 400, "min_score must be a number from -1 to 1"),
        (SEARCH + ".json", {"q": "red", "min_score": "7"}, 400, "min_score must be between -1 and 1"),
        (SEARCH + ".json", {"q": "red", "k": "1e999"}, 400, "k must be"),
        (SEARCH + ".json", {"q": "red\x00circle"}, 400, "NUL"),
        (SEARCH, {"q": "row:9223372036854775808"}, 400, "row ids go up to"),
        (SEARCH + "/thumbnail/99999999999999999999999", {}, 404, "no such row"),
        (SEARCH + "/original/99999999999999999999999", {}, 404, "no such row"),
    ],
)
async def test_bad_requests_get_a_status_and_a_message(ds: Datasette, path: str, params: dict, status: int, message: str) -> None:
    response = await ds.client.get(path, params=params)
    assert response.status_code == status, response.text
    assert message in response.text


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "query,params,expected",
    [
        ("select imgsearch('a red circle', 3, :m) as h", {"m": "0.2"}, "ok"),  # Datasette passes named parameters as text
        ("select imgsearch('a red circle', :k) as h", {"k": "3"}, "ok"),
        ("select imgsearch('a red circle', 9e999) as h", {}, "imgsearch(): k must be a whole number of results from 1 to 1000"),
        ("select imgsearch('a red circle', 3, 'nan') as h", {}, "imgsearch(): min_score must be a number from -1 to 1"),
        ("select imgsearch('a', 1, 0.1, '[1]', 5) as h", {}, "imgsearch(): takes 1 to 4 arguments"),
        ("select imgsearch('row:99999999999999999999') as h", {}, "imgsearch(): row:99999999999999999999 is not in the catalog"),
    ],
)
async def test_sql_arguments_are_checked_with_a_readable_error(ds: Datasette, query: str, params: dict, expected: str) -> None:
    response = await sql(ds, query, **params)
    if expected == "ok":
        assert response.status_code == 200, response.text
        assert len(json.loads(response.json()[0]["h"])) == 3
    else:
        assert response.status_code == 400 and expected in response.text


@pytest.mark.asyncio
@pytest.mark.parametrize("immutable", [False, True], ids=["datasette", "datasette -i"])
async def test_sql_errors_are_readable_however_the_catalog_is_served(shared_catalog: Path, immutable: bool) -> None:
    """The catalog's connections carry their handle whether Datasette opens the file read-write or as
    immutable (a ``file:…?immutable=1`` URI): the functions' errors say what is wrong either way."""
    served = [str(shared_catalog)]
    ds = Datasette([] if immutable else served, immutables=served if immutable else [])
    response = await sql(ds, "select imgsearch('a red circle', 0) as h")
    assert response.status_code == 400 and "imgsearch(): k must be between 1 and 1000, not 0" in response.text


# Uploads -----------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_an_upload_that_would_decode_to_too_many_pixels_is_refused_before_decoding(ds: Datasette) -> None:
    huge = png(9990, 9990, "L")  # a few hundred KB that would decode to 100 megapixels
    assert len(huge) < 2_000_000
    response = await ds.client.post(SEARCH + ".json", files={"image": ("huge.png", huge, "image/png")})
    assert response.status_code == 400
    assert "above the 16 megapixel limit for uploads" in response.json()["error"]


@pytest.mark.asyncio
async def test_a_large_jpeg_upload_is_decoded_reduced_and_accepted(ds: Datasette) -> None:
    response = await ds.client.post(SEARCH + ".json", files={"image": ("big.jpg", jpeg(6000, 4000), "image/jpeg")},
                                    data={"k": "3"})
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 3


@pytest.mark.asyncio
async def test_a_form_with_too_many_parts_is_refused(ds: Datasette) -> None:
    boundary = "b0undary"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(200_000))
    body += f"--{boundary}--\r\n"
    response = await ds.client.post(SEARCH + ".json", content=body.encode(),
                                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 400 and "more than 16 parts" in response.json()["error"]


@pytest.mark.asyncio
async def test_a_multipart_boundary_longer_than_the_standard_allows_is_refused(ds: Datasette) -> None:
    boundary = "x" * 300
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="q"\r\n\r\nred\r\n--{boundary}--\r\n'.encode()
    response = await ds.client.post(SEARCH + ".json", content=body,
                                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 400 and "boundary is longer than 70" in response.json()["error"]


# One folder rule -----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_symlinked_external_folder_is_catalogued_and_served_alike(tmp_path: Path, world: Path, toy_model: str) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    external = tmp_path / "external-drive"
    shutil.copytree(world, external)
    (pictures / "drive").symlink_to(external, target_is_directory=True)
    db = tmp_path / "photos.db"
    build(db, pictures, BuildOptions(ModelChoice(model=toy_model), batch_size=16))
    conn = sqlite3.connect(db)
    row_id, path = conn.execute("select id, path from images order by id limit 1").fetchone()
    conn.close()
    assert path.startswith("drive/")
    ds = Datasette([str(db)])
    original = await ds.client.get(f"{SEARCH}/original/{row_id}")
    assert original.status_code == 200 and original.content == (external / path.removeprefix("drive/")).read_bytes()
    assert (await ds.client.get(f"{SEARCH}/thumbnail/{row_id}")).status_code == 200


# Builds -------------------------------------------------------------------------------------------
def test_a_second_build_on_the_same_catalog_is_told_another_is_writing(catalog: Path, images: Path, toy_model: str) -> None:
    with Catalog(catalog, write=True) as held, exclusive(held):
        output = run_cli("build", catalog, images, "--model", toy_model, "--silent", expect=1)
    assert "another build is writing" in output and "Traceback" not in output


def test_a_build_holds_its_lock_file_only_while_it_writes(catalog: Path, images: Path, toy_model: str) -> None:
    run_cli("build", catalog, images, "--model", toy_model, "--silent")
    with Catalog(catalog, write=True) as held:
        path = lock_path(held)
        assert not path.exists()  # none left behind by the build
        with exclusive(held):
            assert path.exists()
            with pytest.raises(CatalogError, match="another build is writing"), exclusive(held):
                pass
        assert not path.exists()
        with exclusive(held):  # and the next writer takes it again
            assert path.exists()


def test_an_interrupted_first_build_remembers_its_model_dimension_and_folder(
    tmp_path: Path, images: Path, toy_model: str, other_dimension_model: Path
) -> None:
    db = tmp_path / "photos.db"

    def interrupt(done: int, total: int) -> None:
        if done == 40:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as interrupted:
        build(db, images, BuildOptions(ModelChoice(model=toy_model), batch_size=8, workers=1), progress=interrupt)
    assert interrupted.value.batches >= 1  # what the command line reports as kept
    assert "batch" in interrupted_message(interrupted.value.batches) and "kept" in interrupted_message(2)
    assert "before anything was committed" in interrupted_message(0)
    with Catalog(db) as opened:
        assert 8 <= opened.count() < 60
        assert opened.meta("model") == model_key(toy_model) and opened.meta("dimension") == 32
        assert opened.image_folder() == images.resolve()
    refused = run_cli("build", db, images, "--model", other_dimension_model, "--silent", expect=1)
    assert "was built with the model" in refused
    assert run_cli("build", db, "--silent").startswith("60 images:")  # the folder and the model come from the catalog
    assert {len(v) for v in Searcher(db).store.current().base.matrix} == {32}


def test_no_write_path_can_store_a_vector_of_another_length(catalog: Path) -> None:
    with Catalog(catalog, write=True) as opened:
        with pytest.raises(sqlite_utils_sqlite3.IntegrityError, match="another length than the catalog's dimension"):
            opened.write([Upsert({"embedding": to_blob(np.ones(16))}, 1)])
    conn = sqlite3.connect(catalog)  # any other program writing the file
    with pytest.raises(sqlite3.IntegrityError, match="another length"):
        conn.execute("update images set embedding = zeroblob(8) where id = 2")
    with pytest.raises(sqlite3.IntegrityError, match="another length"):
        conn.execute("insert into images (path, name, folder, size, modified, mtime_ns, hash, embedding) "
                     "values ('x.jpg', 'x.jpg', '', 1, '', 0, 'h', zeroblob(12))")
    conn.close()


@pytest.mark.parametrize("arguments,message", [
    (["new.db"], "name the image folder"),
    (["new.db", "no-such-folder"], "does not exist"),
])
def test_a_first_build_that_fails_leaves_no_file(tmp_path: Path, toy_model: str, arguments: list[str], message: str) -> None:
    os.chdir(tmp_path)
    assert message in run_cli("build", *arguments, "--model", toy_model, expect=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_offline_the_default_model_fails_fast_with_one_message_and_no_file(tmp_path: Path, images: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    environment["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: as if offline
    environment["HF_HOME"] = str(tmp_path / "empty-cache")
    result = subprocess.run([sys.executable, "-m", "datasette_imgsearch", "build", str(tmp_path / "photos.db"), str(images)],
                            capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "not in the local cache and the Hugging Face hub cannot be reached" in lines[0], lines
    assert not any(path.exists() for path in catalog_files(tmp_path / "photos.db"))


# Re-embedding ---------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_reembed_keeps_the_catalog_searchable_and_switches_in_one_go(
    catalog: Path, images: Path, other_dimension_model: Path
) -> None:
    ds = Datasette([str(catalog)])
    await ds.invoke_startup()
    ids_before = {r["id"] for r in (await sql(ds, "select id from images")).json()}

    def interrupt(done: int, total: int) -> None:
        if done == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(catalog, images, BuildOptions(ModelChoice(model=str(other_dimension_model)), reembed=True, batch_size=8, workers=1),
              progress=interrupt)
    with Catalog(catalog) as opened:
        assert opened.meta("dimension") == 32 and 8 <= len(opened.reembedded_ids()) < 60
    during = await ds.client.get(SEARCH + ".json", params={"q": "a red circle", "k": 5})
    assert during.status_code == 200 and during.json()["count"] == 5  # still answered by the old model
    assert searcher_for(catalog).store.current().dimension == 32

    assert run_cli("build", catalog, "--silent").startswith("60 images: 0 added, 0 moved, 60 updated")  # resumes
    with Catalog(catalog) as opened:
        assert opened.meta("model") == model_key(str(other_dimension_model)) and opened.meta("dimension") == 16
        assert opened.reembedded_ids() == set() and opened.meta("reembedding") is None
    after = await ds.client.get(SEARCH + ".json", params={"q": "a red circle", "k": 5})
    assert after.status_code == 200 and after.json()["count"] == 5  # the running server switched models
    assert searcher_for(catalog).store.current().dimension == 16
    assert {r["id"] for r in (await sql(ds, "select id from images")).json()} == ids_before


# Who sees what ----------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_database_with_an_unrelated_images_table_gets_no_search(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    conn = sqlite3.connect(db)
    conn.execute("create table images (id integer primary key, path text, thumbnail blob)")
    conn.execute("insert into images (path, thumbnail) values ('a.jpg', x'ffd8ffe0')")
    conn.commit()
    conn.close()
    ds = Datasette([str(db)])
    page = await ds.client.get("/shop/images")
    assert page.status_code == 200 and "Search images by text or example" not in page.text
    assert "/-/imgsearch" not in page.text
    assert (await ds.client.get("/shop/images/-/imgsearch")).status_code == 404


def test_a_catalog_from_another_tool_is_never_written_into(tmp_path: Path, images: Path, toy_model: str) -> None:
    db = tmp_path / "mine.db"
    conn = sqlite3.connect(db)
    conn.execute("create table notes (x)")
    conn.commit()
    conn.close()
    output = run_cli("build", db, images, "--model", toy_model, "--silent", expect=1)
    assert "is not an imgsearch catalog" in output
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master where type = 'table'")}
    assert tables == {"notes"}


def test_the_library_raises_catalog_errors_for_those_too(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        Catalog(tmp_path / "nothing.db")
