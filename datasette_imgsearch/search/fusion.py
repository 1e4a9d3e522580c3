"""One ranking from two: what a picture shows (CLIP) and what it says (its text), by reciprocal rank fusion.

Each row scores ``1 / (FUSION_K + rank)`` in each ranking it is in, summed. Ranks, not scores, are
fused because a cosine and a count of matched words are on no common scale, and reciprocal rank fusion
needs no tuning per catalog or model. With ``FUSION_K`` 60 (the usual choice), a picture that holds the
query's words outranks one that only looks right, and one that does both outranks either: on the toy
text world the fused ranking beat both the picture-only and the text-only rankings (docs/text.md).
A query whose words no picture holds ranks exactly as without text.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from datasette_imgsearch.search.parse import parse
from datasette_imgsearch.text.matching import TextQuery, split_query, words_of
from datasette_imgsearch.vectors.ranking import Hit

FUSION_K = 60
PICTURE_DEPTH = 100  # how deep the picture ranking is read for fusion
TEXT_DEPTH = 200  # how deep the text ranking is read


def text_ranking(matches: dict[int, int], best_of: Callable[[np.ndarray, int], list[Hit]]) -> list[Hit]:
    """The text ranking, at most ``TEXT_DEPTH`` deep: the rows that hold the most of the query's words first
    (``matches``: id → words held), and among those the pictures that match the query best, as
    ``best_of(ids, n)`` ranks them (a count of words ties often; the picture's score says which of the
    pictures that read "BAKERY" is the red circle the query asks for). Only the best of each level become
    hits, however many rows hold a common word."""
    levels: dict[int, list[int]] = {}
    for id_, count in matches.items():
        levels.setdefault(count, []).append(id_)
    ranking: list[Hit] = []
    for count in sorted(levels, reverse=True):
        if len(ranking) >= TEXT_DEPTH:
            break
        ranking += best_of(np.array(levels[count], dtype=np.int64), TEXT_DEPTH - len(ranking))
    return ranking


def fuse(picture: list[Hit], text: list[Hit], k: int) -> list[Hit]:
    """The ``k`` best of the ``picture`` and ``text`` rankings (hits, best first), each marked with whether
    its text matched. A text match beyond the picture ranking's depth ranks just below it there."""
    hits = {hit.id: hit for hit in picture}
    fused = {hit.id: 1 / (FUSION_K + rank) for rank, hit in enumerate(picture, 1)}
    below = 1 / (FUSION_K + len(picture) + 1)
    for rank, hit in enumerate(text, 1):
        fused[hit.id] = fused.get(hit.id, below) + 1 / (FUSION_K + rank)
        hits.setdefault(hit.id, hit)
    matched = {hit.id for hit in text}
    order = sorted(fused, key=lambda id_: (-fused[id_], -hits[id_].score, id_))
    return [hits[id_].with_text_match(id_ in matched) for id_ in order[:k]]


def text_query_of(query: str) -> TextQuery:
    """The text side of a query: the words of its text terms that add (not those it subtracts) and its
    quoted phrases."""
    picture_query, phrases = split_query(query)
    words = tuple(word for term in parse(picture_query) if term.text and term.weight > 0 for word in words_of(term.text))
    return TextQuery(words, phrases)
