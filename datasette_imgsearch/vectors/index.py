"""The sibling FAISS index: built from the catalog's embeddings, keyed by ``images.id``.

The index is derived data. The catalog is the source of truth, and records the ``catalog_version`` an
index was written at plus the file's SHA-256, so a reader can always tell a fresh index from a stale
or foreign one and fall back to the stored embeddings instead of returning wrong rows.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from datasette_imgsearch.catalog.catalog import Catalog, file_stamp
from datasette_imgsearch.catalog.schema import index_path
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.vectors.kinds import DEFAULT_KIND, IndexKind, kind_of

CHUNK_ROWS = 50_000  # the embeddings an index write holds in memory at once


def inner_index(index: Any) -> Any:  # faiss.Index -> faiss.Index (faiss is imported when first needed)
    """The index that holds the vectors, typed: the one an ``IDMap2`` wraps, or ``index`` itself."""
    import faiss

    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)


@dataclass(frozen=True)
class Restriction:
    """FAISS search parameters that keep a search to some rows, with the selectors and bitmap they point
    into (which must live as long as they do)."""

    params: Any
    keep: tuple[Any, ...]


def restricted_to(index: Any, kind: IndexKind, ids: np.ndarray, share: float) -> Restriction | None:  # index: faiss.Index
    """Parameters that keep a search of ``index`` to the rows ``ids`` (unique, ``share`` of its rows); None
    where this FAISS has no search-time selectors. A bitmap over the ids costs a bit per possible id,
    1.25 MB at ten million rows.

    The search goes 1/share times as wide as the kind's own tuning (probes of an IVF index, candidates of
    an HNSW graph, up to a cap), so that it meets as many allowed rows as an unfiltered search meets rows."""
    import faiss

    if not hasattr(faiss, "IDSelectorBitmap") or not hasattr(faiss, "SearchParametersIVF") or len(ids) == 0:
        return None
    size = int(ids.max()) + 1
    allowed = np.zeros(size, dtype=bool)
    allowed[ids] = True
    bitmap = np.packbits(allowed, bitorder="little")  # FAISS reads bit i of byte i >> 3 as id i
    selector = faiss.IDSelectorBitmap(size, faiss.swig_ptr(bitmap))
    return Restriction(kind.widened(inner_index(index), selector, 1 / max(share, 1e-9)), (selector, bitmap))


def hiding(index: Any, kind: IndexKind, hidden: np.ndarray, share: float) -> Restriction | None:  # index: faiss.Index
    """Parameters that keep a search of ``index`` off the rows ``hidden`` (changed or removed since it was
    written; ``share`` of its rows remain), widened as :func:`restricted_to` widens; None where this FAISS
    has no search-time selectors. Without them a search fetches k + len(hidden) rows and skips the hidden
    ones, reading as many embeddings from SQLite for a re-ranked type, which is far slower
    (``benchmarks/serving_scale.py --parts hidden``)."""
    import faiss

    if not all(hasattr(faiss, name) for name in ("IDSelectorNot", "IDSelectorBatch", "SearchParametersIVF")):
        return None
    ids = np.ascontiguousarray(hidden, dtype=np.int64)
    batch = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))  # copies the ids into a hash set
    selector = faiss.IDSelectorNot(batch)
    return Restriction(kind.widened(inner_index(index), selector, 1 / max(share, 1e-9)), (selector, batch))


def flat_vectors(index: Any) -> tuple[np.ndarray, np.ndarray] | None:  # index: faiss.Index
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


HASHED = LRU[str](64)  # (path, stamp) -> sha256: this process hashes each index file once


def sha256_once(path: Path) -> str:
    key = (str(path), file_stamp(path))
    digest = HASHED.get(key)
    if digest is None:
        digest = sha256_of(path)
        HASHED.put(key, digest)
    return digest


def filled_index(
    kind: IndexKind, dimension: int, count: int, sample: Callable[[int], np.ndarray],
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
) -> Any:  # faiss.Index
    """An index of ``kind`` holding ``count`` vectors: trained on ``sample(n)`` (the n vectors it asks
    for), then filled with the (ids, matrix) ``chunks``."""
    index = kind.make(dimension, count)
    if not index.is_trained and count:
        wanted = kind.training_rows(inner_index(index), count)
        index.train(np.ascontiguousarray(sample(wanted), dtype=np.float32))
    for ids, matrix in chunks:
        index.add_with_ids(np.ascontiguousarray(matrix, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def write_index(catalog: Catalog, kind: str | None = None) -> Path:
    """Rebuild the index file from the stored embeddings, atomically, and record its fingerprint.

    The embeddings are read in chunks from one snapshot of the catalog, so a catalog's vectors never sit
    in memory all at once; training reads a random sample of them first."""
    import faiss

    kind = kind or catalog.meta("index_type") or DEFAULT_KIND
    with catalog.snapshot():
        version = catalog.catalog_version
        count = catalog.count()
        dimension = int(catalog.meta("dimension") or 0)
        index = filled_index(kind_of(kind), dimension, count, catalog.sample_embeddings, catalog.iter_embeddings(CHUNK_ROWS))
        largest = catalog.largest_id()
    target = index_path(catalog.path)
    temporary = target.with_name(target.name + ".tmp")
    faiss.write_index(index, str(temporary))
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    # The new file's facts are recorded before it takes the old one's place (a rename keeps its size, time
    # and inode, so its stamp stays true): a reader in between sees the old file as not the catalog's and
    # reads the stored embeddings, then the swap changes what it watches and it loads the new file.
    catalog.index_written(index_type=kind, index_version=version, index_sha256=sha256_of(temporary), index_count=count,
                          index_largest_id=largest, index_stamp=file_stamp(temporary))
    os.replace(temporary, target)
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
    at an older version is stale, but a server can catch it up from the change log (see snapshot.py)."""
    path = index_path(catalog.path)
    if not path.exists():
        return IndexState(False, f"missing: {path.name} does not exist")
    same_file = catalog.meta("index_stamp") == file_stamp(path)
    if not same_file and sha256_once(path) != catalog.meta("index_sha256"):
        return IndexState(False, f"stale: {path.name} is not the file this catalog wrote")
    if catalog.meta("index_version") != catalog.catalog_version:
        return IndexState(False, "stale: the catalog changed after the index was written", written_by_catalog=True)
    return IndexState(True, f"fresh: {catalog.meta('index_type')} index of {catalog.meta('index_count')} vectors", True)


def read_index(path: Path, kind: str | None = None) -> Any:  # -> faiss.Index
    """The index file, memory-mapped where FAISS can map it, else read in full: the inverted lists of the
    IVF types, and the codes of the others (``IO_FLAG_MMAP_IFC``: an ``sq8`` or ``hnsw`` index then costs
    pages the OS can share between servers and drop, not each server's memory). ``kind`` sets its
    search-time knobs (kinds.py)."""
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
    kind_of(kind).tune(inner_index(index))
    return index
