"""The sibling FAISS index: built from the catalog's embeddings, keyed by ``images.id``.

The index is derived data. The catalog is the source of truth, and records the ``catalog_version`` an
index was written at plus the file's SHA-256, so a reader can always tell a fresh index from a stale
or foreign one and fall back to the stored embeddings instead of returning wrong rows.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import index_path

INDEX_TYPES: dict[str, str] = {
    "flat": "exact inner product over every vector (the default; best for up to a few million images)",
    "hnsw": "HNSW graph: approximate, about 1 ms a query at a million rows, more memory",
    "ivf": "inverted lists over k-means cells: approximate, quick to build",
    "sq8": "8-bit scalar quantised, exact scan: a quarter of the memory, approximate scores",
    "ivfsq8": "inverted lists of 8-bit codes, memory-mapped, re-ranked exactly from the stored embeddings: "
              "ten million images in 5 GB",
    "ivfpq": "inverted lists of product-quantised codes (a byte per four dimensions), memory-mapped, re-ranked "
             "exactly from the stored embeddings: for tens of millions of images and more",
}
# Index types whose scores are rough: a search takes this many candidates at least from the index and
# re-scores them exactly from the catalog's stored embeddings (measured on dense synthetic clusters:
# 8-bit codes rank the true top 10 within their first 30, product codes within their first 300).
RERANKED_TYPES = {"ivfsq8": 30, "ivfpq": 300}
HNSW_EF_SEARCH = 512
HNSW_RESTRICTED_EF = 8192  # the widest a search restricted to a filter's rows explores an HNSW graph
IVF_PROBES = 32
IVF_SQ8_PROBES = 16
TRAINING_POINTS_PER_CELL = 64
PQ_CELLS_PER_ROOT = 0.65  # 2,055 cells at ten million rows
PQ_TRAINING_POINTS_PER_CELL = 40
PQ_BYTES_PER_DIMENSION = 1 / 4  # 128 one-byte codes for a 512-d vector: 64 ranked the true top 10 too poorly
CHUNK_ROWS = 50_000  # the embeddings an index write holds in memory at once


def new_index(dimension: int, count: int, kind: str = "flat"):  # -> faiss.Index
    """An empty FAISS inner-product index for ``count`` vectors, keyed by row id, still to be trained."""
    import faiss

    if kind not in INDEX_TYPES:
        raise ValueError(f"unknown index type {kind!r}: use one of {', '.join(INDEX_TYPES)}")
    if kind == "ivf":
        cells = max(1, min(int(4 * math.sqrt(count)), count // 39))
        return faiss.index_factory(dimension, f"IVF{cells},Flat", faiss.METRIC_INNER_PRODUCT)
    if kind in ("ivfsq8", "ivfpq"):
        # Fewer, larger cells than ``ivf``: k-means over a few thousand cells is what a build on two cores
        # can afford at ten million rows, and an HNSW graph over the centroids assigns each vector quickly.
        cells = max(1, min(int(PQ_CELLS_PER_ROOT * math.sqrt(count)), count // PQ_TRAINING_POINTS_PER_CELL))
        quantizer = f"IVF{cells}_HNSW32" if cells >= 1024 else f"IVF{cells}"
        if kind == "ivfsq8":
            return faiss.index_factory(dimension, f"{quantizer},SQ8", faiss.METRIC_INNER_PRODUCT)
        bits = max(1, min(8, int(math.log2(max(count, 2)))))  # k-means needs a point per centroid at least
        index = faiss.index_factory(dimension, f"{quantizer},PQ{_pq_codes(dimension)}x{bits}", faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # a Hamming pre-filter this index never uses; it was 98% of training
        return index
    factory = {"flat": "IDMap2,Flat", "hnsw": "IDMap2,HNSW32", "sq8": "IDMap2,SQ8"}[kind]
    return faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)


def _pq_codes(dimension: int) -> int:
    """The most sub-quantisers, up to one per eight dimensions, that divide the dimension."""
    codes = max(1, int(dimension * PQ_BYTES_PER_DIMENSION))
    while dimension % codes:
        codes -= 1
    return codes


def inner_index(index):  # index: faiss.Index -> faiss.Index
    """The index that holds the vectors, typed: the one an ``IDMap2`` wraps, or ``index`` itself."""
    import faiss

    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)


def training_size(index, count: int) -> int:  # index: faiss.Index
    """How many vectors training needs: k-means wants a few dozen points a cell, not millions."""
    import faiss

    inner = inner_index(index)
    if isinstance(inner, faiss.IndexIVFPQ):
        return min(count, max(PQ_TRAINING_POINTS_PER_CELL * inner.nlist, 39 * inner.pq.ksub))  # and each code's k-means
    if isinstance(inner, faiss.IndexIVF):
        return min(count, TRAINING_POINTS_PER_CELL * inner.nlist)
    return count


def make_index(ids: np.ndarray, matrix: np.ndarray, kind: str = "flat"):  # -> faiss.Index
    """A FAISS inner-product index holding ``matrix`` (in memory) under the labels ``ids``."""
    index = new_index(matrix.shape[1], len(ids), kind)
    if not index.is_trained and len(ids):
        wanted = training_size(index, len(ids))
        sample = np.random.default_rng(0).permutation(len(ids))[:wanted] if wanted < len(ids) else slice(None)
        index.train(np.ascontiguousarray(matrix[sample], dtype=np.float32))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(matrix, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def tune(index) -> None:  # index: faiss.Index
    """Set the search-time knobs that trade speed for recall."""
    import faiss

    inner = inner_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    elif isinstance(inner, faiss.IndexIVFScalarQuantizer):  # its re-ranked 8-bit codes keep recall at fewer cells
        inner.nprobe = min(IVF_SQ8_PROBES, inner.nlist)
    elif isinstance(inner, faiss.IndexIVF):
        inner.nprobe = min(IVF_PROBES, inner.nlist)


@dataclass(frozen=True)
class Restriction:
    """FAISS search parameters that keep a search to some rows, with the selectors and bitmap they point
    into (which must live as long as they do)."""

    params: Any
    keep: tuple[Any, ...]


def restricted_to(index, ids: np.ndarray, share: float) -> Restriction | None:  # index: faiss.Index
    """Parameters that keep a search of ``index`` to the rows ``ids`` (unique, ``share`` of its rows); None
    where this FAISS has no search-time selectors. A bitmap over the ids costs a bit per possible id,
    1.25 MB at ten million rows.

    The search goes 1/share times as wide as :func:`tune` sets (probes of an IVF index, candidates of an
    HNSW graph, up to ``HNSW_RESTRICTED_EF``), so that it meets as many allowed rows as an unfiltered
    search meets rows: with 16 probes, a filter passing 1% of a million rows found 4 to 7 of the true 10."""
    import faiss

    if not hasattr(faiss, "IDSelectorBitmap") or not hasattr(faiss, "SearchParametersIVF") or len(ids) == 0:
        return None
    size = int(ids.max()) + 1
    allowed = np.zeros(size, dtype=bool)
    allowed[ids] = True
    bitmap = np.packbits(allowed, bitorder="little")  # FAISS reads bit i of byte i >> 3 as id i
    selector = faiss.IDSelectorBitmap(size, faiss.swig_ptr(bitmap))
    return Restriction(_widened(index, selector, share), (selector, bitmap))


def hiding(index, hidden: np.ndarray, share: float) -> Restriction | None:  # index: faiss.Index
    """Parameters that keep a search of ``index`` off the rows ``hidden`` (changed or removed since it was
    written; ``share`` of its rows remain), widened as :func:`restricted_to` widens; None where this FAISS
    has no search-time selectors. Without them a search fetches k + len(hidden) rows and skips the hidden
    ones, reading as many embeddings from SQLite for a re-ranked type: with 10,000 of 200,000 rows hidden
    behind an ``ivfsq8`` index, 116 ms a query against 6 (``benchmarks/serving_scale.py --parts hidden``)."""
    import faiss

    if not all(hasattr(faiss, name) for name in ("IDSelectorNot", "IDSelectorBatch", "SearchParametersIVF")):
        return None
    ids = np.ascontiguousarray(hidden, dtype=np.int64)
    batch = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))  # copies the ids into a hash set
    selector = faiss.IDSelectorNot(batch)
    return Restriction(_widened(index, selector, share), (selector, batch))


def _widened(index, selector, share: float):  # -> faiss.SearchParameters
    """Search parameters with ``selector``, 1/share times as wide as the index's own."""
    import faiss

    inner = inner_index(index)
    widen = 1 / max(share, 1e-9)
    if isinstance(inner, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(inner.nlist, math.ceil(inner.nprobe * widen)))
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=min(HNSW_RESTRICTED_EF, math.ceil(inner.hnsw.efSearch * widen)))
    return faiss.SearchParameters(sel=selector)


