"""Which files a build considers: images by extension in any case, nothing hidden, no loops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datasette_imgsearch.catalog.schema import catalog_files
from datasette_imgsearch.images.scan import scan


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize(
    "name,found",
    [
        ("a.jpg", True), ("b.JPEG", True), ("c.Png", True), ("d.webp", True), ("e.gif", True), ("f.BMP", True),
        ("g.tif", True), ("h.TIFF", True), ("notes.txt", False), ("noextension", False),
        ("movie.mp4", True), ("clip.MOV", True), ("song.mp3", False),  # videos with the video extra (installed here)
        ("archive.jpg.zip", False),
    ],
)
def test_images_and_videos_are_found_by_extension_in_any_case(tmp_path: Path, name: str, found: bool) -> None:
    touch(tmp_path / name)
    assert [f.path for f in scan(tmp_path).files] == ([name] if found else [])


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    touch(tmp_path / ".hidden.jpg")
    touch(tmp_path / ".thumbnails" / "a.jpg")
    touch(tmp_path / "visible" / "b.jpg")
    assert [f.path for f in scan(tmp_path).files] == ["visible/b.jpg"]


def test_paths_are_relative_with_forward_slashes_and_odd_names_survive(tmp_path: Path) -> None:
    for name in ("sub folder/ünïcödé 写真.jpg", "a/b/c/deep.png", "quote's & \"double\".jpg"):
        touch(tmp_path / name)
    assert sorted(f.path for f in scan(tmp_path).files) == sorted(
        ["sub folder/ünïcödé 写真.jpg", "a/b/c/deep.png", "quote's & \"double\".jpg"]
    )


def test_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    touch(tmp_path / "album" / "a.jpg")
    os.symlink(tmp_path, tmp_path / "album" / "loop")
    os.symlink(tmp_path / "album", tmp_path / "again")
    result = scan(tmp_path)
    assert [f.path for f in result.files] == ["album/a.jpg"]


def test_the_catalogs_own_files_are_never_catalogued(tmp_path: Path) -> None:
    touch(tmp_path / "photo.jpg")
    db = tmp_path / "photos.jpg"  # a catalog that happens to have an image extension
    touch(db)
    touch(Path(str(db) + ".faiss"))
    assert [f.path for f in scan(tmp_path, skip=catalog_files(db)).files] == ["photo.jpg"]


def test_a_symlink_to_itself_is_reported_unreadable(tmp_path: Path) -> None:
    os.symlink(tmp_path / "self.jpg", tmp_path / "self.jpg")
    result = scan(tmp_path)
    assert result.files == []
    assert "self.jpg" in result.unreadable_files


def test_names_that_are_not_utf8_are_reported(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.jpg")
    (tmp_path / name).write_bytes(b"x")
    result = scan(tmp_path)
    assert result.files == []
    assert result.bad_names == ["caf\\xe9.jpg"]


def test_an_unlistable_folder_is_reported_and_covers_its_paths(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can list any folder")
    locked = tmp_path / "locked"
    touch(locked / "a.jpg")
    locked.chmod(0)
    try:
        result = scan(tmp_path)
    finally:
        locked.chmod(0o755)
    assert "locked" in result.unreadable
    assert result.covers("locked/a.jpg") and not result.covers("other.jpg")
