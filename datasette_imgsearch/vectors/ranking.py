"""The arithmetic of ranking: scores of vectors against rows, and the k best of them, tie-broken the same
way by every door (SQL, the page, the JSON, the CLI). :mod:`store` decides which rows to score;
:mod:`search.strength` how strong a hit is."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasette_imgsearch.vectors.int8pass import Int8Table
from datasette_imgsearch.vectors.onnxproduct import onnx_scores

# Rounding two unit vectors to bfloat16 moves their dot product by at most 2**-8 (about 0.004); the
# margin a bfloat16 first pass keeps is 2.5 times that.
FIRST_PASS_MARGIN = 0.01
# best_positions reads the maxima of blocks of this many scores first: at 100,000 rows, 781 blocks.
BLOCK = 128


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    strength: float | None = None  # how it compares with what random text finds (search.strength); None for pictures
    strong: bool | None = None  # whether that strength counts as strong; None for pictures
    text_match: bool = False  # whether the picture's text holds the query's words (text.matching)

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"id": self.id, "score": round(self.score, 6)}
        if self.strength is not None:
            found["strength"] = round(self.strength, 3)
        if self.text_match:
            found["text_match"] = True
        return found

    def with_text_match(self, matched: bool) -> "Hit":
        return Hit(self.id, self.score, self.strength, self.strong, matched)


def best_positions(values: np.ndarray, count: int) -> np.ndarray:
    """The positions of the ``count`` largest of ``values`` (0 < count <= len), in no order, a NaN counting
    as the smallest: what ``np.argpartition`` finds, at a tenth of its time for a full pass's scores.

    The ``count``-th largest of the maxima of ``BLOCK``-long blocks is a floor that the ``count`` largest
    values all reach (``count`` blocks each hold one value at least as large), so only the values at or
    above it are partitioned. Where no such floor is found (few blocks, or blocks of NaN only), every
    value is."""
    size = len(values)
    whole = size - size % BLOCK
    if whole // BLOCK >= 2 * count:
        maxima = np.fmax.reduce(values[:whole].reshape(-1, BLOCK), axis=1)
        floor = -np.partition(-maxima, count - 1)[count - 1]
        near = np.flatnonzero(values >= floor)
        if len(near) >= count:
            return near[np.argpartition(-values[near], count - 1)[:count]]
    return np.argpartition(-values, count - 1)[:count]


def top_k(ids: np.ndarray, scores: np.ndarray, k: int, exclude: set[int], min_score: float | None) -> list[Hit]:
    """The ``k`` best (id, score) pairs, best first, skipping ``exclude`` and scores under ``min_score``."""
    want = min(len(ids), k + len(exclude))
    if want == 0:
        return []
    if want < len(ids):
        cutoff = scores[best_positions(scores, want)].min()
        candidates = np.flatnonzero(scores >= cutoff)  # every row tied at the cut-off too
    else:
        candidates = np.arange(len(ids))
    # Ties break on the lower id, so every door onto the same query lists the same rows.
    order = candidates[np.lexsort((ids[candidates], -scores[candidates]))]
    hits = []
    for position in order:
        id_, score = int(ids[position]), float(scores[position])
        if id_ in exclude:
            continue
        if score == -np.inf or (min_score is not None and score < min_score):  # -inf: a hidden row
            break
        hits.append(Hit(id_, score))
        if len(hits) == k:
            break
    return hits


def exact_scores(matrix: Any, vectors: list[np.ndarray]) -> np.ndarray:
    """One row of scores per query vector against ``matrix`` (numpy, or a torch tensor), on torch's threads.

    numpy's BLAS threads would spin against the model's threads on the same cores and slow the text
    encoder down by half. Scoring several queries at once costs little more than one, since reading
    the matrix from memory is the work. A process that never loaded torch (queries on ONNX Runtime)
    scores on ONNX Runtime (:mod:`onnxproduct`), or with numpy where it is missing, rather than import
    torch for this."""
    torch = sys.modules.get("torch")
    if torch is None:
        scores = onnx_scores(matrix, vectors)
        if scores is not None:
            return scores
        queries = np.ascontiguousarray(np.stack(vectors), dtype=np.float32)
        return np.asarray(queries @ np.asarray(matrix, dtype=np.float32).T, dtype=np.float32)

    table = matrix if isinstance(matrix, torch.Tensor) else torch.from_numpy(matrix)
    queries = torch.from_numpy(np.ascontiguousarray(np.stack(vectors), dtype=np.float32)).to(table.dtype)
    if len(vectors) == 1:
        return torch.mv(table, queries[0]).float().numpy()[None]
    return torch.mm(queries, table.T).float().numpy()


def unique_ids(*arrays: np.ndarray) -> np.ndarray:
    """The ids in ``arrays``, ascending, each once, by sorting: ``np.unique`` (and ``np.union1d``, built on
    it) hashes in numpy 2, which is far slower for large id arrays."""
    ids = np.sort(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
    if len(ids) < 2:
        return ids
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))]


def scores_of(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """One query's scores against a few rows (candidates, a delta, a filter's gathered rows).

    ``np.einsum`` sums each row on its own, in one thread: a row scores the same whichever rows are
    scored beside it, so re-scored candidates rank exactly as a full pass would, and no BLAS threads are
    woken. numpy's ``matrix @ vector`` wakes OpenBLAS's, which go on spinning after it returns and take
    the cores from torch's (the text model, the full pass), which slowed every query that scored a delta."""
    return np.einsum("ij,j->i", matrix, vector)


