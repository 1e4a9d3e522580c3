"""Serving past a million rows: ten million rows on an ``ivfpq`` index, and queries during a build.

    python benchmarks/serving_scale.py --parts ten-million     # 10M rows: 42 GB of disk, 30 min on two cores
    python benchmarks/serving_scale.py --parts during-build    # a million rows, 10k added while querying: 10 min
    python benchmarks/serving_scale.py --parts filtered        # filters on a million rows with an ivfsq8 index
    python benchmarks/serving_scale.py --parts hidden          # rows changed in place since an index: 5 min
    python benchmarks/serving_scale.py --rows 2000000          # a smaller first part

Part 1 writes a catalog of synthetic clustered 512-d unit vectors (cached in benchmarks/.cache), writes
its ``ivfsq8`` (or ``--kind ivfpq``) index with the product's ``write_index``, then starts a fresh process that serves it the way
the plugin does (:class:`VectorStore`) and reports the time to the first answer, query latency, recall@10
against exact search over every stored vector, and the server's memory.

Part 3 (``--parts filtered``) ranks inside filters of 80% down to 0.1% of a million rows served from an
``ivfsq8`` index, reading the candidates' embeddings against searching the index restricted to them.

Part 4 (``--parts hidden``) changes rows of a 200,000-row catalog in place after its ``ivfsq8`` index was
written, and times index searches that leave the changed rows out with a FAISS selector against fetching
k + their number and skipping them (what a FAISS without selectors does).

Part 2 serves a million-row catalog (the default ``flat`` index) while another process commits 10,000
rows, 32 a transaction, as ``build`` does. It queries through :class:`Searcher` (text encoding and the
strength calibration included) the whole time, once catching up with the change log and once reading
every vector again at each commit, as the plugin did before.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from common import CACHE, ROOT, datasette_server, load_results, percentiles, save_results, table, vit_b32

DIMENSION = 512
CLUSTERS = 2000
CHUNK = 100_000
QUERIES = 200


def centres(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(CLUSTERS, DIMENSION)).astype(np.float32)


def clustered_chunk(start: int, count: int) -> np.ndarray:
    """Rows ``start`` .. ``start + count`` of the synthetic collection: the same rows whatever the chunking."""
    rng = np.random.default_rng([1, start])
    rows = centres()[rng.integers(0, CLUSTERS, count)] + 0.6 * rng.normal(size=(count, DIMENSION)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def synthetic_catalog(rows: int, model: str, kind: str) -> Path:
    """A catalog in the product's schema with ``rows`` synthetic vectors and an index of ``kind`` (cached)."""
    from datasette_imgsearch.catalog.catalog import Catalog
    from datasette_imgsearch.catalog.migrations import migrate
    from datasette_imgsearch.catalog.schema import to_blob
    from datasette_imgsearch.models.names import model_key
    from datasette_imgsearch.vectors.index import write_index

    db = CACHE / f"serving-{rows}.db"
    done = CACHE / f"serving-{rows}.{kind}.done"
    if done.exists():
        return db
    if not (CACHE / f"serving-{rows}.rows.done").exists() or not db.exists():
        for stale in CACHE.glob(f"serving-{rows}.db*"):
            stale.unlink()
        started = time.perf_counter()
        catalog = Catalog(db, create=True)
        catalog.set_meta(model=model_key(model), dimension=DIMENSION, folder=str(CACHE), folder_relative=".")
        conn = catalog.db.conn
        conn.execute("PRAGMA synchronous = OFF")
        # Ten million rows go in without the change-log triggers (a third of the time), which schema 3's
        # migration then puts back; the catalog is left as if it had been migrated after a build.
        conn.execute("DROP TRIGGER images_inserted")
        for start in range(0, rows, CHUNK):
            matrix = clustered_chunk(start, min(CHUNK, rows - start))
            with conn:
                conn.executemany(
                    "insert into images (path, name, folder, size, modified, mtime_ns, hash, taken, embedding) "
                    "values (?, ?, '', 1000, '2024-01-01T00:00:00+00:00', 0, ?, ?, ?)",
                    ((f"{i:08d}.jpg", f"{i:08d}.jpg", f"{i:032x}", f"20{10 + i % 15}-01-01", to_blob(vector))
                     for i, vector in zip(range(start, start + len(matrix)), matrix)),
                )
            print(f"\r{start + len(matrix):,} rows written", end="", file=sys.stderr, flush=True)
        print(f"\n{rows:,} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        with conn:
            conn.execute("update imgsearch_meta set value = 2 where key = 'schema_version'")
        migrate(conn)
        catalog.close()
        (CACHE / f"serving-{rows}.rows.done").touch()
    for other in CACHE.glob(f"serving-{rows}.*.done"):  # the index file is about to hold another type
        if other.name != f"serving-{rows}.rows.done":
            other.unlink()
    catalog = Catalog(db, write=True)
    started = time.perf_counter()
    write_index(catalog, kind)
    seconds = time.perf_counter() - started
    catalog.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    done.write_text(json.dumps({"seconds": seconds, "peak_gb": peak}))
    return db


def probes(rows: int, count: int = QUERIES) -> np.ndarray:
    """Queries near stored pictures (cosine about 0.8), as a caption or a "more like this" is."""
    rng = np.random.default_rng(2)
    picked = rng.integers(0, rows, count)
    vectors = np.stack([clustered_chunk(int(i), 1)[0] for i in picked])
    vectors += 0.03 * rng.normal(size=vectors.shape).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_truth(db: Path, queries: np.ndarray, k: int = 10) -> list[list[int]]:
    """Exact top k for each query over every stored vector, read in chunks (cached)."""
    from datasette_imgsearch.catalog.catalog import Catalog

    cached = db.with_suffix(".truth.npy")
    if cached.exists():
        return np.load(cached).tolist()
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    with Catalog(db) as catalog:
        for ids, matrix in catalog.iter_embeddings(200_000):
            scores = queries @ matrix.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            all_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
            all_ids = np.concatenate([best_ids, ids[top]], axis=1)
            order = np.argsort(-all_scores, axis=1)[:, :k]
            best_scores, best_ids = np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)
    np.save(cached, best_ids)
    return best_ids.tolist()


