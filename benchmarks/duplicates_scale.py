"""Near-duplicate grouping at catalog scale: a synthetic catalog of N rows (random pictures' hashes and
unit vectors, with planted copies: a tenth of the rows are a copy of another row, its hash 3 bits
off and its vector at a cosine of about 0.97), grouped from scratch, then again after adding rows.

    python benchmarks/duplicates_scale.py --rows 1000000 --add 10000 [--index ivfsq8]

Every row carries the same small thumbnail, so each pair the signals propose costs a real pixel check
(and is confirmed). The index is written first, as ``build`` writes it before grouping. Prints the time
of each part and the peak memory.
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.changes import SetMeta
from datasette_imgsearch.catalog.schema import TABLE, to_blob
from datasette_imgsearch.duplicates.stage import update_groups
from datasette_imgsearch.vectors.index import write_index

DIMENSION = 512


def fill(catalog: Catalog, start: int, count: int, rng: np.random.Generator, thumbnail: bytes) -> None:
    """Insert ``count`` rows with ids from ``start``; every tenth is a near-copy of an earlier row."""
    conn = catalog.db.conn
    for first in range(start, start + count, 50_000):
        n = min(50_000, start + count - first)
        codes = rng.integers(-(2**62), 2**62, size=n, dtype=np.int64)
        vectors = rng.standard_normal((n, DIMENSION)).astype(np.float32)
        copies = np.arange(n) % 10 == 9
        codes[copies] = codes[np.flatnonzero(copies) - 1] ^ np.int64(0b1011)  # 3 bits off the row before
        vectors[copies] = vectors[np.flatnonzero(copies) - 1] + 0.01 * rng.standard_normal((copies.sum(), DIMENSION))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [(first + i, f"p/{first + i}.jpg", f"{first + i}.jpg", "p", 640, 480, 1000, "2020-01-01", first + i,
                 f"h{first + i}", thumbnail, to_blob(vectors[i]), int(codes[i])) for i in range(n)]
        with conn:
            conn.executemany(
                f"insert into [{TABLE}] (id, path, name, folder, width, height, size, modified, mtime_ns, hash, thumbnail, "
                "embedding, likeness) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def index_written(catalog: Catalog, kind: str) -> None:
    """Write the catalog's index, as ``build`` does before it groups (a large catalog's groups ask it)."""
    started = time.perf_counter()
    write_index(catalog, kind)
    print(f"| index written ({catalog.meta('index_type')}) | {time.perf_counter() - started:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--add", type=int, default=10_000)
    parser.add_argument("--index", default="flat", help="the catalog's index type (an approximate one is asked for neighbours)")
    args = parser.parse_args()
    buffer = io.BytesIO()
    Image.effect_noise((96, 96), 40).convert("RGB").save(buffer, format="JPEG", quality=80)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, Catalog(Path(tmp) / "photos.db", create=True) as catalog:
        catalog.write([SetMeta({"dimension": DIMENSION, "model": "synthetic"})])
        started = time.perf_counter()
        fill(catalog, 1, args.rows, rng, buffer.getvalue())
        print(f"| {args.rows:,} rows written | {time.perf_counter() - started:.1f} s |")
        index_written(catalog, args.index)
        started = time.perf_counter()
        summary = update_groups(catalog)
        print(f"| grouped from scratch | {time.perf_counter() - started:.1f} s | {summary.line()} |")
        fill(catalog, args.rows + 1, args.add, rng, buffer.getvalue())
        index_written(catalog, args.index)
        started = time.perf_counter()
        summary = update_groups(catalog)
        print(f"| {args.add:,} rows added, groups updated | {time.perf_counter() - started:.1f} s | {summary.line()} |")
    print(f"| peak memory | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB |")


if __name__ == "__main__":
    main()
