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
from datasette_imgsearch.images.scan import FoundFile, is_video
from datasette_imgsearch.images.video import read_video
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
    vector: np.ndarray | None = None  # a picture's vector; a video's frames' vectors, a row each

    def take_vectors(self, rows: np.ndarray) -> None:
        """Keep the model's rows for this file (see :func:`split_rows`) and let its pixels go."""
        self.vector = rows.reshape(len(self.facts["frames"]), -1) if "frames" in self.facts else rows.reshape(-1)
        self.features = None


def inspect_file(
    item: FoundFile, reusable: set[str] | frozenset[str], preprocessor: Callable[[], Preprocessor], options: BuildOptions
) -> Inspected:
    """Read and hash a file; decode and preprocess it only when its bytes are new (any thread or worker).
    ``preprocessor`` gives the model's preprocessing when it is first needed, so a run of moved files
    never loads the model."""
    result = Inspected(item)
    try:
        if is_video(item.path):
            return _inspect_video(result, reusable, preprocessor, options)
        data = pixels.read_bytes(item.absolute, pixels.max_file_bytes(options.max_megapixels))
        result.hash = hashlib.blake2b(data, digest_size=16).hexdigest()
        if result.hash in reusable:
            return result
        model = preprocessor()
        decoded = pixels.decode(data, options.max_megapixels, model.shrink_to(options.thumbnail_size))
        result.facts = {"media": "image", "format": decoded.format, "width": decoded.width, "height": decoded.height,
                        **decoded.facts, "likeness": likeness_hash(decoded.image)}
        if options.thumbnail_size:
            result.facts["thumbnail"] = pixels.thumbnail(decoded.image, options.thumbnail_size)
        result.features = model.preprocess(decoded.image)
    except pixels.ImageError as error:
        result.error = error
    return result


def _inspect_video(
    result: Inspected, reusable: set[str] | frozenset[str], preprocessor: Callable[[], Preprocessor], options: BuildOptions
) -> Inspected:
    """A video's hash (read in chunks: videos are large), then its facts and sampled frames, each with
    its time, thumbnail and likeness hash, in ``facts["frames"]``; ``features`` stacks the frames' pixels
    (the first frame is the video row's own picture)."""
    result.hash = pixels.file_hash(result.found.absolute)
    if result.hash in reusable:
        return result
    model = preprocessor()
    sampled = read_video(result.found.absolute, max(model.shrink_to(options.thumbnail_size)))
    result.facts = sampled.facts
    result.facts["frames"] = [
        {"frame_time": round(frame.time, 3), "likeness": likeness_hash(frame.image),
         "thumbnail": pixels.thumbnail(frame.image, options.thumbnail_size) if options.thumbnail_size else None}
        for frame in sampled.frames
    ]
    features = [model.preprocess(frame.image) for frame in sampled.frames]
    result.features = {key: _stacked([feature[key] for feature in features]) for key in features[0]}
    return result


def _stacked(values: list[Any]) -> Any:
    """The frames' preprocessed values as one batch: arrays and tensors joined, anything else as it is."""
    if isinstance(values[0], np.ndarray):
        return np.concatenate(values)
    if hasattr(values[0], "shape"):
        import torch

        return torch.cat(values)
    return values[0]


def split_rows(vectors: np.ndarray, features: list[Any]) -> list[np.ndarray]:
    """The model's rows for a batch of files' ``features``, one 2-D array per file (a picture has one
    row, a video a row per sampled frame)."""
    split, start = [], 0
    for feature in features:
        rows = len(feature["pixel_values"])
        split.append(vectors[start:start + rows])
        start += rows
    return split


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