SERVE = """
import json, resource, sys, time
started = time.perf_counter()
import numpy as np
from datasette_imgsearch.vectors.store import VectorStore
store = VectorStore(sys.argv[1])
queries = np.load(sys.argv[2])
first = store.search(queries[0], 10, set(), None)
ready = time.perf_counter() - started
samples, found = [], []
for vector in queries:
    began = time.perf_counter()
    hits = store.search(vector, 10, set(), None)
    samples.append(time.perf_counter() - began)
    found.append([hit.id for hit in hits])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"ready": ready, "samples": samples, "found": found, "vectors_from": store.current().vectors_from,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "rss_anon_gb": int(status["RssAnon"].split()[0]) / 1e6,
                  "rss_file_gb": int(status["RssFile"].split()[0]) / 1e6}))
"""


def ten_million(rows: int, kind: str) -> list[list[object]]:
    model = str(vit_b32())
    db = synthetic_catalog(rows, model, kind)
    built = json.loads((CACHE / f"serving-{rows}.{kind}.done").read_text())
    queries = probes(rows)
    truth = exact_truth(db, queries)
    np.save(CACHE / "serving-queries.npy", queries)
    results = []
    for label in ("first start (cold page cache for the index)", "second start"):
        if label.startswith("first"):
            subprocess.run(["sync"], check=False)
            with open("/proc/sys/vm/drop_caches", "w") as handle:  # needs root; the figure says so when it cannot
                handle.write("1\n")
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", SERVE, str(db), str(CACHE / "serving-queries.npy")], cwd=ROOT,
                             capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - started
        served = json.loads(out.stdout.strip().splitlines()[-1])
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(served["found"], truth)])
        p50, p95 = percentiles(served["samples"])
        results.append([label, f"{wall:.1f}", f"{p50:.1f}", f"{p95:.1f}", f"{recall:.3f}",
                        f"{served['rss_anon_gb']:.2f} + {served['rss_file_gb']:.2f} mapped", served["vectors_from"]])
    started = time.perf_counter()
    with datasette_server(db) as (base, server):
        ready = time.perf_counter() - started
        samples = []
        for number in range(50):
            began = time.perf_counter()
            httpx.get(f"{base}/{db.stem}/images/-/imgsearch.json", params={"q": f"query number {number}", "k": 10},
                      timeout=60).raise_for_status()
            samples.append(time.perf_counter() - began)
        status = dict(line.split(":", 1) for line in Path(f"/proc/{server.pid}/status").read_text().splitlines() if ":" in line)
        anon, mapped = (int(status[key].split()[0]) / 1e6 for key in ("RssAnon", "RssFile"))
    p50, p95 = percentiles(samples)
    results.append(["`datasette serve`, the JSON endpoint (ViT-B/32 text encoding included)", f"{ready:.1f}", f"{p50:.1f}",
                    f"{p95:.1f}", "", f"{anon:.2f} + {mapped:.2f} mapped", "the plugin"])
    index_gb = (Path(str(db) + ".faiss")).stat().st_size / 1e9
    results.append([f"index written in {built['seconds'] / 60:.1f} min, peak memory {built['peak_gb']:.1f} GB, "
                    f"file {index_gb:.2f} GB; catalog {db.stat().st_size / 1e9:.1f} GB", "", "", "", "", "", ""])
    return results


