"""Shared helpers for the benchmark scripts: models, image folders, timing and tables."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("IMGSEARCH_BENCH_CACHE", ROOT / "benchmarks" / ".cache"))
RESULTS = ROOT / "benchmarks" / "results"  # the JSON the scripts write, which chart.py and the README take
TOY_MODEL = ROOT / "tests" / "fixtures" / "toy-clip"
GFLOP_PER_IMAGE = 8.7  # ViT-B/32 image tower, one 224x224 image


def vit_b32(folder: Path = CACHE / "vit-b32-random") -> Path:
    """A full-size ViT-B/32 CLIP with random weights: the real model's cost, none of its meaning.

    Built locally from ``CLIPConfig()`` defaults (the shapes of openai/clip-vit-base-patch32), with the
    toy model's small tokenizer; written once into benchmarks/.cache (not committed).
    """
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer(str(TOY_MODEL / "vocab.json"), str(TOY_MODEL / "merges.txt"))
    tokenizer.model_max_length = 77
    config = CLIPConfig()
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    model = CLIPModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=ImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def photo_folder(count: int, width: int, height: int, name: str | None = None, quality: int = 90) -> Path:
    """``count`` photo-sized JPEGs of the toy world (cached), for decode-and-embed timings."""
    import random

    from PIL import Image

    from datasette_imgsearch.toyworld import COLOURS, SHAPES, draw_image

    folder = CACHE / (name or f"photos-{count}-{width}x{height}")
    if folder.exists() and len(list(folder.iterdir())) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(width * height + count)
    side = max(width, height)
    for number in range(count):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        base = draw_image(colour, shape, rng, size=min(side, 1024)).resize((side, side), Image.Resampling.BICUBIC)
        noise = Image.effect_noise((side, side), 24).convert("RGB")
        picture = Image.blend(base, noise, 0.15).crop(((side - width) // 2, (side - height) // 2,
                                                      (side - width) // 2 + width, (side - height) // 2 + height))
        picture.save(folder / f"{colour}-{shape}-{number:05d}.jpg", quality=quality)
    return folder


def load_results(name: str) -> dict:
    """What an earlier run saved as benchmarks/results/NAME.json (empty if none): a run of some parts
    updates it and keeps the rest."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(name: str, results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))


def timed(function: Callable[[], object], repeat: int = 1) -> float:
    """The best wall time of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000


def table(title: str, header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    """A Markdown table, printed and returned, so the README can take it as it is."""
    header = list(header)
    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def matmul_gflops(dtype: str = "fp32", size: int = 2048, repeat: int = 5) -> float:
    import torch

    kind = torch.float32 if dtype == "fp32" else torch.bfloat16
    a, b = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)
    seconds = timed(lambda: a @ b, repeat)
    return 2 * size**3 / seconds / 1e9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def datasette_server(db: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real ``datasette`` serving ``db`` on a free loopback port, yielded once a search answers (the
    model loaded): the base URL and the process. Every request a benchmark makes stays on 127.0.0.1."""
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "datasette", "serve", str(db), "--host", "127.0.0.1", "--port", str(port)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/{db.stem}/images/-/imgsearch.json", params={"q": "warm up"}, timeout=60).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield base, server
    finally:
        server.terminate()
        server.wait(10)
