"""One result per near-duplicate group: the best-ranked picture of each group stands for the others;
and one per video: its best-ranked moment stands for the rest.

A ranking is collapsed by walking it in order and keeping a picture only if no better-ranked picture of
its group was kept; ``k`` counts what is kept, so a search asks for more hits than it shows
(:func:`collapsed`) until ``k`` are kept or the ranking runs out. Each kept picture says how many other
pictures its group holds in the catalog, whether or not they ranked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from datasette_imgsearch.catalog.catalog import Catalog, image_columns, rows_with_ids
from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.vectors.ranking import Hit

FIRST_HITS_PER_RESULT = 3  # hits asked for per result wanted, at first; four times more each time short


@dataclass(frozen=True)
class GroupFact:
    group: int | None
    size: int  # pictures in the group, 1 when it is alone
    video: int | None = None  # the video a frame (or a video's own row) shows a moment of
    time: float | None = None  # and that moment, in seconds from the video's start


@dataclass(frozen=True)
class Collapsed:
    """A kept hit, its group and how many other pictures that group holds; for a video's best moment,
    the other moments of that video that ranked below it, in order, and the time of each (by id)."""

    hit: Hit
    group: int | None
    near_copies: int
    moments: list[Hit] = field(default_factory=list)
    times: dict[int, float] = field(default_factory=dict)


def has_groups(conn: Any) -> bool:
    """Whether the catalog open on ``conn`` has near-duplicate groups (one of an earlier schema has none)."""
    return "duplicate_group" in image_columns(conn)


def group_facts(catalog: Catalog, ids: list[int]) -> dict[int, GroupFact]:
    """id → its group, the group's size, its video and moment, for the rows of ``ids`` of a catalog that
    :func:`has_groups` (one of an earlier schema has no videos)."""
    video = "case when media = 'video' then id else video_id end, frame_time" if "video_id" in catalog.columns() \
        else "null, null"
    rows = rows_with_ids(catalog.db.conn, f"select id, duplicate_group, (select count(*) from [{TABLE}] as member where "
                               f"member.duplicate_group = row.duplicate_group), {video} from [{TABLE}] as row", ids)
    return {id_: GroupFact(group, size if group is not None else 1, video, time) for id_, group, size, video, time in rows}


def uncollapsed(hits: list[Hit], facts: dict[int, GroupFact]) -> list[Collapsed]:
    """Every hit as a result of its own, with its moment where it is a video's."""
    return [Collapsed(hit, None, 0, times=_time_of(hit, facts.get(hit.id))) for hit in hits]


def _time_of(hit: Hit, fact: GroupFact | None) -> dict[int, float]:
    return {hit.id: fact.time} if fact is not None and fact.time is not None else {}


def collapse(hits: list[Hit], facts: dict[int, GroupFact]) -> list[Collapsed]:
    """The hits, in order, without those whose group or video a better-ranked hit already stands for
    (a video's later moments join its best one's ``moments``)."""
    kept: list[Collapsed] = []
    seen: set[int] = set()
    videos: dict[int, Collapsed] = {}
    for hit in hits:
        fact = facts.get(hit.id, GroupFact(None, 1))
        if fact.video is not None:
            if fact.video in videos:
                videos[fact.video].moments.append(hit)
                videos[fact.video].times.update(_time_of(hit, fact))
                continue
        elif fact.group is not None:
            if fact.group in seen:
                continue
            seen.add(fact.group)
        kept.append(Collapsed(hit, fact.group, fact.size - 1, times=_time_of(hit, fact)))
        if fact.video is not None:
            videos[fact.video] = kept[-1]
    return kept


def collapsed(
    ranking: Callable[[int], list[Hit]], facts_of: Callable[[list[int]], dict[int, GroupFact]], wanted: int, most: int
) -> tuple[list[Collapsed], bool]:
    """Up to ``wanted`` collapsed results from ``ranking(n)`` (the first ``n`` hits, ``n`` ≤ ``most``), and
    whether more exist beyond them."""
    asked = min(most, wanted * FIRST_HITS_PER_RESULT + 8)
    while True:
        hits = ranking(asked)
        kept = collapse(hits, facts_of([hit.id for hit in hits]))
        if len(kept) > wanted or len(hits) < asked or asked >= most:
            return kept[:wanted], len(kept) > wanted
        asked = min(most, asked * 4)