def writer(db: str, rows: int, per_commit: int, pause: float, done: multiprocessing.Event) -> None:
    """Commit ``rows`` new rows, ``per_commit`` a transaction, as a build does."""
    from datasette_imgsearch.catalog.schema import to_blob

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA busy_timeout = 5000")
    matrix = clustered_chunk(10**9, rows)
    for start in range(0, rows, per_commit):
        with conn:
            conn.executemany(
                "insert into images (path, name, folder, size, modified, mtime_ns, hash, embedding) "
                "values (?, ?, '', 1000, '2024-01-01T00:00:00+00:00', 0, ?, ?)",
                ((f"new-{i:06d}.jpg", f"new-{i:06d}.jpg", f"new{i:029x}", to_blob(matrix[i]))
                 for i in range(start, min(rows, start + per_commit))),
            )
        time.sleep(pause)
    conn.close()
    done.set()


def during_build(rows: int, added: int) -> list[list[object]]:
    import shutil

    from datasette_imgsearch.search.searcher import Searcher
    from datasette_imgsearch.vectors import snapshot

    model = str(vit_b32())
    source = synthetic_catalog(rows, model, "flat")
    defaults = snapshot.CATCH_UP_MIN_ROWS, snapshot.CATCH_UP_SHARE
    results = []
    for label, catch_up in (("no build running (the baseline: same queries, same seconds)", None),
                            ("catching up with the change log (now)", True),
                            ("reading every vector at each commit (before)", False)):
        db = CACHE / "during-build.db"
        for stale in CACHE.glob("during-build.db*"):
            stale.unlink()
        shutil.copy(source, db)
        shutil.copy(str(source) + ".faiss", str(db) + ".faiss")
        if catch_up is False:
            snapshot.CATCH_UP_MIN_ROWS, snapshot.CATCH_UP_SHARE = 0, 0.0
        searcher = Searcher(db)
        searcher.search("warm up", 10)
        done = multiprocessing.Event()
        process = multiprocessing.Process(target=writer, args=(str(db), added, 32, 0.05, done))
        began = time.perf_counter()
        if catch_up is None:
            threading.Timer(20, done.set).start()
        else:
            process.start()
        samples, number = [], 0
        while not done.is_set():
            started = time.perf_counter()
            searcher.search(f"query number {number}", 10)
            samples.append(time.perf_counter() - started)
            number += 1
        if catch_up is not None:
            process.join()
        seconds = time.perf_counter() - began
        p50, p95 = percentiles(samples)
        results.append([label, f"{len(samples)}", f"{seconds:.0f}", f"{p50:.0f}", f"{p95:.0f}", f"{max(samples) * 1000:.0f}"])
        snapshot.CATCH_UP_MIN_ROWS, snapshot.CATCH_UP_SHARE = defaults
    return results


FILTERS = {"80% of rows": 5, "10%": 10, "3%": 33, "1%": 100, "0.1%": 1000}  # id % n != 0 passes (80%), else == 0


def filtered(rows: int, kind: str, count: int = 20, exact_count: int = 5) -> list[list[object]]:
    """Filtered search over an approximate index, both ways: the candidates' stored embeddings read and
    ranked exactly, and the index searched restricted to them; the store picks the first up to
    ``store.EXACT_CANDIDATES`` candidates or under ``store.RESTRICTED_SHARE`` of the rows. Recall@10 of
    the restricted search against the exact ranking, over the queries the exact way ran."""
    from datasette_imgsearch.vectors import store

    db = synthetic_catalog(rows, str(vit_b32()), kind)
    queries = probes(rows, count)
    server = store.VectorStore(db)
    server.current()
    ids = np.arange(1, rows + 1, dtype=np.int64)
    defaults = store.EXACT_CANDIDATES, store.RESTRICTED_SHARE
    results = []
    for label, modulus in FILTERS.items():
        candidates = ids[ids % modulus != 0] if modulus == 5 else ids[ids % modulus == 0]
        found: dict[str, list[list[int]]] = {}
        rows_now = []
        ways = (("embeddings read, exact", rows, queries[:exact_count]), ("index restricted to them", 0, queries))
        for way, limit, measured in ways:
            store.EXACT_CANDIDATES, store.RESTRICTED_SHARE = limit, 0.0
            samples, found[way] = [], []
            for vector in measured:
                began = time.perf_counter()
                hits = server.search(vector, 10, set(), None, candidates)
                samples.append(time.perf_counter() - began)
                found[way].append([hit.id for hit in hits])
            chosen = (len(candidates) > max(defaults[0], defaults[1] * rows)) == (limit == 0)
            overlaps = [len(set(a) & set(b)) / 10 for a, b in zip(found[way], found["embeddings read, exact"])]
            recall = "" if limit else f"{np.mean(overlaps):.3f}"
            rows_now.append([label, f"{len(candidates):,}", way + (" (chosen)" if chosen else ""), f"{len(samples)}",
                             f"{percentiles(samples)[0]:.1f}", recall])
        results.extend(reversed(rows_now))
        store.EXACT_CANDIDATES, store.RESTRICTED_SHARE = defaults
    return results


