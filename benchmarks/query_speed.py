"""Query latency: SQL functions and the JSON endpoint at 100k rows, and index types at a million.

    python benchmarks/query_speed.py                      # about 15 minutes on two cores
    python benchmarks/query_speed.py --scale-rows 200000  # quicker

Vectors are synthetic, clustered 512-d unit vectors (real CLIP embeddings cluster too; uniform random
ones are the worst case for approximate indexes). Text queries go through the full-size ViT-B/32 text
tower with random weights, so their cost is the real one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CACHE, datasette_server, load_results, percentiles, save_results, table, vit_b32

DIMENSION = 512


def clustered(rows: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIMENSION)).astype(np.float32)
    matrix = centres[rng.integers(0, clusters, rows)] + 0.6 * rng.normal(size=(rows, DIMENSION)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def synthetic_catalog(rows: int, model: str) -> Path:
    """A catalog in the product's schema holding ``rows`` synthetic embeddings, with a fresh flat index."""
    from datasette_imgsearch.catalog.catalog import Catalog
    from datasette_imgsearch.catalog.schema import to_blob
    from datasette_imgsearch.models.names import model_key
    from datasette_imgsearch.vectors.index import write_index

    folder = Path(tempfile.mkdtemp())
    db = folder / "synthetic.db"
    catalog = Catalog(db, create=True)
    matrix = clustered(rows)
    with catalog.db.conn:
        catalog.db.conn.executemany(
            "insert into images (path, name, folder, size, modified, mtime_ns, hash, taken, embedding) "
            "values (?, ?, '', 1000, '2024-01-01T00:00:00+00:00', 0, ?, ?, ?)",
            ((f"{i:07d}.jpg", f"{i:07d}.jpg", f"{i:032x}", f"20{10 + i % 15}-01-01", to_blob(matrix[i])) for i in range(rows)),
        )
    catalog.set_meta(model=model_key(model), dimension=DIMENSION, folder=str(folder), folder_relative=".")
    write_index(catalog)
    catalog.close()
    return db


