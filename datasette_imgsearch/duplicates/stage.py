"""Keep a catalog's near-duplicate groups current, touching only what changed since the last time.

The rows whose pixels are new since the stage last ran (the catalog's change log names them, from the
version recorded as ``duplicates_version``) are compared with every row; the groups they join are
merged, and each changed group elects its keeper again: the largest picture, then the oldest (see
:func:`_keeper`). A group's id is its keeper's id, so ``duplicate_group`` links to the keeper's row. Groups
that lost their keeper or fell to one picture are repaired too. Everything is written in one
transaction with the version it covers, so an interrupted run leaves the previous groups and the next
run does the work again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.changes import ForgetChanges, SetGroups, SetLikeness, SetMeta
from datasette_imgsearch.catalog.schema import TABLE, index_path
from datasette_imgsearch.duplicates.grouping import (
    BLOCK_ROWS,
    confirmed,
    hash_pairs,
    indexed_neighbour_pairs,
    neighbour_pairs,
)
from datasette_imgsearch.duplicates.links import LinkGraph
from datasette_imgsearch.images import pixels
from datasette_imgsearch.images.likeness import Signatures, likeness_hash
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.vectors.index import filled_index, index_state, inner_index, read_index
from datasette_imgsearch.vectors.kinds import KINDS, kind_of

EXACT_NEIGHBOUR_ROWS = 50_000  # beyond this, neighbours come from an approximate index (see _neighbours)
NEIGHBOUR_INDEX = "ivfsq8"  # the kind made for that when the catalog's own index is exact or stale
NEIGHBOUR_PROBES = 2  # IVF cells looked in: a near-copy (cosine ≥ 0.85) lies in its picture's cell or the next
SIGNATURES_KEPT = 512  # thumbnails' signatures kept while comparing: about 0.3 MB each
# Two videos are compared (by their first frames) only when their lengths differ by at most this many
# seconds or this share of the longer: a re-encoded copy keeps its length, another video that opens alike does not.
DURATION_SLACK_SECONDS = 1.0
DURATION_SLACK_SHARE = 0.02


@dataclass
class GroupSummary:
    """What one run of the stage did."""

    checked: int = 0
    hashed: int = 0
    groups: int = 0
    copies: int = 0

    def line(self) -> str:
        if not self.checked:
            return "near-duplicates up to date"
        return f"near-duplicates: {self.checked} pictures compared; {self.groups} groups changed, {self.copies} copies in them"


def update_groups(catalog: Catalog) -> GroupSummary:
    """Bring the catalog's near-duplicate groups up to date (see the module docstring)."""
    summary = GroupSummary()
    version = catalog.catalog_version
    done = catalog.meta("duplicates_version")
    changed = catalog.changed_since(int(done)) if done is not None else None
    # A video's frames are moments of one file, not copies of each other: they are never grouped.
    live = np.fromiter((r[0] for r in catalog.db.execute(f"select id from [{TABLE}] where media is not 'frame'")),
                       dtype=np.int64)
    todo = live if changed is None else np.intersect1d(changed, live)
    summary.hashed = _fill_hashes(catalog)
    ids, codes = _hashes(catalog)
    current = _current_groups(catalog)
    if len(todo):
        hashed = np.intersect1d(todo, ids)  # a row whose thumbnail could not be read has no hash
        closest: dict[tuple[int, int], int] = {}  # each pair's hash distance in its closest turn
        for a, b, bits in hash_pairs(hashed, codes[np.searchsorted(ids, hashed)], ids, codes):
            pair = (min(a, b), max(a, b))
            closest[pair] = min(bits, closest.get(pair, bits))
        proposed: dict[tuple[int, int], int | None] = dict(closest)
        for a, b in _neighbours(catalog, todo, len(live)):
            proposed.setdefault((min(a, b), max(a, b)), None)
        moving = {id_: (media, duration) for id_, media, duration in catalog.db.execute(
            f"select id, media, duration from [{TABLE}] where media in ('video', 'frame')")}
        proposed = {pair: bits for pair, bits in proposed.items() if comparable(*pair, moving)}
        signatures: LRU[Signatures | bool] = LRU(SIGNATURES_KEPT)
        pairs = confirmed(proposed, lambda id_: _signatures(catalog, signatures, id_), dict(zip(ids.tolist(), codes.tolist())))
    else:
        pairs = []
    summary.checked = len(todo)
    groups, alone = _regroup(catalog, current, set(todo.tolist()), pairs)
    # The change log is kept for whichever of the index and the groups read it last (changes.py).
    catalog.write([SetGroups(groups, alone), SetMeta({"duplicates_version": version}),
                   ForgetChanges(int(catalog.meta("index_version") or 0))])
    summary.groups = len(set(groups.values()))
    summary.copies = sum(1 for id_, keeper in groups.items() if id_ != keeper)
    return summary


def comparable(a: int, b: int, moving: dict[int, tuple[str, float | None]]) -> bool:
    """Whether two rows may be near-copies, given ``moving``: id → (media, duration) of the videos' and
    frames' rows. Two pictures may; so may two videos of about the same length. A video is compared by its
    first frame alone, and two videos that open alike (a black fade, a studio's intro) are not copies, nor
    is a picture of a video's first frame; a video's frames are moments of one file, never grouped."""
    first, second = moving.get(a), moving.get(b)
    if first is None or second is None:
        return first is None and second is None
    if first[0] != "video" or second[0] != "video":
        return False
    length, other = first[1], second[1]
    if length is None or other is None:
        return length is None and other is None
    return abs(length - other) <= max(DURATION_SLACK_SECONDS, DURATION_SLACK_SHARE * max(length, other))


