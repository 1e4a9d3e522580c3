"""Finding the image files in a folder: the one place that decides what counts as an image file."""

from __future__ import annotations

import importlib.util
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

# The one table of what counts as an image or a video file, and how it is served.
MEDIA_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif",
    ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".heic": "image/heic", ".heif": "image/heif",
}
VIDEO_TYPES = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
    ".mkv": "video/x-matroska", ".avi": "video/x-msvideo",
}
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
IMAGE_EXTENSIONS = frozenset(MEDIA_TYPES) - HEIF_EXTENSIONS
VIDEO_EXTENSIONS = frozenset(VIDEO_TYPES)
MEDIA_TYPES.update(VIDEO_TYPES)


def heif_available() -> bool:
    """Whether the optional ``pillow-heif`` extra is installed (:mod:`.pixels` registers its opener)."""
    return importlib.util.find_spec("pillow_heif") is not None


def video_available() -> bool:
    """Whether the optional ``video`` extra (PyAV, with FFmpeg inside its wheel) is installed."""
    return importlib.util.find_spec("av") is not None


def is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def image_extensions() -> frozenset[str]:
    """The extensions a build catalogues here: pictures, HEIF with its extra, videos with theirs."""
    extensions = IMAGE_EXTENSIONS | HEIF_EXTENSIONS if heif_available() else IMAGE_EXTENSIONS
    return extensions | VIDEO_EXTENSIONS if video_available() else extensions


def media_type(name: str) -> str:
    """The Content-Type an image file is served with."""
    return MEDIA_TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")


NOT_A_FILE = "not a regular file (a FIFO, a device or a socket): nothing is read from it"


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
    # Video files left alone because the video extra is not installed.
    videos_skipped: int = 0

    def covers(self, path: str) -> bool:
        """Whether ``path`` lies under a folder the scan could not read."""
        return any(folder == "" or path.startswith(folder + "/") for folder in self.unreadable)


def scan(folder: Path, skip: set[Path] | None = None) -> ScanResult:
    """Walk ``folder`` recursively, following symlinks but never into the same directory twice.

    Hidden files and folders (a leading dot) are skipped, as are the paths in ``skip`` (the catalog's
    own files). Unreadable folders are reported rather than raised, so one bad folder never makes a
    whole tree look deleted. Symlinked folders are walked after the real tree, so a folder reached
    both ways keeps its real path.
    """
    walker = _Walker(image_extensions(), {p.resolve() for p in (skip or set())})
    walker.walk(folder.resolve(), "")
    while walker.deferred:
        walker.walk(*walker.deferred.pop(0))
    return walker.result


class _Walker:
    def __init__(self, extensions: frozenset[str], skip: set[Path]) -> None:
        self.extensions = extensions
        self.skip = skip
        self.result = ScanResult()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.deferred: list[tuple[Path, str]] = []

    def is_image_name(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions

    def walk(self, directory: Path, relative: str) -> None:
        """Depth first in name order, with a stack of its own: folders nested thousands deep are walked
        like any other (Python's recursion limit would stop a recursive walk)."""
        stack = [(iter(self.list(directory, relative)), relative)]
        while stack:
            entries, parent = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            if entry.name.startswith("."):
                continue
            child = f"{parent}/{entry.name}" if parent else entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError as error:
                if self.is_image_name(entry.name):
                    self.result.unreadable_files[child] = error.strerror or str(error)
                continue
            if is_dir:
                if entry.is_symlink():
                    self.deferred.append((Path(entry.path), child))
                else:
                    stack.append((iter(self.list(Path(entry.path), child)), child))
            elif self.is_image_name(entry.name):
                self.add_file(entry, child)
            elif is_video(entry.name):
                self.result.videos_skipped += 1

    def list(self, directory: Path, relative: str) -> list[os.DirEntry[str]]:
        """The folder's entries in name order; none if it was walked already or cannot be read."""
        try:
            info = directory.stat()
            key = (info.st_dev, info.st_ino)
            if key in self.seen_dirs:  # a symlink loop, or a second link to a folder already walked
                return []
            self.seen_dirs.add(key)
            return sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            self.result.unreadable[relative] = error.strerror or str(error)
            return []

    def add_file(self, entry: os.DirEntry[str], child: str) -> None:
        try:
            child.encode("utf-8")
        except UnicodeEncodeError:
            self.result.bad_names.append(child.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
            return
        absolute = Path(entry.path)
        try:
            info = entry.stat()
        except OSError as error:  # a dangling symlink or a symlink loop
            self.result.unreadable_files[child] = error.strerror or str(error)
            return
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block its reader, a device never ends
            self.result.unreadable_files[child] = NOT_A_FILE
            return
        if absolute.resolve() not in self.skip:
            self.result.files.append(FoundFile(child, absolute, info.st_size, info.st_mtime_ns))
