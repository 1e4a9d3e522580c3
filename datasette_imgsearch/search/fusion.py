"""One ranking from two: what a picture shows (CLIP) and what it says (its text), by reciprocal rank fusion.

Each row scores ``1 / (FUSION_K + rank)`` in each ranking it is in, summed. Ranks, not scores, are
fused because a cosine and a count of matched words are on no common scale, and reciprocal rank fusion
needs no tuning per catalog or model. With ``FUSION_K`` 60 (the usual choice), a picture that holds the
query's words outranks one that only looks right, and one that does both outranks either: on the toy
text world the fused ranking beat both the picture-only and the text-only rankings (docs/text.md).
A query whose words no picture holds ranks exactly as without text.
"""

from __future__ import annotations

from datasette_imgsearch.search.parse import parse
from datasette_imgsearch.text.matching import TextQuery, split_query, words_of
from datasette_imgsearch.vectors.ranking import Hit

FUSION_K = 60
PICTURE_DEPTH = 100  # how deep the picture ranking is read for fusion
TEXT_DEPTH = 200  # how deep the text ranking is read


def text_ranking(matches: dict[int, int], scores: dict[int, float]) -> list[int]:
    """The text ranking: the rows that hold the most of the query's words first, and among those the ones
    whose picture matches it best (a count of words ties often; the picture's score says which of the
    pictures that read "BAKERY" is the red circle the query asks for)."""
    return sorted(matches, key=lambda id_: (-matches[id_], -scores.get(id_, -2.0), id_))[:TEXT_DEPTH]


def fuse(picture: list[Hit], text: list[int], text_scores: dict[int, Hit], k: int) -> list[Hit]:
    """The ``k`` best of ``picture`` (hits best first) and ``text`` (row ids best first), each hit
    marked with whether its text matched. ``text_scores`` holds the picture scores of text matches that
    are not in ``picture``; a text match with neither (a row without a vector yet) is left out."""
    scores = {hit.id: hit for hit in picture}
    picture_rank = {hit.id: rank for rank, hit in enumerate(picture, 1)}
    depth = len(picture)
    fused: dict[int, float] = {id_: 1 / (FUSION_K + rank) for id_, rank in picture_rank.items()}
    for rank, id_ in enumerate(text, 1):
        hit = scores.get(id_) or text_scores.get(id_)
        if hit is None:
            continue
        scores[id_] = hit
        # A text match beyond the picture ranking's depth ranks just below it there.
        seen_rank = picture_rank.get(id_, depth + 1)
        fused[id_] = 1 / (FUSION_K + seen_rank) + 1 / (FUSION_K + rank)
    matched = set(text)
    order = sorted(fused, key=lambda id_: (-fused[id_], -scores[id_].score, id_))
    return [scores[id_].with_text_match(id_ in matched) for id_ in order[:k]]


def text_query_of(query: str) -> TextQuery:
    """The text side of a query: the words of its text terms that add (not those it subtracts) and its
    quoted phrases."""
    picture_query, phrases = split_query(query)
    words = tuple(word for term in parse(picture_query) if term.text and term.weight > 0 for word in words_of(term.text))
    return TextQuery(words, phrases)
