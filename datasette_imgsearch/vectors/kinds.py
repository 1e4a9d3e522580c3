"""The kinds of FAISS index a catalog can have, one entry each: how to make it, how much it needs to be
trained on, its search-time knobs, how a search restricted to some rows widens, and whether its
scores are rough enough to be re-ranked exactly from the stored embeddings. Adding a kind is adding
an entry to :data:`KINDS`; the command line, the index writer, the store and the tests read it.

Every kind is an inner-product index keyed by ``images.id``. The numbers below were chosen by the
benchmarks in ``benchmarks/`` (figures in docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

HNSW_EF_SEARCH = 512
HNSW_RESTRICTED_EF = 8192  # the widest a search restricted to a filter's rows explores an HNSW graph
IVF_PROBES = 32
IVF_SQ8_PROBES = 16  # re-ranked 8-bit codes keep their recall at fewer cells
TRAINING_POINTS_PER_CELL = 64
COARSE_CELLS_PER_ROOT = 0.65  # the quantised IVF kinds: fewer, larger cells than ``ivf``
COARSE_TRAINING_POINTS_PER_CELL = 40
PQ_BYTES_PER_DIMENSION = 1 / 4  # one one-byte code per four dimensions: fewer ranked the true top 10 too poorly


def _flat_kind(factory: str) -> Callable[[int, int], Any]:
    def make(dimension: int, count: int) -> Any:
        import faiss

        return faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)

    return make


def _ivf(dimension: int, count: int) -> Any:
    import faiss

    cells = max(1, min(int(4 * math.sqrt(count)), count // 39))
    return faiss.index_factory(dimension, f"IVF{cells},Flat", faiss.METRIC_INNER_PRODUCT)


def _coarse_cells(count: int) -> str:
    """The coarse quantiser of the quantised IVF kinds: k-means over a few thousand cells is what a build
    on two cores can afford at ten million rows, and an HNSW graph over the centroids assigns each
    vector quickly once there are many."""
    cells = max(1, min(int(COARSE_CELLS_PER_ROOT * math.sqrt(count)), count // COARSE_TRAINING_POINTS_PER_CELL))
    return f"IVF{cells}_HNSW32" if cells >= 1024 else f"IVF{cells}"


def _ivfsq8(dimension: int, count: int) -> Any:
    import faiss

    return faiss.index_factory(dimension, f"{_coarse_cells(count)},SQ8", faiss.METRIC_INNER_PRODUCT)


def _ivfpq(dimension: int, count: int) -> Any:
    import faiss

    bits = max(1, min(8, int(math.log2(max(count, 2)))))  # k-means needs a point per centroid at least
    index = faiss.index_factory(dimension, f"{_coarse_cells(count)},PQ{pq_codes(dimension)}x{bits}", faiss.METRIC_INNER_PRODUCT)
    index.do_polysemous_training = False  # type: ignore[attr-defined]  # (an IndexIVFPQ's, which faiss's stubs type as Index)
    # a Hamming pre-filter this index never uses: most of the training time
    return index


def pq_codes(dimension: int) -> int:
    """The most sub-quantisers, up to ``PQ_BYTES_PER_DIMENSION`` of the dimensions, that divide the dimension."""
    codes = max(1, int(dimension * PQ_BYTES_PER_DIMENSION))
    while dimension % codes:
        codes -= 1
    return codes


def _every_row(inner: Any, count: int) -> int:
    return count


def _per_cell(inner: Any, count: int) -> int:
    return min(count, TRAINING_POINTS_PER_CELL * inner.nlist)


def _per_coarse_cell_and_code(inner: Any, count: int) -> int:
    return min(count, max(COARSE_TRAINING_POINTS_PER_CELL * inner.nlist, 39 * inner.pq.ksub))  # each code's k-means too


def _untuned(inner: Any) -> None:
    pass


def _probes(probes: int) -> Callable[[Any], None]:
    def tune(inner: Any) -> None:
        inner.nprobe = min(probes, inner.nlist)

    return tune


def _hnsw_tune(inner: Any) -> None:
    inner.hnsw.efSearch = HNSW_EF_SEARCH


def _selected(inner: Any, selector: Any, widen: float) -> Any:
    import faiss

    return faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]  # faiss's stubs lack SWIG's keywords


def _ivf_widened(inner: Any, selector: Any, widen: float) -> Any:
    import faiss

    return faiss.SearchParametersIVF(  # type: ignore[call-arg]  # faiss's stubs lack SWIG's keywords
        sel=selector, nprobe=min(inner.nlist, math.ceil(inner.nprobe * widen))
    )


def _hnsw_widened(inner: Any, selector: Any, widen: float) -> Any:
    import faiss

    return faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # missing from faiss's stubs
        sel=selector, efSearch=min(HNSW_RESTRICTED_EF, math.ceil(inner.hnsw.efSearch * widen))
    )


@dataclass(frozen=True)
class IndexKind:
    """One kind of index. The callables take the *inner* index, the one that holds the vectors (the one an
    ``IDMap2`` wraps, or the index itself)."""

    name: str
    description: str
    make: Callable[[int, int], Any]  # (dimension, rows) -> an empty index, still to be trained
    training_rows: Callable[[Any, int], int] = _every_row  # (inner, rows) -> how many vectors training needs
    tune: Callable[[Any], None] = _untuned  # set the search-time knobs that trade speed for recall
    widened: Callable[[Any, Any, float], Any] = _selected  # (inner, selector, factor) -> search parameters
    rerank: int = 0  # candidates at least re-scored exactly from the stored embeddings; 0: none
    rough_scores: bool = False  # its scores are those of quantised codes, not the vectors'

    @property
    def approximate(self) -> bool:
        """Whether a search may miss some of the true top k."""
        return self.name != "flat"

    @property
    def exact_scores(self) -> bool:
        """Whether the rows it finds come with their exact scores (its own, or re-ranked)."""
        return not self.rough_scores or self.rerank > 0


KINDS: dict[str, IndexKind] = {kind.name: kind for kind in (
    IndexKind("flat", "exact inner product over every vector (the default; best for up to a few million images)",
              _flat_kind("IDMap2,Flat")),
    IndexKind("hnsw", "HNSW graph: approximate, about a millisecond a query at a million rows, more memory",
              _flat_kind("IDMap2,HNSW32"), tune=_hnsw_tune, widened=_hnsw_widened),
    IndexKind("ivf", "inverted lists over k-means cells: approximate, quick to build",
              _ivf, _per_cell, _probes(IVF_PROBES), _ivf_widened),
    IndexKind("sq8", "8-bit scalar quantised, exact scan: a quarter of the memory, approximate scores",
              _flat_kind("IDMap2,SQ8"), rough_scores=True),
    IndexKind("ivfsq8", "inverted lists of 8-bit codes, memory-mapped, re-ranked exactly from the stored embeddings: "
              "ten million images in a few GB",
              _ivfsq8, _per_cell, _probes(IVF_SQ8_PROBES), _ivf_widened, rerank=30, rough_scores=True),
    IndexKind("ivfpq", "inverted lists of product-quantised codes (a byte per four dimensions), memory-mapped, re-ranked "
              "exactly from the stored embeddings: for tens of millions of images and more",
              _ivfpq, _per_coarse_cell_and_code, _probes(IVF_PROBES), _ivf_widened, rerank=300, rough_scores=True),
)}
DEFAULT_KIND = "flat"


def kind_of(name: str | None) -> IndexKind:
    """The kind called ``name`` (the default for None); ValueError for an unknown name."""
    found = KINDS.get(name or DEFAULT_KIND)
    if found is None:
        raise ValueError(f"unknown index type {name!r}: use one of {', '.join(KINDS)}")
    return found