def rescored_top_k(
    ids: np.ndarray, matrix: np.ndarray, vector: np.ndarray, rough: np.ndarray, margin: float, k: int,
    exclude: set[int], min_score: float | None, positions: np.ndarray | None = None,
) -> list[Hit]:
    """The exact top k, given rough scores (a first pass) within ``margin`` of the exact ones: of every
    row, or of the rows at ``positions`` (a filter's), which ``rough`` then scores in order.

    The rows that rank best roughly are scored exactly first: the worst of them is a floor that the
    true k-th best reaches, so only rows scoring at least the floor less ``margin`` roughly can be in
    the top k, and they are scored exactly."""
    want = min(len(rough), k + len(exclude))
    if want == 0:
        return []
    best = best_positions(rough, want)
    best = best[rough[best] > -np.inf]  # -inf: a hidden row
    if len(best) == 0:
        return []
    floor = -np.inf  # fewer rows left than wanted: every one of them is a candidate
    if len(best) == want:
        floor = float(scores_of(matrix[best if positions is None else positions[best]], vector).min())
    candidates = np.flatnonzero((rough >= floor - margin) & (rough > -np.inf))
    if positions is not None:
        candidates = positions[candidates]
    return top_k(ids[candidates], scores_of(matrix[candidates], vector), k, exclude, min_score)


def score_batch(items: list[tuple[np.ndarray, np.ndarray, Any]], bfloat16_batches: bool = True) -> list[tuple[np.ndarray, float]]:
    """Score queued (vector, matrix, its first pass or None) triples, one product per distinct matrix,
    through its first pass where it has one: each query's scores, and how far from the exact ones they
    can be (0 for float32's, ``FIRST_PASS_MARGIN`` for bfloat16's, an 8-bit pass's own bound), for
    :func:`rescored_top_k`.

    Where bfloat16 is emulated (``bfloat16_batches`` False), several queries at once go through the
    float32 matrix: one query reads half the bytes in bfloat16 and is no slower, but an emulated product
    for several queries is slower than float32's (docs/performance.md)."""
    results: list[tuple[int, tuple[np.ndarray, float]]] = []
    for matrix, first_pass in {id(m): (m, f) for _, m, f in items}.values():
        mine = [i for i, (_, m, _) in enumerate(items) if m is matrix]
        vectors = [items[i][0] for i in mine]
        if isinstance(first_pass, Int8Table):
            rough, margins = first_pass.scores(vectors)
            results.extend(zip(mine, zip(rough, margins.tolist())))
            continue
        exact = first_pass is None or (len(mine) > 1 and not bfloat16_batches)
        scores = exact_scores(matrix if exact else first_pass, vectors)
        results.extend(zip(mine, ((row, 0.0 if exact else FIRST_PASS_MARGIN) for row in scores)))
    return [scored for _, scored in sorted(results, key=lambda pair: pair[0])]
