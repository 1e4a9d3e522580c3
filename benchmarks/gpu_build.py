"""GPU build throughput: `build --device cuda` on 640x480 JPEGs and on 12-MP photos, with vectors checked
against the fp32 CPU build of the same files.

Targets (issue: past one machine), ViT-B/32 in half precision on one H100 with 16 cores: at least
3,000 images/s on 640x480 JPEGs and 1,000 images/s on 12-MP photos, vectors at cosine >= 0.999 to the
fp32 CPU build. Run it as one command on the GPU machine (`--device cpu --count 64 --photos 8` is a
dry run of the same steps anywhere):

    python benchmarks/gpu_build.py [--count 4000] [--photos 200] [--batch-size 256] [--workers 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from common import photo_folder, table, vit_b32


def vectors(db: Path) -> dict[str, np.ndarray]:
    with sqlite3.connect(db) as conn:
        return {path: np.frombuffer(blob, dtype="<f4") for path, blob in conn.execute("select path, embedding from images")}


def timed_build(folder: Path, db: Path, device: str, precision: str, batch_size: int, workers: int) -> float:
    """Images per second of one whole `build` (model loading excluded: it is loaded before the clock starts)."""
    from datasette_imgsearch.build import BuildOptions, build
    from datasette_imgsearch.embed import load_embedder

    load_embedder(str(vit_b32()), device, precision)
    count = len(list(folder.iterdir()))
    started = time.perf_counter()
    build(db, folder, BuildOptions(model=str(vit_b32()), device=device, precision=precision,
                                   batch_size=batch_size, workers=workers))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--count", type=int, default=4000, help="640x480 JPEGs")
    parser.add_argument("--photos", type=int, default=200, help="12-MP JPEGs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--check", type=int, default=64, help="files whose vectors are compared with the fp32 CPU build")
    args = parser.parse_args()

    import torch

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    work = Path(tempfile.mkdtemp(prefix="gpu-build-"))
    rows = []
    for label, folder, target in (
        ("640x480 JPEGs", photo_folder(args.count, 640, 480), 3000),
        ("12-MP JPEGs", photo_folder(args.photos, 4000, 3000), 1000),
    ):
        db = work / f"{label[:3]}.db"
        speed = timed_build(folder, db, args.device, args.precision, args.batch_size, args.workers)
        sample = work / f"{label[:3]}-sample"
        sample.mkdir()
        for file in sorted(folder.iterdir())[: args.check]:
            (sample / file.name).symlink_to(file)
        reference = work / f"{label[:3]}-cpu.db"
        timed_build(sample, reference, "cpu", "fp32", 32, os.cpu_count() or 2)
        fast, exact = vectors(db), vectors(reference)
        lowest = min(float(fast[path] @ exact[path]) for path in exact)
        rows.append([label, f"{speed:,.0f}", f"≥ {target:,}", f"{lowest:.5f}", "≥ 0.999"])
    print(f"device: {device_name}; {os.cpu_count()} CPU cores; batch {args.batch_size}, {args.workers} workers, "
          f"precision {args.precision}")
    table(f"`build --device {args.device}` throughput, ViT-B/32 (random weights)",
          ["files", "images/s", "target", "lowest cosine to fp32 CPU", "target"], rows)


if __name__ == "__main__":
    main()
