"""Catalogs on read-only storage, as `datasette publish`, `datasette package` and most hosts serve them.

As root, ``chmod`` proves nothing, so the catalog, its index and its images are put under a read-only
bind mount in a private mount namespace (``unshare -m``), and this file's ``__main__`` probe runs
there: Datasette serving the catalog plain and immutable (``-i``), and the CLI's ``info`` and
``search``. The test skips, saying why, where a mount namespace cannot be made.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.models.choice import ModelChoice

HERE = Path(__file__).resolve()

pytestmark = pytest.mark.slow  # a real read-only mount: run in CI, not in the minute



def read_only_mount_available(folder: Path) -> str | None:
    """None if a read-only bind mount of ``folder`` can be made here, else why not."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "unshare or mount is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' && ! touch '{folder}/probe'"],
        capture_output=True, text=True,
    )
    return None if probe.returncode == 0 else f"no read-only bind mount here: {probe.stderr.strip()[:200]}"


@pytest.fixture
def read_only_catalog(tmp_path: Path, images: Path, toy_model: str) -> Path:
    db = tmp_path / "photos.db"
    build(db, images, BuildOptions(ModelChoice(model=toy_model), batch_size=16))
    why = read_only_mount_available(tmp_path)
    if why:
        pytest.skip(why)
    return db


def test_a_finished_build_leaves_a_catalog_that_read_only_readers_can_open(read_only_catalog: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(read_only_catalog)
    assert conn.execute("pragma journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert {p.name for p in read_only_catalog.parent.iterdir()} == {"photos.db", "photos.db.faiss", "images"}


def test_plugin_and_cli_work_on_really_read_only_storage(read_only_catalog: Path, toy_model: str) -> None:
    folder = read_only_catalog.parent
    before = sorted(p.name for p in folder.iterdir())
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' && "
         f"'{sys.executable}' '{HERE}' '{read_only_catalog}'"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["storage"] == "read-only"
    for mode in ("plain", "immutable"):
        assert report[mode] == {"page": 200, "json": 200, "json_results": 5, "sql": 200, "thumbnail": 200, "original": 200}, mode
    assert report["cli_info"] == 0 and report["cli_search"] == 0, report
    assert sorted(p.name for p in folder.iterdir()) == before


async def _probe_datasette(db: Path, immutable: bool) -> dict[str, int]:
    from datasette.app import Datasette

    from datasette_imgsearch.search.registry import searcher_for

    ds = Datasette([] if immutable else [str(db)], immutables=[str(db)] if immutable else [])
    await ds.invoke_startup()
    searcher_for(db, immutable=immutable).wait_until_loaded(120)
    base = "/photos/images/-/imgsearch"
    found = await ds.client.get(base + ".json", params={"q": "a red circle", "k": 5})
    sql = await ds.client.get("/photos.json", params={"sql": "select imgsearch('a red circle', 5) as h", "_shape": "array"},
                              follow_redirects=True)
    first = found.json()["results"][0]["id"] if found.status_code == 200 else 1
    return {
        "page": (await ds.client.get(base, params={"q": "a red circle"})).status_code,
        "json": found.status_code,
        "json_results": len(found.json().get("results", [])),
        "sql": sql.status_code,
        "thumbnail": (await ds.client.get(f"{base}/thumbnail/{first}")).status_code,
        "original": (await ds.client.get(f"{base}/original/{first}")).status_code,
    }


def _probe(db: Path) -> dict[str, object]:
    """Runs inside the read-only mount namespace."""
    from click.testing import CliRunner

    from datasette_imgsearch.cli import cli

    try:
        (db.parent / "write-probe").touch()
        storage = "writable"
    except OSError:
        storage = "read-only"
    runner = CliRunner()
    return {
        "storage": storage,
        "plain": asyncio.run(_probe_datasette(db, immutable=False)),
        "immutable": asyncio.run(_probe_datasette(db, immutable=True)),
        "cli_info": runner.invoke(cli, ["info", str(db)]).exit_code,
        "cli_search": runner.invoke(cli, ["search", str(db), "a red circle"]).exit_code,
    }


if __name__ == "__main__":
    print(json.dumps(_probe(Path(sys.argv[1]))))
