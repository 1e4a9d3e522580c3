"""What reading the words in pictures costs: per picture, per build, and per query.

    python benchmarks/text_speed.py                    # about 5 minutes on two cores
    python benchmarks/text_speed.py --parts detector   # one part: reading, detector, build, query

* detector: words read and time for each size the detector may see;
* reading: OCR per picture of the toy text world at 640x480, with words and without, and at 12 MP (the
  file decoded as the text stage decodes it, then read), beside RapidOCR as it comes out of the box;
* build: a build of 640x480 photos, half of them with words, with OCR and without, with a full-size
  ViT-B/32 (random weights: the real model's cost);
* query: a query with words at 100,000 rows (half of them with text), beyond encoding it: the picture
  ranking alone, and fused with the text ranking.

Prints Markdown tables and writes benchmarks/results/text_speed.json.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CACHE, cpu_name, load_results, percentiles, save_results, table, vit_b32
from PIL import Image

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.changes import SetMeta
from datasette_imgsearch.catalog.schema import TABLE, to_blob
from datasette_imgsearch.images import pixels
from datasette_imgsearch.images.toytext import CHINESE, ENGLISH, write_text_world
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.text.matching import TextQuery
from datasette_imgsearch.text.reader import READ_SIDE, TextReader


def reading(results: dict) -> None:
    world = write_text_world(CACHE / "text-world-640", count=120, seed=11)
    large = write_text_world(CACHE / "text-world-12mp", count=6, seed=12, size=(4000, 3000))
    reader = TextReader()
    from rapidocr_onnxruntime import RapidOCR

    stock = RapidOCR()
    samples: dict[str, list[float]] = {"with words": [], "no words": [], "stock, with words": [], "stock, no words": []}
    for number, picture in enumerate(world):
        image = Image.open(picture.path).convert("RGB")
        kind = "with words" if picture.words else "no words"
        started = time.perf_counter()
        reader.read(image)
        samples[kind].append(time.perf_counter() - started)
        if number < 30:
            started = time.perf_counter()
            stock(np.asarray(image)[:, :, ::-1])
            samples[f"stock, {kind}"].append(time.perf_counter() - started)
    for picture in large:
        data = picture.path.read_bytes()
        started = time.perf_counter()
        reader.read(pixels.decode(data, shrink_to=(1, READ_SIDE)).image)
        samples.setdefault("12 MP, decoded and read", []).append(time.perf_counter() - started)
    rows = []
    for name, values in samples.items():
        p50, p95 = percentiles(values)
        rows.append([name, len(values), f"{p50:.0f}", f"{p95:.0f}"])
        results.setdefault("reading", {})[name] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1)}
    table(f"OCR per picture, 640x480 unless said ({cpu_name()}, {results['threads']} threads)",
          ["pictures", "count", "p50 ms", "p95 ms"], rows)


def detector_sides(results: dict, sides: list[int]) -> None:
    """Words read and time per picture for each size the detector may see: the default is the smallest
    that keeps recall."""
    world = write_text_world(CACHE / "text-world-640-seed0", count=240, seed=0)
    rows = []
    for side in sides:
        reader = TextReader(detect_side=side)
        found = total = 0
        samples: dict[bool, list[float]] = {True: [], False: []}
        for picture in world:
            image = Image.open(picture.path).convert("RGB")
            started = time.perf_counter()
            said = " ".join(line.text for line in reader.read(image)).upper()
            samples[bool(picture.words)].append(time.perf_counter() - started)
            total += len(picture.words)
            found += sum(word in said for word in picture.words)
        with_words, without = percentiles(samples[True])[0], percentiles(samples[False])[0]
        rows.append([side, f"{found} of {total}", f"{with_words:.0f}", f"{without:.0f}"])
        results.setdefault("detector", {})[str(side)] = {"found": found, "words": total}
    table(f"The detector's input size, 240 pictures at 640x480 ({cpu_name()})",
          ["longest side", "words read", "p50 ms with words", "p50 ms without"], rows)


def building(results: dict, count: int) -> None:
    folder = CACHE / f"text-build-{count}"
    if not folder.exists():
        write_text_world(folder, count=count, seed=13)
    model = str(vit_b32())
    seconds = {}
    for ocr in (False, True, False, True):  # interleaved, the best of two each
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            build(Path(tmp) / "photos.db", folder, BuildOptions(ModelChoice(model=model), ocr=ocr))
            elapsed = time.perf_counter() - started
        seconds[ocr] = min(seconds.get(ocr, elapsed), elapsed)
    ratio = seconds[False] / seconds[True]
    table(f"A build of {count} photos at 640x480, half with words, full-size ViT-B/32 ({cpu_name()})",
          ["build", "seconds", "pictures/s"],
          [["without OCR", f"{seconds[False]:.1f}", f"{count / seconds[False]:.1f}"],
           ["with OCR", f"{seconds[True]:.1f}", f"{count / seconds[True]:.1f}"],
           ["speed with OCR / without", f"{ratio:.2f}", ""]])
    results["build"] = {"pictures": count, "without_ocr_s": round(seconds[False], 1), "with_ocr_s": round(seconds[True], 1),
                        "speed_ratio": round(ratio, 3)}


def synthetic_catalog(path: Path, rows: int, dimension: int = 512) -> None:
    """``rows`` rows with random unit vectors, half of them with one to three words of the toy vocabulary
    and a random code (a serial number, a price) as their text."""
    rng = np.random.default_rng(0)
    words = random.Random(0)
    vocabulary = ENGLISH + CHINESE
    with Catalog(path, create=True) as catalog:
        catalog.write([SetMeta({"dimension": dimension, "model": "synthetic"})])
        for first in range(1, rows + 1, 50_000):
            n = min(50_000, rows + 1 - first)
            vectors = rng.standard_normal((n, dimension)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            values = []
            for i in range(n):
                said = "" if i % 2 else "\n".join(words.sample(vocabulary, words.randint(1, 3)) + [f"N{words.randint(0, 10**6)}"])
                values.append((first + i, f"p/{first + i}.jpg", f"{first + i}.jpg", "p", 640, 480, 1000, "2020-01-01",
                               first + i, f"h{first + i}", to_blob(vectors[i]), said, "[]"))
            with catalog.db.conn:
                catalog.db.conn.executemany(
                    f"insert into [{TABLE}] (id, path, name, folder, width, height, size, modified, mtime_ns, hash, embedding, "
                    "text, text_lines) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)


def querying(results: dict, rows: int) -> None:
    from datasette_imgsearch.search.searcher import Searcher

    path = CACHE / f"text-query-{rows}.db"
    if not path.exists():
        synthetic_catalog(path, rows)
    searcher = Searcher(path, ModelChoice(model=str(vit_b32())))
    snapshot = searcher.store.current()
    rng = np.random.default_rng(1)
    queries = [("one word", ("BAKERY",)), ("two words", ("HOTEL", "OPEN")), ("a Chinese word", ("咖啡",)),
               ("a word no picture holds", ("ZEPPELIN",))]
    rows_out = []
    for name, words in queries:
        plain, fused = [], []
        for _ in range(20):
            vector = rng.standard_normal(512).astype(np.float32)
            vector /= np.linalg.norm(vector)
            started = time.perf_counter()
            searcher.store.search(vector, 10, set(), None, None, snapshot)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            searcher._ranked(vector, 10, set(), None, None, snapshot, TextQuery(words))
            fused.append(time.perf_counter() - started)
        p50_plain, _ = percentiles(plain)
        p50, p95 = percentiles(fused)
        rows_out.append([name, f"{p50_plain:.1f}", f"{p50:.1f}", f"{p95:.1f}", f"{p50 - p50_plain:.1f}"])
        results.setdefault("query", {})[name] = {"picture_only_p50_ms": round(p50_plain, 2), "fused_p50_ms": round(p50, 2),
                                                 "fused_p95_ms": round(p95, 2)}
    table(f"A query's ranking at {rows:,} rows, half with text, beyond encoding it ({cpu_name()})",
          ["query", "picture only p50 ms", "fused p50 ms", "fused p95 ms", "text's share ms"], rows_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="reading,build,query", help="any of reading, detector, build, query")
    parser.add_argument("--sides", default="320,400,480", help="detector sizes compared by the detector part")
    parser.add_argument("--pictures", type=int, default=120, help="photos in the build part")
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the query part")
    args = parser.parse_args()
    import torch

    results = load_results("text_speed")
    results.update(cpu=cpu_name(), threads=torch.get_num_threads())
    parts = args.parts.split(",")
    if "reading" in parts:
        reading(results)
    if "detector" in parts:
        detector_sides(results, [int(side) for side in args.sides.split(",")])
    if "build" in parts:
        building(results, args.pictures)
    if "query" in parts:
        querying(results, args.rows)
    save_results("text_speed", results)


if __name__ == "__main__":
    main()
