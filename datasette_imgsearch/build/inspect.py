"""Reading one file for a build: hash its bytes, and decode and preprocess its pixels only when they
are new to the catalog. Any engine runs it, in a thread or on a Ray worker."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.images import pixels
from datasette_imgsearch.images.likeness import likeness_hash
from datasette_imgsearch.images.scan import FoundFile
from datasette_imgsearch.models.preprocessing import Preprocessor


@dataclass
class Inspected:
    """What a worker learned about one file: its hash, and its pixels ready for the model (``features``)
    and then its vector, when its bytes are new."""

    found: FoundFile
    hash: str = ""
    features: Any = None
    facts: dict[str, Any] = field(default_factory=dict)
    error: pixels.ImageError | None = None
    vector: np.ndarray | None = None


def inspect_file(
    item: FoundFile, reusable: set[str] | frozenset[str], preprocessor: Callable[[], Preprocessor], options: BuildOptions
) -> Inspected:
    """Read and hash a file; decode and preprocess it only when its bytes are new (any thread or worker).
    ``preprocessor`` gives the model's preprocessing when it is first needed, so a run of moved files
    never loads the model."""
    result = Inspected(item)
    try:
        data = pixels.read_bytes(item.absolute, pixels.max_file_bytes(options.max_megapixels))
        result.hash = hashlib.blake2b(data, digest_size=16).hexdigest()
        if result.hash in reusable:
            return result
        model = preprocessor()
        decoded = pixels.decode(data, options.max_megapixels, model.shrink_to(options.thumbnail_size))
        result.facts = {"format": decoded.format, "width": decoded.width, "height": decoded.height, **decoded.facts,
                        "likeness": likeness_hash(decoded.image)}
        if options.thumbnail_size:
            result.facts["thumbnail"] = pixels.thumbnail(decoded.image, options.thumbnail_size)
        result.features = model.preprocess(decoded.image)
    except pixels.ImageError as error:
        result.error = error
    return result


def file_facts(found: FoundFile, hash_: str) -> dict[str, Any]:
    """The columns that come from the file system rather than from the pixels."""
    folder, _, name = found.path.rpartition("/")
    modified = datetime.datetime.fromtimestamp(found.mtime_ns / 1e9, datetime.timezone.utc)
    return {
        "path": found.path,
        "name": name,
        "folder": folder,
        "size": found.size,
        "modified": modified.isoformat(timespec="seconds"),
        "mtime_ns": found.mtime_ns,
        "hash": hash_,
    }