def flat_vectors(index) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, matrix) of an exact flat index, for the numpy fast path; ``None`` for other types."""
    import faiss

    if not hasattr(index, "id_map"):
        return None
    inner = faiss.downcast_index(index.index)
    if type(inner) is not faiss.IndexFlatIP:
        return None
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    matrix = np.ascontiguousarray(inner.reconstruct_n(0, inner.ntotal), dtype=np.float32).reshape(inner.ntotal, inner.d)
    return ids, matrix


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_stamp(path: Path) -> str:
    """Size, modification time and inode: what changes whenever another file takes this one's place."""
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"


_hashed: dict[tuple[str, str], str] = {}  # (path, stamp) -> sha256: each process hashes a file once


def sha256_once(path: Path) -> str:
    key = (str(path), file_stamp(path))
    if key not in _hashed:
        _hashed[key] = sha256_of(path)
    return _hashed[key]


def write_index(catalog: Catalog, kind: str | None = None) -> Path:
    """Rebuild the index file from the stored embeddings, atomically, and record its fingerprint.

    The embeddings are read in chunks from one snapshot of the catalog, so ten million rows (20 GB of
    vectors) never sit in memory at once; training reads a random sample of them first."""
    import faiss

    kind = kind or catalog.meta("index_type") or "flat"
    with catalog.snapshot():
        version = catalog.catalog_version
        count = catalog.count()
        dimension = int(catalog.meta("dimension") or 0)
        index = new_index(dimension, count, kind)
        if not index.is_trained and count:
            index.train(np.ascontiguousarray(catalog.sample_embeddings(training_size(index, count)), dtype=np.float32))
        largest = 0
        for ids, matrix in catalog.iter_embeddings(CHUNK_ROWS):
            index.add_with_ids(np.ascontiguousarray(matrix, dtype=np.float32), ids)
            largest = int(ids[-1])
    target = index_path(catalog.path)
    temporary = target.with_name(target.name + ".tmp")
    faiss.write_index(index, str(temporary))
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    catalog.index_written(index_type=kind, index_version=version, index_sha256=sha256_of(target), index_count=count,
                          index_largest_id=largest, index_stamp=file_stamp(target))
    return target


