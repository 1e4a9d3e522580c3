"""What a catalog holds and what this installation is, in one block a user can paste into a bug report.

``datasette-imgsearch info`` and the plugin's ``/-/imgsearch`` endpoint both show it; neither imports a
model to do so.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from datasette_imgsearch.catalog.catalog import Catalog, image_columns
from datasette_imgsearch.catalog.migrations import schema_version
from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.models.languages import multilingual_model
from datasette_imgsearch.text.stage import text_line
from datasette_imgsearch.vectors.index import index_state

PACKAGES = ("datasette-imgsearch", "datasette", "sqlite-utils", "sentence-transformers", "torch", "faiss-cpu",
            "pillow", "pillow-heif", "pysqlite3-binary", "rapidocr-onnxruntime", "onnxruntime", "av")


def versions() -> dict[str, str | None]:
    """Installed versions of this package and what it runs on (None where not installed)."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def catalog_status(catalog: Catalog) -> dict[str, Any]:
    """The facts ``info`` prints about one catalog."""
    meta = catalog.all_meta()
    state = index_state(catalog)
    folder = catalog.image_folder()
    videos, frames = video_counts(catalog)
    return {
        "images": catalog.count() - frames,  # files, as a build counts them: a video's moments are rows of its own
        "errors": catalog.error_count(),
        "model": meta.get("model"),
        "text_model": meta.get("text_model"),
        "multilingual_model": multilingual_model(meta.get("model") or "", meta.get("multilingual_model")),
        "dimension": meta.get("dimension"),
        "built_on": f"{meta.get('runtime') or 'torch'}, {meta.get('precision')}" if meta.get("precision") else None,
        "folder": str(folder) if folder else None,
        "index": state.reason,
        "index_type": meta.get("index_type"),
        "index_fresh": state.fresh,
        "text": text_line(catalog),
        "videos": f"{videos:,} video{'s' * (videos != 1)}, {videos + frames:,} moments" if videos else None,
        "last_build": meta.get("last_build"),
        "reembedding": meta.get("reembedding"),
        "schema_version": meta.get("schema_version"),
        "schema_version_written": schema_version(),
        "package_version": versions()["datasette-imgsearch"],
    }


def video_counts(catalog: Catalog) -> tuple[int, int]:
    """(videos, their frames' rows after each first moment): none in a catalog of an earlier schema."""
    if "media" not in image_columns(catalog.db.conn):
        return 0, 0
    videos, frames = catalog.db.execute(
        f"select count(*) filter (where media = 'video'), count(*) filter (where media = 'frame') from [{TABLE}]"
    ).fetchone()
    return int(videos), int(frames)