def sql_latencies(db: Path, model: str, count: int) -> dict[str, tuple[float, float]]:
    from datasette_imgsearch.search.registry import searcher_for
    from datasette_imgsearch.settings import Settings
    from datasette_imgsearch.sql.functions import register_functions

    searcher_for(db).load()
    conn = sqlite3.connect(db, check_same_thread=False)
    register_functions(conn, str(db), Settings(sql_wait_seconds=600))

    def run(sql: str, params) -> float:
        started = time.perf_counter()
        conn.execute(sql, params).fetchall()
        return time.perf_counter() - started

    for i in range(5):
        run("select imgsearch(?, 10)", [f"warming up {i}"])
    fresh = [run("select imgsearch(?, 10)", [f"a photo number {i}"]) for i in range(count)]
    repeated = [run("select imgsearch(?, 10)", ["a photo number 0"]) for _ in range(count)]
    scored = [run("select id from images where taken >= '2018' order by imgsearch_score(embedding, ?) desc limit 20",
                  [f"a filtered query {i}"]) for i in range(max(3, count // 10))]
    conn.close()
    return {"fresh": percentiles(fresh), "repeated": percentiles(repeated), "score": percentiles(scored)}


async def json_load(url: str, clients: int, requests: int, distinct: bool) -> tuple[tuple[float, float], int, float]:
    """``clients`` concurrent keep-alive clients, each sending ``requests`` requests one after another.

    Each client is opened and connected before the clock starts: creating an httpx client blocks the
    measuring process's event loop for tens of milliseconds, which would be charged to the server."""
    import httpx

    latencies: list[float] = []
    errors = 0
    https = [httpx.AsyncClient(timeout=60) for _ in range(clients)]
    await asyncio.gather(*(http.get(url, params={"q": "pool query 0", "k": 10}) for http in https))

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in range(requests):
            query = f"client {number} query {i}" if distinct else f"pool query {i % 10}"
            started = time.perf_counter()
            response = await http.get(url, params={"q": query, "k": 10})
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200

    started = time.perf_counter()
    await asyncio.gather(*(client(n, http) for n, http in enumerate(https)))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(http.aclose() for http in https))
    return percentiles(latencies), errors, len(latencies) / elapsed


def json_latencies(db: Path, clients: int, requests: int) -> dict[str, tuple]:
    with datasette_server(db) as (base, _):
        url = f"{base}/{db.stem}/images/-/imgsearch.json"
        asyncio.run(json_load(url, clients, 5, distinct=False))  # warm the pool's text cache
        return {
            "pool": asyncio.run(json_load(url, clients, requests, distinct=False)),
            "distinct": asyncio.run(json_load(url, clients, requests, distinct=True)),
        }


def scale(rows: int, kinds: list[str], queries: int = 100) -> list[list[object]]:
    """Exact and approximate search over ``rows`` vectors held in memory, with recall@10 against exact."""
    import faiss

    from datasette_imgsearch.vectors.index import filled_index, inner_index
    from datasette_imgsearch.vectors.kinds import kind_of
    from datasette_imgsearch.vectors.ranking import exact_scores, top_k

    matrix = clustered(rows, seed=1)
    ids = np.arange(1, rows + 1, dtype=np.int64)
    rng = np.random.default_rng(2)
    # A query near a stored picture (cosine about 0.8 to it), as a real "more like this" or a caption is.
    probes = matrix[rng.integers(0, rows, queries)] + 0.03 * rng.normal(size=(queries, DIMENSION)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)

    import torch

    from datasette_imgsearch.vectors.int8pass import table_for
    from datasette_imgsearch.vectors.ranking import FIRST_PASS_MARGIN, rescored_top_k

    first_pass = torch.from_numpy(matrix).bfloat16()
    codes = table_for(matrix)
    assert codes is not None and codes.pack()  # unit vectors: every value finite; packed, as from a server's second pass

    def plain(q: np.ndarray) -> list[int]:
        return [h.id for h in top_k(ids, exact_scores(matrix, [q])[0], 10, set(), None)]

    def two_pass(q: np.ndarray) -> list[int]:
        rough = exact_scores(first_pass, [q])[0]
        return [h.id for h in rescored_top_k(ids, matrix, q, rough, FIRST_PASS_MARGIN, 10, set(), None)]

    def int8_pass(q: np.ndarray) -> list[int]:
        rough, margins = codes.scores([q])
        return [h.id for h in rescored_top_k(ids, matrix, q, rough[0], float(margins[0]), 10, set(), None)]

    def measure(search) -> tuple[float, float, float]:
        samples, recall = [], []
        for q, expected in zip(probes, truth):
            started = time.perf_counter()
            found = search(q)
            samples.append(time.perf_counter() - started)
            recall.append(len(set(found) & set(expected)) / 10)
        return (*percentiles(samples), float(np.mean(recall)))

    truth = [plain(q) for q in probes]
    results = []
    for label, search, memory in (
        ("exact, float32 matrix-vector product", plain, matrix.nbytes),
        ("exact, bfloat16 first pass + float32 re-scoring (what `flat` does from 250k rows; 50k with native bfloat16)", two_pass,
         matrix.nbytes + first_pass.numel() * 2),
        ("exact, 8-bit first pass on ONNX Runtime + float32 re-scoring (what `flat` does from 20k rows without torch)",
         int8_pass, matrix.nbytes + codes.nbytes),
    ):
        p50, p95, recall = measure(search)
        results.append([label, "-", f"{p50:.1f}", f"{p95:.1f}", f"{recall:.3f}", f"{memory / 1e9:.2f}"])
    order = np.random.default_rng(0).permutation(len(ids))

    def sample(wanted: int) -> np.ndarray:
        return matrix[order[:wanted]]

    for kind in kinds:
        started = time.perf_counter()
        index = filled_index(kind_of(kind), DIMENSION, len(ids), sample, [(ids, matrix)])
        kind_of(kind).tune(inner_index(index))
        built = time.perf_counter() - started
        p50, p95, recall = measure(lambda q, index=index: index.search(q.reshape(1, -1), 10)[1][0].tolist())
        size = faiss.serialize_index(index).nbytes / 1e9
        label = "FAISS flat, one query at a time" if kind == "flat" else f"`index --type {kind}`"
        results.append([label, f"{built:.0f}", f"{p50:.1f}", f"{p95:.1f}", f"{recall:.3f}", f"{size:.2f}"])
        del index
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scale-rows", type=int, default=1_000_000)
    parser.add_argument("--types", default="flat,hnsw,ivf,sq8")
    parser.add_argument("--parts", default="queries,scale", help="queries (100k rows), scale (a million), or both")
    parser.add_argument("--runtime", choices=("torch", "onnx", "onnx-int8"), default="torch",
                        help="what encodes the queries: onnx exports the model into a cache of its own first, "
                             "onnx-int8 with an 8-bit text graph (export-onnx --int8-text)")
    args = parser.parse_args()
    saved = load_results("query" if args.runtime == "torch" else f"query-{args.runtime}")
    if args.runtime != "torch":
        # the export, found by every search here
        os.environ["IMGSEARCH_CACHE"] = str(CACHE / ("runtimes-cache" if args.runtime == "onnx" else "int8-text-cache"))
        from datasette_imgsearch.models.onnxclip import export, find_export

        if find_export(str(vit_b32())) is None:
            export(str(vit_b32()), int8_text=args.runtime == "onnx-int8")

    if "queries" in args.parts:
        saved.update(queries(args), rows=args.rows)
    if "scale" in args.parts:
        saved.update(scale=scale(args.scale_rows, args.types.split(",")), scale_rows=args.scale_rows)
    save_results("query" if args.runtime == "torch" else f"query-{args.runtime}", saved)
    if "scale" in saved:
        table(
            f"Search at {saved['scale_rows']:,} vectors, 512-d, one query at a time, k=10",
            ["method", "build s", "p50 ms", "p95 ms", "recall@10", "memory GB"],
            saved["scale"],
        )


def queries(args: argparse.Namespace) -> dict[str, object]:
    model = str(vit_b32())
    db = synthetic_catalog(args.rows, model)
    sql = sql_latencies(db, model, args.queries)
    web = json_latencies(db, args.clients, args.queries // 2)
    table(
        f"Queries at {args.rows:,} rows, 512-d, ViT-B/32 text tower (random weights) on {args.runtime}, warm",
        ["query", "p50 ms", "p95 ms"],
        [
            ["`imgsearch(q, 10)`, a new query each time (text encoding included)", *[f"{v:.1f}" for v in sql["fresh"]]],
            ["`imgsearch(q, 10)`, a repeated query", *[f"{v:.2f}" for v in sql["repeated"]]],
            ["`order by imgsearch_score(embedding, q)` over a WHERE (about 80% of rows)", *[f"{v:.0f}" for v in sql["score"]]],
            *[[f"JSON endpoint, {args.clients} concurrent clients, {name} queries ({rate:.0f} req/s, {errors} errors)",
               f"{p50:.1f}", f"{p95:.1f}"]
              for name, ((p50, p95), errors, rate) in (("repeated pool of 10", web["pool"]), ("all distinct", web["distinct"]))],
        ],
    )
    return {"sql": sql, "json": web}


if __name__ == "__main__":
    main()
