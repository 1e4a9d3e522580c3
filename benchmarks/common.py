"""Shared helpers for the benchmark scripts: models, image folders, timing and tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
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


# CLIP's own byte-pair vocabulary ships in open_clip's wheel; downloaded (never installed: it would pull
# torchvision) from the package index, which the benchmark machines reach.
CLIP_BPE_WHEEL = "open_clip_torch==3.3.0"
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_MEMBER = f"open_clip/{CLIP_BPE_FILE}"
CLIP_VOCABULARY = 49408


def clip_vocabulary(folder: Path = CACHE / "clip-bpe") -> Path | None:
    """A folder with CLIP's real tokenizer vocabulary as transformers stores it (``vocab.json`` and
    ``merges.txt``), or None when the package index cannot be reached.

    Text queries need the real model's token counts for their cost to be the real one: the toy model's
    small vocabulary splits "client 3 query 17" into 16 tokens where CLIP's makes 7, which doubled the
    text tower's work in earlier runs. The conversion is the one transformers' CLIPTokenizer makes of
    OpenAI's file: the 256 byte characters, the same with an end-of-word mark, one token per merge, then
    the two special tokens. OpenAI's file itself is kept beside them as ``bpe_simple_vocab_16e6.txt.gz``
    (rclip reads that one)."""
    if (folder / "merges.txt").exists() and (folder / CLIP_BPE_FILE).exists():
        return folder
    import gzip
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as download:
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", CLIP_BPE_WHEEL, "-d", download],
            capture_output=True, text=True,
        )
        wheels = list(Path(download).glob("*.whl"))
        if fetched.returncode != 0 or not wheels:
            print(f"CLIP's vocabulary could not be downloaded ({CLIP_BPE_WHEEL}); text costs use the toy tokenizer's "
                  f"longer token sequences", file=sys.stderr)
            return None
        with zipfile.ZipFile(wheels[0]) as wheel:
            packed = wheel.read(CLIP_BPE_MEMBER)
    lines = gzip.decompress(packed).decode("utf-8").split("\n")
    merges = [line.split() for line in lines[1:CLIP_VOCABULARY - 2 * 256 - 2 + 1]]
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    byte_characters = [chr(byte) for byte in printable] + [chr(256 + number) for number in range(len(others))]
    tokens = byte_characters + [c + "</w>" for c in byte_characters] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCABULARY, len(tokens)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: number for number, token in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    (folder / CLIP_BPE_FILE).write_bytes(packed)
    return folder


def vit_b32(folder: Path = CACHE / "vit-b32-random", image_size: int = 224) -> Path:
    """A full-size ViT-B/32 CLIP with random weights: the real model's cost, none of its meaning;
    ``image_size`` 256 makes the shape of ViT-B-32-256, the model rclip runs.

    Built locally from ``CLIPConfig()`` defaults (the shapes of openai/clip-vit-base-patch32), with CLIP's
    own tokenizer vocabulary (see :func:`clip_vocabulary`; the toy model's when that cannot be had);
    written once into benchmarks/.cache (not committed), and again when a folder made with the toy
    tokenizer can now have the real one."""
    vocabulary = clip_vocabulary()
    if (folder / "config.json").exists():
        made_with = json.loads((folder / "config.json").read_text())["text_config"].get("eos_token_id")
        if vocabulary is None or made_with == CLIP_VOCABULARY - 1:
            return folder
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    torch.manual_seed(0)
    words = vocabulary or TOY_MODEL
    tokenizer = CLIPTokenizer(str(words / "vocab.json"), str(words / "merges.txt"))
    tokenizer.model_max_length = 77
    config = CLIPConfig()
    config.vision_config.image_size = image_size
    config.text_config.bos_token_id = tokenizer.bos_token_id
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    model = CLIPModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    pixels = ImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=pixels, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def photo_folder(count: int, width: int, height: int, name: str | None = None, quality: int = 90) -> Path:
    """``count`` photo-sized JPEGs of the toy world (cached), for decode-and-embed timings."""
    import random

    from PIL import Image

    from datasette_imgsearch.images.toyworld import COLOURS, SHAPES, draw_image

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


def cpu_name() -> str:
    """The CPU as the figures name it: its model, and whether it has AVX-512 and native bfloat16, which
    decide which engine and precision are fastest (docs/onnx.md)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = "native bf16" if flags & {"avx512_bf16", "amx_bf16"} else "no native bf16"
    return f"{model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores ({vector}, {bf16})"


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


PEAK_PROBE = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
              "stderr=subprocess.DEVNULL, check=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def run_measured(command: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak resident MB of ``command`` in a fresh process (run under a small probe that
    reads its children's peak memory). Python may cache compiled modules, as it does for a person's
    installed package, whatever this shell says (PYTHONDONTWRITEBYTECODE would compile each module anew)."""
    env = {name: value for name, value in env.items() if name != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    found = subprocess.run([sys.executable, "-c", PEAK_PROBE, *command], env=env, cwd=cwd, capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{found.stderr[-2000:]}")
    return time.perf_counter() - started, int(found.stdout.strip()) / 1024


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