@dataclass(frozen=True)
class IndexState:
    """Whether the index file on disk matches the catalog's rows."""

    fresh: bool
    reason: str
    written_by_catalog: bool = False  # the file this catalog wrote, fresh or at an older catalog_version


def index_state(catalog: Catalog) -> IndexState:
    """Fresh when the index is the very file this catalog wrote, at its current version.

    That file is recognised by its stamp (size, time, inode) as recorded at writing; any other file (a
    copy, another catalog's index) is hashed, once per process, and compared with the recorded hash.
    Hashing at every reload read the whole file each time a build committed. A file the catalog wrote
    at an older version is stale, but a server can catch it up from the change log (see store.py)."""
    path = index_path(catalog.path)
    if not path.exists():
        return IndexState(False, f"missing: {path.name} does not exist")
    same_file = catalog.meta("index_stamp") == file_stamp(path)
    if not same_file and sha256_once(path) != catalog.meta("index_sha256"):
        return IndexState(False, f"stale: {path.name} is not the file this catalog wrote")
    if catalog.meta("index_version") != catalog.catalog_version:
        return IndexState(False, "stale: the catalog changed after the index was written", written_by_catalog=True)
    return IndexState(True, f"fresh: {catalog.meta('index_type')} index of {catalog.meta('index_count')} vectors", True)


def read_index(path: Path):  # -> faiss.Index
    """The index file, memory-mapped where FAISS can map it, else read in full: the inverted lists of the
    IVF types, and the codes of the others (``IO_FLAG_MMAP_IFC``: an ``sq8`` or ``hnsw`` index then costs
    pages the OS can share between servers and drop, not each server's memory; 400,000 rows of ``hnsw``
    took 46 MB of a process's own memory instead of 927)."""
    import faiss

    read_only = getattr(faiss, "IO_FLAG_READ_ONLY", 0)
    mapped = getattr(faiss, "IO_FLAG_MMAP", None)
    ways = [] if mapped is None else [mapped | read_only]
    if mapped is not None and hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        ways.insert(0, mapped | faiss.IO_FLAG_MMAP_IFC | read_only)  # FAISS refuses it for inverted lists
    index = None
    for flags in ways:
        try:
            index = faiss.read_index(str(path), flags)
            break
        except RuntimeError:  # a type FAISS cannot map this way
            continue
    if index is None:
        index = faiss.read_index(str(path))
    tune(index)
    return index
