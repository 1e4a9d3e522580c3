"""What a build has to do, decided from the folder scan and the catalog alone, before a file is read.

Kept apart from the builder (which reads, decodes, embeds and writes) so the rules of an incremental
build can be read, and tested, in one place: unchanged files are skipped by size and modification
time; new and changed files are read; rows whose file is gone are *vanished* (a later match on the
bytes' hash makes them moves, the rest are removed); files the scan could not examine are failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasette_imgsearch.catalog.catalog import StoredFile
from datasette_imgsearch.catalog.changes import Change, Failure
from datasette_imgsearch.images.scan import FoundFile, ScanResult


@dataclass
class Plan:
    unchanged: list[str] = field(default_factory=list)
    still_failing: list[str] = field(default_factory=list)  # failed before, unchanged since: not read again
    to_read: list[FoundFile] = field(default_factory=list)
    vanished: list[StoredFile] = field(default_factory=list)
    failures: list[Change] = field(default_factory=list)
    # Every path an error row may still be kept for: the files found and the ones that failed.
    present: set[str] = field(default_factory=set)


def plan_update(found: ScanResult, stored: dict[str, StoredFile], failed: dict[str, tuple[int, int]] | None = None) -> Plan:
    """Compare the folder with the catalog: what to skip, what to read, which rows lost their file.
    ``failed``: the files that failed, by the size and modification time they had then."""
    plan = Plan()
    failed = failed or {}
    for item in found.files:
        known = stored.get(item.path)
        if known and known.size == item.size and known.mtime_ns == item.mtime_ns:
            plan.unchanged.append(item.path)
        elif not known and failed.get(item.path) == (item.size, item.mtime_ns):
            plan.still_failing.append(item.path)
        else:
            plan.to_read.append(item)
    seen = {item.path for item in found.files}
    plan.vanished = [
        row for path, row in stored.items()
        if path not in seen and path not in found.unreadable_files and not found.covers(path)
    ]
    plan.failures = [Failure(name, "bad-name", "the file name is not valid UTF-8; rename the file") for name in found.bad_names]
    plan.failures += [Failure(path, "unreadable", reason) for path, reason in found.unreadable_files.items()]
    plan.present = seen | set(found.bad_names) | set(found.unreadable_files)
    return plan


def plan_reembed(found: ScanResult, stored: dict[str, StoredFile], staged: set[int]) -> list[FoundFile]:
    """The files whose row still needs a vector from the new model, in id order (so a killed
    ``--reembed`` resumes where it stopped). Rows whose file is gone are left to the switch."""
    todo = [item for item in found.files if item.path in stored and stored[item.path].id not in staged]
    return sorted(todo, key=lambda item: stored[item.path].id)
