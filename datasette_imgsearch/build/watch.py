"""``build --watch``: after a build, follow the folder and keep the catalog current.

Each pass is an ordinary incremental build (plan.py decides what changed from the scan and the catalog),
so everything a build guarantees holds here too: a moved file keeps its id, a crash keeps what was
committed, a running Datasette catches up on the commits. watchfiles (inotify, FSEvents or
ReadDirectoryChangesW, or polling where none works) gathers a burst of changes into one batch, and a
batch waits until the files it names stop growing, so a file still being copied is not read half-way.
A pass commits every ``commit_every`` files rather than every model batch, so an import of 500 files is
a few transactions.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions, Summary
from datasette_imgsearch.catalog.schema import catalog_files
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.images.scan import image_extensions


@dataclass(frozen=True)
class WatchTiming:
    """How long a batch gathers changes, and how long its files must keep still before they are read."""

    gather_ms: int = 1600  # a burst (an import of hundreds of files) within this becomes one batch
    settle_seconds: float = 1.0  # a file whose size or modification time changed within this is still being written
    settle_limit_seconds: float = 120.0  # a file still growing after this is read anyway (a later pass reads it again)
    commit_every: int = 256  # files per transaction in a pass: an import of 500 files is a few commits, not dozens


class RelevantChanges:
    """The watchfiles filter: image files and folders under the watched folder, never the catalog's own
    files or hidden paths (which the scan skips too)."""

    def __init__(self, folder: Path, db_path: str | Path) -> None:
        self.folder = folder
        self.own_files = {str(path) for path in catalog_files(db_path)}
        self.extensions = image_extensions()

    def __call__(self, change: object, path: str) -> bool:
        if path in self.own_files:
            return False
        relative = os.path.relpath(path, self.folder)
        if any(part.startswith(".") for part in Path(relative).parts):
            return False
        suffix = os.path.splitext(path)[1].lower()
        return suffix in self.extensions or os.path.isdir(path) or not suffix  # a folder, or one that has gone


def wait_until_still(paths: Iterable[str], timing: WatchTiming, stop: threading.Event | None = None) -> None:
    """Return once none of ``paths`` changed size or modification time for ``timing.settle_seconds``."""
    deadline = time.monotonic() + timing.settle_limit_seconds
    before = _stats(paths)
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        time.sleep(timing.settle_seconds)
        after = _stats(paths)
        if after == before:
            return
        before = after


def _stats(paths: Iterable[str]) -> dict[str, tuple[int, int] | None]:
    stats: dict[str, tuple[int, int] | None] = {}
    for path in paths:
        try:
            found = os.stat(path)
            stats[path] = (found.st_size, found.st_mtime_ns)
        except OSError:
            stats[path] = None
    return stats


def watch(
    db_path: str | Path,
    folder: Path,
    options: BuildOptions,
    report: Callable[[Summary], None],
    stop: threading.Event | None = None,
    timing: WatchTiming = WatchTiming(),
) -> None:
    """Build passes, one per batch of changes under ``folder``, until ``stop`` is set (or Ctrl-C, which
    arrives as :class:`~datasette_imgsearch.build.builder.Interrupted` or ``KeyboardInterrupt``).
    ``report`` is given each pass's summary."""
    import watchfiles  # only a watching build needs it

    relevant = RelevantChanges(folder, db_path)
    options = dataclasses.replace(options, commit_every=max(options.commit_size, timing.commit_every))
    catching_up = True  # the first, empty batch: the watcher is live; a pass catches what changed before it was
    try:
        for batch in watchfiles.watch(folder, watch_filter=relevant, debounce=timing.gather_ms, stop_event=stop,
                                      rust_timeout=1000, yield_on_timeout=True, raise_interrupt=True):
            if not batch and not catching_up:
                continue
            if not folder.is_dir():
                raise CatalogError(f"stopped watching: the folder {folder} is gone (the catalog keeps its rows)")
            wait_until_still({path for _, path in batch if os.path.isfile(path)}, timing, stop)
            summary = build(db_path, folder, options)
            if batch or summary.changed:
                report(summary)
            catching_up = False
    except FileNotFoundError:
        raise CatalogError(f"stopped watching: the folder {folder} is gone (the catalog keeps its rows)") from None
