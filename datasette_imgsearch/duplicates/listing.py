"""The near-duplicate groups of a catalog, for review: the command line's ``duplicates`` and the page."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.duplicates.collapse import has_groups
from datasette_imgsearch.errors import CatalogError

MEMBER_COLUMNS = ("id", "path", "width", "height", "size", "taken", "modified", "duplicate_keeper")


@dataclass(frozen=True)
class Member:
    """One picture of a group, with the facts a person weighs before removing a copy."""

    id: int
    path: str
    width: int | None
    height: int | None
    size: int
    taken: str | None
    modified: str
    keeper: bool


@dataclass(frozen=True)
class Group:
    """A suggested keeper (``id`` is its row id) and its near-copies, keeper first."""

    id: int
    members: list[Member]

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.id, "count": len(self.members), "members": [asdict(m) for m in self.members]}


def duplicate_groups(conn: Any, limit: int | None = None, offset: int = 0) -> list[Group]:
    """The groups of the catalog open on ``conn``, the largest first (then by keeper id)."""
    if not has_groups(conn):
        raise CatalogError("this catalog was built before near-duplicates were found: run 'datasette-imgsearch build' on it")
    order = f"select duplicate_group from [{TABLE}] where duplicate_group is not null group by duplicate_group " \
            "order by count(*) desc, duplicate_group"
    page = [row[0] for row in conn.execute(f"{order} limit ? offset ?", [-1 if limit is None else limit, offset])]
    if not page:
        return []
    placeholders = ", ".join("?" for _ in page)
    rows = conn.execute(
        f"select duplicate_group, {', '.join(MEMBER_COLUMNS)} from [{TABLE}] where duplicate_group in ({placeholders}) "
        "order by duplicate_keeper desc, id",
        page,
    ).fetchall()
    members: dict[int, list[Member]] = {group: [] for group in page}
    for group, id_, path, width, height, size, taken, modified, keeper in rows:
        members[group].append(Member(id_, path, width, height, size, taken, modified, bool(keeper)))
    return [Group(group, members[group]) for group in page]


def group_count(conn: Any) -> tuple[int, int]:
    """(groups, copies that are not their group's keeper)."""
    row = conn.execute(
        f"select count(distinct duplicate_group), coalesce(sum(duplicate_keeper = 0), 0) from [{TABLE}] "
        "where duplicate_group is not null"
    ).fetchone()
    return int(row[0]), int(row[1])


def groups_by_path(conn: Any) -> dict[str, int | None]:
    """path → group of every picture (None when alone): what the benchmarks score against the truth."""
    return dict(conn.execute(f"select path, duplicate_group from [{TABLE}]").fetchall())
