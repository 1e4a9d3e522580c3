"""Build throughput: the recipe's loop, our ``build`` and the model alone, side by side on the same files.

    python benchmarks/build_speed.py              # about 10 minutes on two cores

Uses a full-size ViT-B/32 with random weights (the real model's cost) built locally, and the toy-world
model for the ranking check. Prints Markdown tables and writes benchmarks/results/build.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import GFLOP_PER_IMAGE, ROOT, TOY_MODEL, matmul_gflops, photo_folder, table, timed, vit_b32


def recipe_loop(model, paths: list[Path]) -> None:
    """The recipe this project grew from: one image at a time."""
    from PIL import Image

    for path in paths:
        model.encode(Image.open(path))


def model_alone(embedder, paths: list[Path], batch_size: int) -> float:
    """Images/s of the network alone on already preprocessed batches."""
    from PIL import Image

    features = [embedder.preprocess(Image.open(p).convert("RGB")) for p in paths]
    batches = [features[i:i + batch_size] for i in range(0, len(features), batch_size)]
    seconds = timed(lambda: [embedder.encode_preprocessed(b) for b in batches])
    return len(paths) / seconds


def build_rate(model: str, folder: Path, precision: str, batch_size: int) -> tuple[float, Path]:
    from datasette_imgsearch.build import BuildOptions, build

    db = Path(tempfile.mkdtemp()) / "bench.db"
    count = len(list(folder.iterdir()))
    seconds = timed(lambda: build(db, folder, BuildOptions(model=model, precision=precision, batch_size=batch_size,
                                                          device="cpu")))
    return count / seconds, db


def embeddings(db: Path) -> dict[str, np.ndarray]:
    import sqlite3

    from datasette_imgsearch.catalog import from_blob

    conn = sqlite3.connect(db)
    try:
        return {path: from_blob(blob) for path, blob in conn.execute("select path, embedding from images")}
    finally:
        conn.close()


def min_cosine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return min(float(a[k] @ b[k]) for k in a)


def decode_comparison(embedder, folder: Path) -> tuple[float, float, float]:
    """(full decode ms, draft decode ms, min cosine between their embeddings) on large JPEGs."""
    from datasette_imgsearch import pixels

    files = [p.read_bytes() for p in sorted(folder.iterdir())]
    full = timed(lambda: [pixels.decode(d) for d in files]) / len(files) * 1000
    side = embedder.decode_side()
    draft = timed(lambda: [pixels.decode(d, min_side=side) for d in files]) / len(files) * 1000
    vectors_full = embedder.encode_images([pixels.decode(d).image for d in files])
    vectors_draft = embedder.encode_images([pixels.decode(d, min_side=side).image for d in files])
    return full, draft, float(np.min(np.sum(vectors_full * vectors_draft, axis=1)))


def toy_rankings_identical(count: int = 240) -> tuple[bool, float]:
    """Do fp32 and bf16 catalogs of the toy world rank every caption identically?"""
    from datasette_imgsearch.build import BuildOptions, build
    from datasette_imgsearch.query import Searcher
    from datasette_imgsearch.toyworld import COLOURS, SHAPES, write_world

    folder = Path(tempfile.mkdtemp()) / "world"
    write_world(folder, count=count, seed=11)
    searchers, vectors = {}, {}
    for precision in ("fp32", "bf16"):
        db = folder.parent / f"{precision}.db"
        build(db, folder, BuildOptions(model=str(TOY_MODEL), precision=precision, device="cpu"))
        searchers[precision] = Searcher(db)
        vectors[precision] = embeddings(db)
    queries = [f"a {c} {s}" for c in COLOURS for s in SHAPES] + [f"something {c}" for c in COLOURS] + [f"a {s}" for s in SHAPES]
    same = all(
        [h.id for h in searchers["fp32"].search(q, 10)] == [h.id for h in searchers["bf16"].search(q, 10)] for q in queries
    )
    return same, min_cosine(vectors["fp32"], vectors["bf16"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=160, help="640x480 JPEGs to embed")
    parser.add_argument("--large", type=int, default=16, help="12-megapixel JPEGs to decode")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    from PIL import Image
    from sentence_transformers import SentenceTransformer

    from datasette_imgsearch.embed import load_embedder

    model_path = str(vit_b32())
    folder = photo_folder(args.images, 640, 480)
    paths = sorted(folder.iterdir())
    recipe_model = SentenceTransformer(model_path, device="cpu")
    recipe_model.encode(Image.open(paths[0]))  # warm up
    recipe = len(paths) / timed(lambda: recipe_loop(recipe_model, paths))

    results: dict[str, float | bool] = {"recipe": recipe}
    for precision in ("fp32", "bf16"):
        embedder = load_embedder(model_path, "cpu", precision)
        results[f"model_{precision}"] = model_alone(embedder, paths, args.batch_size)
        results[f"build_{precision}"], db = build_rate(model_path, folder, precision, args.batch_size)
        results[f"db_{precision}"] = str(db)
    results["cosine_bf16"] = min_cosine(embeddings(Path(results["db_fp32"])), embeddings(Path(results["db_bf16"])))
    results["gflops_fp32"] = matmul_gflops("fp32")
    results["gflops_bf16"] = matmul_gflops("bf16")

    large = photo_folder(args.large, 4000, 3000, quality=92)
    embedder = load_embedder(model_path, "cpu", "fp32")
    results["decode_full_ms"], results["decode_draft_ms"], results["cosine_draft"] = decode_comparison(embedder, large)
    results["build_12mp"], _ = build_rate(model_path, large, "fp32", args.batch_size)
    results["toy_same_ranking"], results["toy_cosine_bf16"] = toy_rankings_identical()

    ceiling = {p: results[f"gflops_{p}"] / GFLOP_PER_IMAGE for p in ("fp32", "bf16")}
    table(
        f"Build throughput, ViT-B/32 (random weights), {len(paths)} JPEGs of 640x480, batch {args.batch_size}",
        ["way of embedding", "images/s", "vs recipe", "vs model alone", "vs FLOP ceiling"],
        [
            ["recipe loop: `model.encode(Image.open(p))`", f"{recipe:.1f}", "1.00x", "", ""],
            *[
                row
                for p in ("fp32", "bf16")
                for row in (
                    [f"model alone, batch {args.batch_size}, {p}", f"{results[f'model_{p}']:.1f}",
                     f"{results[f'model_{p}'] / recipe:.2f}x", "1.00", f"{results[f'model_{p}'] / ceiling[p]:.0%}"],
                    [f"`build --precision {p}`", f"{results[f'build_{p}']:.1f}", f"{results[f'build_{p}'] / recipe:.2f}x",
                     f"{results[f'build_{p}'] / results[f'model_{p}']:.2f}", f"{results[f'build_{p}'] / ceiling[p]:.0%}"],
                )
            ],
            *[
                [f"FLOP ceiling {p} ({results[f'gflops_{p}']:.0f} GFLOP/s / {GFLOP_PER_IMAGE} GFLOP)", f"{ceiling[p]:.1f}",
                 "", "", "100%"]
                for p in ("fp32", "bf16")
            ],
        ],
    )
    table(
        "Faithfulness of the fast paths",
        ["check", "result"],
        [
            ["bf16 vs fp32 embeddings, lowest cosine (ViT-B/32)", f"{results['cosine_bf16']:.4f}"],
            ["bf16 vs fp32 embeddings, lowest cosine (toy model)", f"{results['toy_cosine_bf16']:.4f}"],
            ["bf16 vs fp32 toy-world top-10 rankings, 19 queries", "identical" if results["toy_same_ranking"] else "DIFFERENT"],
            ["12-MP JPEG decode, full", f"{results['decode_full_ms']:.0f} ms"],
            [f"12-MP JPEG decode, draft (both sides >= {embedder.decode_side()} px)", f"{results['decode_draft_ms']:.0f} ms"],
            ["draft vs full decode, lowest cosine", f"{results['cosine_draft']:.4f}"],
            ["`build` on 12-MP JPEGs, images/s (fp32)", f"{results['build_12mp']:.1f}"],
        ],
    )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "build.json").write_text(json.dumps({k: v for k, v in results.items() if not k.startswith("db_")}, indent=2))


if __name__ == "__main__":
    main()