def _regroup(catalog: Catalog, current: dict[int, int], todo: set[int],
             pairs: list[tuple[int, int, float]]) -> tuple[dict[int, int], list[int]]:
    """(id → keeper for each row whose group changed, ids that left every group). Rows keep their stored
    group unless their pixels changed; confirmed pairs join groups; each group elects its keeper."""
    graph = LinkGraph(is_picture=lambda node: node >= 0)
    for id_, group in current.items():
        if id_ not in todo:
            graph.link(id_, -group - 1)  # a stored group's rows hang on one stand-in that is no row id
    for a, b, alike in pairs:
        graph.link(a, b, alike)
    grouped: dict[int, int] = {}
    for rows in graph.groups():
        keeper = _keeper(catalog, rows)
        grouped.update({m: keeper for m in rows})
    changed = {id_: keeper for id_, keeper in grouped.items() if current.get(id_) != keeper}
    return changed, [id_ for id_ in current if id_ not in grouped]


def _neighbours(catalog: Catalog, todo: np.ndarray, rows: int) -> set[tuple[int, int]]:
    """Pairs of near neighbours by CLIP embedding for the rows ``todo``, read ``BLOCK_ROWS`` at a time:
    every vector compared in a small catalog; in a large one, the catalog's own index asked where it is
    current and approximate, else an approximate index made for the purpose (comparing every vector would
    take hours at a million rows)."""
    blocks = (catalog.embeddings_of(todo[start:start + BLOCK_ROWS]) for start in range(0, len(todo), BLOCK_ROWS))
    if rows <= EXACT_NEIGHBOUR_ROWS:
        return set().union(*(neighbour_pairs(ids, vectors, catalog.iter_embeddings(BLOCK_ROWS)) for ids, vectors in blocks))
    if index_state(catalog).fresh and kind_of(catalog.meta("index_type")).approximate:
        index = read_index(index_path(catalog.path), catalog.meta("index_type"))
    else:
        kind = KINDS[NEIGHBOUR_INDEX]
        dimension = int(catalog.meta("dimension"))
        index = filled_index(kind, dimension, rows, catalog.sample_embeddings, catalog.iter_embeddings(BLOCK_ROWS))
    inverted = _inverted_lists_of(index)
    if inverted is not None:
        inverted.nprobe = NEIGHBOUR_PROBES
    return set().union(*(indexed_neighbour_pairs(ids, vectors, index) for ids, vectors in blocks))


def _inverted_lists_of(index: Any) -> Any:
    """The IVF index inside ``index``, or None for another kind (an HNSW graph keeps its tuning)."""
    try:
        return faiss.extract_index_ivf(inner_index(index))
    except RuntimeError:
        return None


def _keeper(catalog: Catalog, members: list[int]) -> int:
    """The largest picture (in pixels), then the oldest (taken, then the file's modification time: a copy is
    usually written after its original), then the most bytes, then the lowest id."""
    placeholders = ", ".join("?" for _ in members)
    row = catalog.db.execute(
        f"select id from [{TABLE}] where id in ({placeholders}) order by coalesce(width * height, 0) desc, "
        "taken is null, taken asc, mtime_ns asc, size desc, id asc limit 1",
        members,
    ).fetchone()
    return int(row[0])


def _current_groups(catalog: Catalog) -> dict[int, int]:
    return dict(catalog.db.execute(f"select id, duplicate_group from [{TABLE}] where duplicate_group is not null").fetchall())


def _hashes(catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    """(ids, likeness hashes) of every row that has one, in id order."""
    rows = catalog.db.execute(f"select id, likeness from [{TABLE}] where likeness is not null and media is not 'frame' "
                                "order by id").fetchall()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    return ids, np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))


def _fill_hashes(catalog: Catalog) -> int:
    """Hash, from their thumbnails, the rows a catalog of an earlier schema holds without a hash."""
    rows = catalog.db.execute(
        f"select id, thumbnail from [{TABLE}] where likeness is null and thumbnail is not null"
    ).fetchall()
    values = []
    for id_, thumbnail in rows:
        try:
            values.append((likeness_hash(pixels.decode(thumbnail).image), id_))
        except pixels.ImageError:
            continue
    catalog.write([SetLikeness(values)])
    return len(values)


def _signatures(catalog: Catalog, cache: "LRU[Signatures | bool]", id_: int) -> Signatures | None:
    """A row's thumbnail signatures (None when it has no readable thumbnail), made once for all the pairs
    it is in while it stays among the most recently used."""
    found = cache.get(id_)
    if found is None:
        row = catalog.db.execute(f"select thumbnail from [{TABLE}] where id = ?", [id_]).fetchone()
        try:
            found = Signatures(row[0]) if row and row[0] else False
        except pixels.ImageError:
            found = False
        cache.put(id_, found)
    return found if isinstance(found, Signatures) else None
