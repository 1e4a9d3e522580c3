"""GPU build throughput: `build --device cuda` on 640x480 JPEGs and on 12-MP photos, with vectors checked
against the fp32 CPU build of the same files.

Targets (issue: past one machine), ViT-B/32 in half precision on one H100 with 16 cores: at least
3,000 images/s on 640x480 JPEGs and 1,000 images/s on 12-MP photos, vectors at cosine >= 0.999 to the
fp32 CPU build. Run it as one command on the GPU machine (`--device cpu --count 64 --photos 8` is a
dry run of the same steps anywhere):

    python benchmarks/gpu_build.py [--count 4000] [--photos 200] [--batch-size 256] [--workers 16] [--engines local,ray]

Two engines: `local` decodes in threads of the build process; `ray` (with the `ray` extra) decodes in
one Ray worker process per core, free of the GIL, and runs the model in one GPU worker. The Ray figure
includes its workers' start and model load (a few seconds), so it needs enough files to show its rate.

Beside each build, two ceilings say which side bounds it: decoding alone (read, hash, decode,
thumbnail, preprocess: what `build` does per file before the model), in threads and in processes, and
the model alone on one preprocessed batch repeated (the host-to-device copy included).
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


def timed_build(folder: Path, db: Path, device: str, precision: str, batch_size: int, workers: int,
                engine: str = "local") -> float:
    """Images per second of one whole `build` (model loading excluded for the local engine: it is loaded
    before the clock starts; a Ray build's workers load it on the clock)."""
    from datasette_imgsearch.build.builder import build
    from datasette_imgsearch.build.options import BuildOptions
    from datasette_imgsearch.models.cache import load_embedder
    from datasette_imgsearch.models.choice import ModelChoice

    load_embedder(str(vit_b32()), device if engine == "local" else "cpu", precision)
    count = len(list(folder.iterdir()))
    started = time.perf_counter()
    build(db, folder, BuildOptions(ModelChoice(model=str(vit_b32()), device=device, precision=precision),
                                   batch_size=batch_size, workers=workers, engine=engine))
    return count / (time.perf_counter() - started)


def _decode(path: str, pixels: object) -> None:
    """One file through the build's own per-file work, in a worker process."""
    from datasette_imgsearch.build.inspect import inspect_file
    from datasette_imgsearch.build.options import BuildOptions
    from datasette_imgsearch.images.scan import FoundFile

    info = os.stat(path)
    inspect_file(FoundFile(Path(path).name, Path(path), info.st_size, info.st_mtime_ns), frozenset(),
                 lambda: pixels, BuildOptions())


def decoding_alone(folder: Path, workers: int, processes: bool) -> float:
    """Images per second of the build's per-file work without the model, in ``workers`` threads or processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from datasette_imgsearch.models.cache import load_embedder

    embedder = load_embedder(str(vit_b32()), "cpu", "fp32")
    pixels = embedder.pixels_only() or embedder
    files = [str(path) for path in sorted(folder.iterdir())]
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if processes
            else ThreadPoolExecutor(workers))
    with pool:
        list(pool.map(_decode, files[:workers], [pixels] * workers))  # start the workers before the clock
        started = time.perf_counter()
        list(pool.map(_decode, files, [pixels] * len(files), chunksize=8 if processes else 1))
        return len(files) / (time.perf_counter() - started)


def model_alone(device: str, precision: str, batch_size: int, seconds: float = 5.0) -> float:
    """Images per second of the model on one preprocessed batch, encoded again and again."""
    from PIL import Image

    from datasette_imgsearch.models.cache import load_embedder

    embedder = load_embedder(str(vit_b32()), device, precision)
    picture = Image.effect_noise((640, 480), 64).convert("RGB")
    batch = [embedder.preprocess(picture)] * batch_size
    embedder.encode_preprocessed(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.encode_preprocessed(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--count", type=int, default=4000, help="640x480 JPEGs")
    parser.add_argument("--photos", type=int, default=200, help="12-MP JPEGs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--check", type=int, default=64, help="files whose vectors are compared with the fp32 CPU build")
    parser.add_argument("--engines", default="local,ray", help="local, ray, or both (ray needs the ray extra)")
    args = parser.parse_args()
    engines = args.engines.split(",")
    if "ray" in engines:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False)  # every core and GPU of this machine

    import torch

    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    work = Path(tempfile.mkdtemp(prefix="gpu-build-"))
    rows = []
    for label, folder, target in (
        ("640x480 JPEGs", photo_folder(args.count, 640, 480), 3000),
        ("12-MP JPEGs", photo_folder(args.photos, 4000, 3000), 1000),
    ):
        sample = work / f"{label[:3]}-sample"
        sample.mkdir()
        for file in sorted(folder.iterdir())[: args.check]:
            (sample / file.name).symlink_to(file)
        reference = work / f"{label[:3]}-cpu.db"
        timed_build(sample, reference, "cpu", "fp32", 32, os.cpu_count() or 2)
        exact = vectors(reference)
        for engine in engines:
            db = work / f"{label[:3]}-{engine}.db"
            speed = timed_build(folder, db, args.device, args.precision, args.batch_size, args.workers, engine)
            fast = vectors(db)
            lowest = min(float(fast[path] @ exact[path]) for path in exact)
            rows.append([label, engine, f"{speed:,.0f}", f"≥ {target:,}", f"{lowest:.5f}", "≥ 0.999"])
        for kind, processes in (("threads", False), ("processes", True)):
            speed = decoding_alone(folder, args.workers, processes)
            rows.append([label, f"decoding alone, {args.workers} {kind}", f"{speed:,.0f}", "", "", ""])
    rows.append(["one batch, repeated", f"model alone, batch {args.batch_size}",
                 f"{model_alone(args.device, args.precision, args.batch_size):,.0f}", "", "", ""])
    print(f"device: {device_name}; {os.cpu_count()} CPU cores; batch {args.batch_size}, {args.workers} workers, "
          f"precision {args.precision}")
    table(f"`build --device {args.device}` throughput, ViT-B/32 (random weights)",
          ["files", "way", "images/s", "target", "lowest cosine to fp32 CPU", "target"], rows)


if __name__ == "__main__":
    main()
