"""Finding the image files in a folder: the one place that decides what counts as an image file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})


def heif_available() -> bool:
    """Register the HEIC/HEIF opener when the optional ``pillow-heif`` extra is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def image_extensions() -> frozenset[str]:
    return IMAGE_EXTENSIONS | HEIF_EXTENSIONS if heif_available() else IMAGE_EXTENSIONS


@dataclass(frozen=True)
class FoundFile:
    """A candidate image: its path relative to the scanned folder (with ``/``) and its stat facts."""

    path: str
    absolute: Path
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[FoundFile] = field(default_factory=list)
    # Folders (relative, with ``/``) that could not be listed: rows under them are not treated as removed.
    unreadable: dict[str, str] = field(default_factory=dict)
    # Image files whose names SQLite cannot store (not valid UTF-8), shown with the bad bytes escaped.
    bad_names: list[str] = field(default_factory=list)
    # Image files that could not even be examined (a symlink loop, say): relative path → reason.
    unreadable_files: dict[str, str] = field(default_factory=dict)

    def covers(self, path: str) -> bool:
        """Whether ``path`` lies under a folder the scan could not read."""
        return any(folder == "" or path.startswith(folder + "/") for folder in self.unreadable)


def scan(folder: Path, skip: set[Path] | None = None) -> ScanResult:
    """Walk ``folder`` recursively, following symlinks but never into the same directory twice.

    Hidden files and folders (a leading dot) are skipped, as are the paths in ``skip`` (the catalog's
    own files). Unreadable folders are reported rather than raised, so one bad folder never makes a
    whole tree look deleted.
    """
    extensions = image_extensions()
    skip = {p.resolve() for p in (skip or set())}
    result = ScanResult()
    seen_dirs: set[tuple[int, int]] = set()
    root = folder.resolve()

    def walk(directory: Path, relative: str) -> None:
        try:
            info = directory.stat()
        except OSError as error:
            result.unreadable[relative] = error.strerror or str(error)
            return
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:  # a symlink loop, or a second link to a folder already walked
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            result.unreadable[relative] = error.strerror or str(error)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{relative}/{entry.name}" if relative else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError as error:
                if os.path.splitext(entry.name)[1].lower() in extensions:
                    result.unreadable_files[child] = error.strerror or str(error)
                continue
            if is_dir:
                if entry.is_symlink():
                    deferred.append((Path(entry.path), child))
                else:
                    walk(Path(entry.path), child)
                continue
            if os.path.splitext(entry.name)[1].lower() not in extensions:
                continue
            try:
                child.encode("utf-8")
            except UnicodeEncodeError:
                result.bad_names.append(child.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
                continue
            absolute = Path(entry.path)
            try:
                info = entry.stat()
            except OSError as error:  # a dangling symlink or a symlink loop
                result.unreadable_files[child] = error.strerror or str(error)
                continue
            if absolute.resolve() in skip:
                continue
            result.files.append(FoundFile(child, absolute, info.st_size, info.st_mtime_ns))

    # Symlinked folders are walked after the real tree, so a folder reached both ways keeps its real path.
    deferred: list[tuple[Path, str]] = []
    walk(root, "")
    while deferred:
        walk(*deferred.pop(0))
    return result
