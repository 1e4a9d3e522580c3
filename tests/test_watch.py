"""``build --watch``: the catalog follows its folder while files arrive, move, grow and leave."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from datasette_imgsearch.build.options import BuildOptions, Summary
from datasette_imgsearch.build.watch import RelevantChanges, WatchTiming, wait_until_still, watch
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.images.toyworld import write_world
from datasette_imgsearch.models.choice import ModelChoice
from tests.conftest import run_cli

QUICK = WatchTiming(gather_ms=400, settle_seconds=0.4, settle_limit_seconds=20)


def eventually(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the catalog did not catch up with the folder"
        time.sleep(0.2)


def rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select path, id from images"))


class Watcher:
    """``watch`` on a thread, with the summaries of its passes and whatever it raised."""

    def __init__(self, db: Path, folder: Path, toy_model: str) -> None:
        self.stop = threading.Event()
        self.passes: list[Summary] = []
        self.raised: BaseException | None = None
        options = BuildOptions(ModelChoice(model=toy_model), batch_size=16, ocr=False)
        self.thread = threading.Thread(target=self._run, args=(db, folder.resolve(), options), daemon=True)
        self.thread.start()
        time.sleep(0.5)  # the watch is set up before the test changes anything

    def _run(self, db: Path, folder: Path, options: BuildOptions) -> None:
        try:
            watch(db, folder, options, self.passes.append, self.stop, QUICK)
        except BaseException as error:  # noqa: B036 - the test reads it
            self.raised = error

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the watch did not stop"


@pytest.fixture
def watcher(catalog: Path, images: Path, toy_model: str):
    running = Watcher(catalog, images, toy_model)
    yield running
    running.close()


def test_new_moved_and_removed_files_reach_the_catalog_with_their_ids(
    watcher: Watcher, catalog: Path, images: Path, tmp_path: Path
) -> None:
    before = rows(catalog)
    write_world(tmp_path / "more", count=3, seed=99)
    for picture in (tmp_path / "more").glob("*.jpg"):
        shutil.copy(picture, images / f"new-{picture.name}")
    eventually(lambda: len(rows(catalog)) == len(before) + 3)

    moved = sorted(before)[0]
    (images / "album").mkdir()
    os.rename(images / moved, images / "album" / "moved.jpg")
    eventually(lambda: "album/moved.jpg" in rows(catalog))
    assert rows(catalog)["album/moved.jpg"] == before[moved]
    assert moved not in rows(catalog)

    shutil.rmtree(images / "album")
    eventually(lambda: "album/moved.jpg" not in rows(catalog))
    assert watcher.raised is None


def test_an_import_of_500_files_is_a_few_passes_and_a_handful_of_commits(
    watcher: Watcher, catalog: Path, images: Path, tmp_path: Path
) -> None:
    write_world(tmp_path / "burst", count=500, seed=5, size=64)
    shutil.copytree(tmp_path / "burst", images / "burst")
    eventually(lambda: sum(summary.added for summary in watcher.passes) == 500, 120)
    assert sum(path.startswith("burst/") for path in rows(catalog)) == 500
    assert len(watcher.passes) <= 3
    assert sum(summary.commits for summary in watcher.passes) <= 6  # 16 at the build's default of 32 a batch


@pytest.mark.datasette
@pytest.mark.asyncio
async def test_a_running_datasette_finds_what_the_watch_adds_within_seconds(
    watcher: Watcher, catalog: Path, images: Path, tmp_path: Path
) -> None:
    from datasette.app import Datasette

    ds = Datasette([str(catalog)])
    page = f"/{catalog.stem}/images/-/imgsearch.json"

    async def found() -> set[str]:
        response = await ds.client.get(page, params={"q": "something blue", "k": 100, "collapse": 0})
        return {row["path"] for row in response.json()["results"]}

    assert not any(path.startswith("new-") for path in await found())  # the searcher has loaded the catalog
    write_world(tmp_path / "more", count=4, seed=41)
    for picture in (tmp_path / "more").glob("*.jpg"):
        shutil.copy(picture, images / f"new-{picture.name}")
    deadline = time.monotonic() + 60
    while not sum(path.startswith("new-") for path in await found()) == 4:
        assert time.monotonic() < deadline, "the server did not catch up with the watch"
        await asyncio.sleep(0.5)


def test_a_file_still_being_written_is_read_once_it_is_whole(
    watcher: Watcher, catalog: Path, images: Path, tmp_path: Path
) -> None:
    write_world(tmp_path / "slow", count=1, seed=3)
    data = next((tmp_path / "slow").glob("*.jpg")).read_bytes()
    with open(images / "slow.jpg", "wb") as growing:
        for start in range(0, len(data), max(1, len(data) // 8)):
            growing.write(data[start:start + max(1, len(data) // 8)])
            growing.flush()
            time.sleep(0.2)  # shorter than the settle time: the file is still moving
    eventually(lambda: "slow.jpg" in rows(catalog))
    assert all(summary.failed == 0 for summary in watcher.passes)
    with sqlite3.connect(catalog) as conn:
        assert conn.execute("select hash from images where path = 'slow.jpg'").fetchone()[0]
        assert conn.execute("select count(*) from imgsearch_errors").fetchone()[0] == 0


def test_a_folder_that_goes_away_stops_the_watch_with_a_message(catalog: Path, images: Path, toy_model: str) -> None:
    running = Watcher(catalog, images, toy_model)
    shutil.rmtree(images)
    running.thread.join(30)
    assert isinstance(running.raised, CatalogError)
    assert "is gone (the catalog keeps its rows)" in str(running.raised)
    assert len(rows(catalog)) == 60


@pytest.mark.parametrize("relative,relevant", [
    ("new.jpg", True),
    ("Sub Folder/ünï 写真.PNG", True),
    ("a-folder-that-went", True),
    ("notes.txt", False),
    (".hidden/a.jpg", False),
    ("album/.partial.jpg", False),
    ("photos.db", False),
    ("photos.db-wal", False),
    ("photos.db.faiss", False),
])
def test_which_changes_start_a_pass(tmp_path: Path, relative: str, relevant: bool) -> None:
    folder = tmp_path.resolve()
    assert RelevantChanges(folder, folder / "photos.db")(None, str(folder / relative)) is relevant


def test_waiting_for_a_file_to_keep_still(tmp_path: Path) -> None:
    growing = tmp_path / "growing.jpg"
    growing.write_bytes(b"x")

    def grow() -> None:
        for _ in range(6):
            time.sleep(0.15)
            with open(growing, "ab") as file:
                file.write(b"x" * 100)

    writer = threading.Thread(target=grow)
    writer.start()
    wait_until_still([str(growing)], WatchTiming(settle_seconds=0.3, settle_limit_seconds=20))
    writer.join()
    assert growing.stat().st_size == 601


@pytest.mark.slow
def test_the_command_line_watches_until_ctrl_c(catalog: Path, images: Path, toy_model: str, tmp_path: Path) -> None:
    command = [sys.executable, "-u", "-m", "datasette_imgsearch", "build", str(catalog), str(images), "--model", toy_model,
               "--watch", "--silent", "--no-ocr"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        eventually(lambda: process.poll() is not None or _watching(process), 120)
        write_world(tmp_path / "one", count=1, seed=11)
        shutil.copy(next((tmp_path / "one").glob("*.jpg")), images / "arrived.jpg")
        eventually(lambda: any("1 added" in line for line in printed))  # the pass has ended
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    reader.join(10)
    assert process.returncode == 0, err
    assert "60 images: 0 added" in printed[0] and "arrived.jpg" in rows(catalog)
    assert "Stopped watching" in err


@pytest.mark.slow
def test_ctrl_c_during_a_pass_stops_the_watch_and_keeps_what_was_committed(
    catalog: Path, images: Path, toy_model: str, tmp_path: Path
) -> None:
    command = [sys.executable, "-u", "-m", "datasette_imgsearch", "build", str(catalog), str(images), "--model", toy_model,
               "--watch", "--silent", "--no-ocr", "--batch-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: process.poll() is not None or _watching(process), 120)
        write_world(tmp_path / "many", count=200, seed=12)
        os.rename(tmp_path / "many", images / "many")  # one change: one pass, of 200 commits
        eventually(lambda: any(path.startswith("many/") for path in rows(catalog)))  # the pass is under way
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Stopped watching" in err and "kept" in err
    assert 0 < sum(path.startswith("many/") for path in rows(catalog))
    assert run_cli("build", catalog, "--model", toy_model, "--silent", "--no-ocr").startswith("260 images")


def _watching(process: subprocess.Popen[str]) -> bool:
    """Whether the command has said it is watching (read from its stderr, line by line)."""
    assert process.stderr is not None
    return "Watching" in process.stderr.readline()
