"""ONNX Runtime against torch, side by side on one machine: the image tower, the text tower and whole builds.

    python benchmarks/runtimes.py              # about 5 minutes on two cores
    python benchmarks/runtimes.py --without-bf16   # fp32 only: where bf16 is emulated its builds take minutes

Uses a full-size ViT-B/32 with random weights (the real model's cost), exported once into a cache of its
own. Rounds are interleaved and each way keeps its best round, since shared cores drift. Prints Markdown
tables and writes benchmarks/results/runtimes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import CACHE, cpu_name, photo_folder, save_results, table, vit_b32

os.environ.setdefault("IMGSEARCH_CACHE", str(CACHE / "runtimes-cache"))

from datasette_imgsearch.models.embedder import Embedder  # noqa: E402
from datasette_imgsearch.models.onnxclip import export, find_export  # noqa: E402

WAYS = {"ONNX Runtime fp32": ("fp32", "onnx"), "torch fp32": ("fp32", "torch"), "torch bf16": ("bf16", "torch")}


def towers(model: str, rounds: int, chosen: tuple[str, ...] = tuple(WAYS)) -> dict[str, dict[str, float]]:
    """Images and texts a second through each way, best of ``rounds``."""
    ways = {name: Embedder(model, "cpu", precision, runtime=runtime)
            for name, (precision, runtime) in WAYS.items() if name in chosen}
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
    texts = [f"a photo of a {word} on a beach at night" for word in ("dog", "cat", "bicycle", "red car")] * 8
    best: dict[str, dict[str, float]] = {name: {"images": 0.0, "texts": 0.0} for name in ways}
    for _ in range(rounds):
        for name, embedder in ways.items():
            batch = [{"pixel_values": pixels if embedder.onnx is not None else torch.from_numpy(pixels)}]
            started = time.perf_counter()
            embedder.encode_preprocessed(batch)
            best[name]["images"] = max(best[name]["images"], len(pixels) / (time.perf_counter() - started))
            started = time.perf_counter()
            for text in texts:
                embedder.encode_texts([text])
            best[name]["texts"] = max(best[name]["texts"], len(texts) / (time.perf_counter() - started))
    return best


def builds(model: str, folder: Path, rounds: int, chosen: tuple[str, ...] = tuple(WAYS)) -> dict[str, float]:
    """Seconds for a whole `datasette-imgsearch build` of ``folder`` with each runtime in fp32 (and torch bf16),
    best of ``rounds``: each a fresh process, as a person runs it, so starting up counts (a build on ONNX
    Runtime never imports torch where no GPU can be)."""
    ways = {name: ["--runtime", runtime, "--precision", precision]
            for name, (precision, runtime) in WAYS.items() if name in chosen}
    best = {name: float("inf") for name in ways}
    for _ in range(rounds):
        for name, options in ways.items():
            with tempfile.TemporaryDirectory() as tmp:
                command = [sys.executable, "-m", "datasette_imgsearch", "build", str(Path(tmp) / "photos.db"), str(folder),
                           "--model", model, "--no-ocr", "--silent", *options]
                started = time.perf_counter()
                subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", type=int, default=160)
    parser.add_argument("--without-bf16", action="store_true", help="leave torch bf16 out (slow where the CPU emulates it)")
    args = parser.parse_args()
    chosen = tuple(name for name in WAYS if not (args.without_bf16 and "bf16" in name))
    model = str(vit_b32())
    if find_export(model) is None:
        export(model)
    facts = json.loads((find_export(model) / "export.json").read_text())
    cpu = cpu_name()
    speeds = towers(model, args.rounds, chosen)
    table(f"Towers of a ViT-B/32 (random weights), batch of 32 images and one text at a time ({cpu})",
          ["way", "images/s", "texts/s", "images vs torch fp32"],
          [[name, f"{s['images']:.1f}", f"{s['texts']:.1f}", f"{s['images'] / speeds['torch fp32']['images']:.2f}x"]
           for name, s in speeds.items()])
    seconds = builds(model, photo_folder(args.photos, 640, 480), args.rounds, chosen)
    table(f"A build of {args.photos} photos at 640x480 ({cpu})", ["way", "seconds", "photos/s", "vs torch fp32"],
          [[name, f"{s:.1f}", f"{args.photos / s:.1f}", f"{seconds['torch fp32'] / s:.2f}x"] for name, s in seconds.items()])
    print(f"\nexport: worst cosine against torch fp32 {facts['worst_cosine']}")
    save_results("runtimes", {"cpu": cpu, "towers": speeds, "builds": seconds, "worst_cosine": facts["worst_cosine"]})


if __name__ == "__main__":
    main()