HIDDEN_ROWS = 200_000


def hidden(kind: str, count: int = 50) -> list[list[object]]:
    """Index searches after rows were changed in place (their old vectors hidden), both ways."""
    import shutil
    import tempfile

    from datasette_imgsearch.catalog.schema import to_blob
    from datasette_imgsearch.vectors import store

    source = synthetic_catalog(HIDDEN_ROWS, str(vit_b32()), kind)
    folder = Path(tempfile.mkdtemp(dir=CACHE))
    db = folder / source.name
    for suffix in ("", ".faiss"):
        shutil.copy(str(source) + suffix, str(db) + suffix)
    queries = probes(HIDDEN_ROWS, count)
    rng = np.random.default_rng(5)
    selector = store.hiding
    ways = {"left out by a selector": selector, "k + hidden fetched, then skipped": lambda *args: None}
    order = rng.permutation(np.arange(1, HIDDEN_ROWS + 1))
    results, changed = [], 0
    try:
        for total in (1_000, 10_000, 24_000):  # a delta holds each changed row twice: under a quarter of the rows
            ids, changed = order[changed:total], total
            vectors = clustered_chunk(HIDDEN_ROWS + total, len(ids))  # new pictures in the same clusters
            with sqlite3.connect(db) as conn:
                conn.executemany("update images set embedding = ? where id = ?",
                                 ((to_blob(v), int(i)) for v, i in zip(vectors, ids)))
            server = store.VectorStore(db)
            loaded = server.current()
            found = {}
            for way, hide in ways.items():
                store.hiding, server._hidden_rows = hide, None
                samples, found[way] = [], []
                for vector in queries:
                    began = time.perf_counter()
                    hits = server.search(vector, 10, set(), None)
                    samples.append(time.perf_counter() - began)
                    found[way].append([hit.id for hit in hits])
                p50, p95 = percentiles(samples)
                results.append([f"{len(loaded.delta.hidden):,}", way, f"{p50:.1f}", f"{p95:.1f}"])
            same = "yes" if found["left out by a selector"] == found["k + hidden fetched, then skipped"] else "no"
            results[-2].append(same)
            results[-1].append(same)
    finally:
        store.hiding = selector
        shutil.rmtree(folder)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--build-rows", type=int, default=1_000_000)
    parser.add_argument("--added", type=int, default=10_000)
    parser.add_argument("--parts", default="ten-million,during-build,filtered,hidden")
    parser.add_argument("--kind", default="ivfsq8", help="the index type of part 1: ivfsq8 or ivfpq")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    saved = load_results("serving")
    if "ten-million" in args.parts:
        saved.setdefault("scale", {})[args.kind] = ten_million(args.rows, args.kind)
        saved["rows"] = args.rows
    if "during-build" in args.parts:
        saved.update(during=during_build(args.build_rows, args.added), build_rows=args.build_rows, added=args.added)
    if "filtered" in args.parts:
        saved.setdefault("filtered", {})[args.kind] = filtered(args.build_rows, args.kind)
        saved["filtered_rows"] = args.build_rows
    if "hidden" in args.parts:
        saved["hidden"] = hidden("ivfsq8")
    save_results("serving", saved)
    for kind, rows in saved.get("scale", {}).items():
        table(f"Serving {saved['rows']:,} rows from an `{kind}` index, 512-d, k=10, {QUERIES} queries",
              ["start", "ready s", "p50 ms", "p95 ms", "recall@10", "server memory GB", "vectors from"], rows)
    for kind, rows in saved.get("filtered", {}).items():
        table(f"Filtered search on {saved['filtered_rows']:,} rows with an `{kind}` index, k=10, no text encoding",
              ["filter passes", "candidates", "way", "queries", "p50 ms", "recall@10 against the exact way"], rows)
    if "hidden" in saved:
        table(f"Index searches on {HIDDEN_ROWS:,} rows of `ivfsq8` after rows changed in place, k=10, no text encoding",
              ["rows hidden", "way", "p50 ms", "p95 ms", "same top 10"], saved["hidden"])
    if "during" in saved:
        table(f"Text queries on {saved['build_rows']:,} rows while a build commits {saved['added']:,} more, 32 a transaction",
              ["server", "queries", "seconds", "p50 ms", "p95 ms", "max ms"], saved["during"])


if __name__ == "__main__":
    main()
