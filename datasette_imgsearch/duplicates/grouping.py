"""Which pictures are near-copies of which: pairs proposed by two cheap signals, confirmed by the pixels.

A pair is *proposed* when the pictures' likeness hashes (images/likeness.py) are close in some turn of
one of them (a resized, re-compressed, turned or mirrored copy), or when their CLIP embeddings are among
each other's nearest (a crop or an overlay, which move many hash bits but few embedding dimensions). A
proposed pair is *confirmed* by comparing the two thumbnails (:func:`pixel_likeness`): that is what
tells a copy from another photo of the same subject, which CLIP places just as close. Without
thumbnails, only very close hashes confirm. Confirmed pairs become groups in links.py.
docs/duplicates.md gives the measurements behind each threshold.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import faiss
import numpy as np

from datasette_imgsearch.duplicates.links import STRONG
from datasette_imgsearch.images.likeness import Signatures, corner_likeness, distance, pixel_likeness, turned

HASH_RADIUS = 8  # bits (of 63) within which a turn of one hash proposes a pair
NEIGHBOURS = 32  # nearest embeddings looked at per picture
NEIGHBOUR_SIMILARITY = 0.85  # and the least cosine similarity for them to propose a pair
PIXEL_LIKENESS = 0.983  # the least correlation of the thumbnails' colours that confirms a pair
PIXEL_LIKENESS_BUT_A_CORNER = 0.993  # or of all but the twentieth of them that differs most, or but one corner (an overlay)
TURN_RADIUS = 8  # bits within which a turned hash lets the pixels be compared in that turn
HASH_ONLY_RADIUS = 4  # without thumbnails, the bits within which hashes alone confirm a pair
BLOCK_ROWS = 65_536  # catalog rows compared at once: bounds memory whatever the catalog's size
# Beyond this many hash comparisons (turns of the pictures compared × pictures), hashes are looked up by
# four 16-bit quarters instead of compared one by one: a pair within 3 bits always shares a quarter,
# one further apart often does (docs/duplicates.md), at a small part of the cost.
EXACT_HASH_COMPARISONS = 2_000_000_000
HASH_QUARTERS = 4


def hash_pairs(
    query_ids: np.ndarray, query_codes: np.ndarray, ids: np.ndarray, codes: np.ndarray
) -> Iterator[tuple[int, int, int]]:
    """(query id, id, bits apart) for each stored hash within ``HASH_RADIUS`` of some turn of a query's."""
    if not len(query_ids) or not len(ids):
        return
    index: Any
    if 8 * len(query_ids) * len(ids) <= EXACT_HASH_COMPARISONS:
        index = faiss.IndexBinaryFlat(64)
    else:
        index = faiss.IndexBinaryMultiHash(64, HASH_QUARTERS, 64 // HASH_QUARTERS)
    index.add(np.ascontiguousarray(codes.astype(np.int64)).view(np.uint8).reshape(-1, 8))
    queries = turned(query_codes).reshape(-1)  # 8 turns per query, in query order
    limits, distances, found = index.range_search(queries.view(np.uint8).reshape(-1, 8), HASH_RADIUS + 1)
    for row in range(len(queries)):
        query_id = int(query_ids[row // 8])
        for position in range(limits[row], limits[row + 1]):
            other = int(ids[found[position]])
            if other != query_id:
                yield query_id, other, int(distances[position])


def indexed_neighbour_pairs(query_ids: np.ndarray, queries: np.ndarray, index: Any) -> set[tuple[int, int]]:
    """(query id, id) for each query's ``NEIGHBOURS`` nearest embeddings above ``NEIGHBOUR_SIMILARITY``, as
    the catalog's own FAISS ``index`` (keyed by row id) finds them: for catalogs too large to compare
    every vector with every other."""
    pairs = set()
    for start in range(0, len(query_ids), BLOCK_ROWS):
        scores, found = index.search(np.ascontiguousarray(queries[start:start + BLOCK_ROWS], dtype=np.float32), NEIGHBOURS)
        pairs |= _pairs_above(query_ids[start:start + BLOCK_ROWS], scores, found)
    return pairs


def _pairs_above(query_ids: np.ndarray, scores: np.ndarray, found: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for query_id, row_scores, others in zip(query_ids.tolist(), scores, found):
        for score, other in zip(row_scores.tolist(), others.tolist()):
            if score >= NEIGHBOUR_SIMILARITY and other != query_id and other >= 0:
                pairs.add((query_id, other))
    return pairs


def neighbour_pairs(
    query_ids: np.ndarray, queries: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]]
) -> set[tuple[int, int]]:
    """(query id, id) for each query's ``NEIGHBOURS`` nearest embeddings above ``NEIGHBOUR_SIMILARITY``,
    read block by block from ``blocks`` of (ids, vectors), every one compared."""
    if not len(query_ids):
        return set()
    best_scores = np.full((len(query_ids), NEIGHBOURS), -np.inf, dtype=np.float32)
    best_ids = np.full((len(query_ids), NEIGHBOURS), -1, dtype=np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    for ids, vectors in blocks:
        k = min(NEIGHBOURS, len(ids))
        block = np.ascontiguousarray(vectors, dtype=np.float32)
        scores, positions = faiss.knn(queries, block, k, metric=faiss.METRIC_INNER_PRODUCT)
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_ids = np.concatenate([best_ids, ids[positions]], axis=1)
        keep = np.argsort(-merged_scores, axis=1)[:, :NEIGHBOURS]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_ids = np.take_along_axis(merged_ids, keep, axis=1)
    return _pairs_above(query_ids, best_scores, best_ids)


def confirmed(
    proposed: dict[tuple[int, int], int | None],
    signatures_of: Callable[[int], Signatures | None],
    hashes: dict[int, int],
) -> list[tuple[int, int, float]]:
    """The proposed pairs (each with its hash distance, None when only the embeddings proposed it) that
    the pixels confirm, with how alike they look (1 where only the hashes could tell). The pixels are
    compared as they are, and turned or mirrored only in the ways in which the hashes agree too:
    otherwise two photos of a round thing in mirrored places would align."""
    pairs = []
    for (a, b), bits in sorted(proposed.items()):  # in id order: a picture's pairs meet its signatures while kept
        first, second = signatures_of(a), signatures_of(b)
        if first is not None and second is not None:
            whole = alike(first, second, _agreeing_turns(hashes.get(a), hashes.get(b)))
            if whole is not None:
                pairs.append((a, b, whole))
        elif bits is not None and bits <= HASH_ONLY_RADIUS:
            pairs.append((a, b, 1.0))
    return pairs


def alike(first: Signatures, second: Signatures, turns: Iterable[int] = range(8)) -> float | None:
    """How alike two thumbnails look as a whole where the pixels confirm them as copies (compared in
    ``turns`` of the second), else None: the whole pictures correlate at ``PIXEL_LIKENESS``, or at
    ``PIXEL_LIKENESS_BUT_A_CORNER`` without the twentieth that differs most (a crop's edge) or without one
    corner (a caption or a watermark), which is worked out only for the pairs the others leave."""
    whole, most = pixel_likeness(first, second, turns, enough=STRONG)
    if whole >= PIXEL_LIKENESS or most >= PIXEL_LIKENESS_BUT_A_CORNER:
        return whole
    return whole if corner_likeness(first, second, turns) >= PIXEL_LIKENESS_BUT_A_CORNER else None


def _agreeing_turns(first: int | None, second: int | None) -> list[int]:
    """The picture as it is, and each turn of the second whose hash lies within ``TURN_RADIUS`` of the first's."""
    if first is None or second is None:
        return [0]
    distances = distance(turned(np.array([second]))[0], np.int64(first))
    return sorted({0} | {int(t) for t in np.flatnonzero(distances <= TURN_RADIUS)})
