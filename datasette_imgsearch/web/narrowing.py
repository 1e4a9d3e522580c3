"""Datasette's column filters, facets and paging beside a search: read from the request, turned into the
rows a search may rank (SQLite does the filtering), and counted over the results."""

from __future__ import annotations

import collections
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datasette.filters import Filters

from datasette_imgsearch.catalog.schema import BLOB_COLUMNS, COLUMNS, TABLE
from datasette_imgsearch.errors import RequestError
from datasette_imgsearch.search.arguments import Candidates
from datasette_imgsearch.settings import Settings
from datasette_imgsearch.web.target import Target, argument_pairs

ROW_COLUMNS = ["id"] + [c for c in COLUMNS if c not in BLOB_COLUMNS]

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request


# Facets over the results: any column, plus the year a photo was taken (narrowed with taken__startswith).
SEARCH_FIELDS = ("q", "k", "min_score")
FORM_FIELDS = SEARCH_FIELDS + ("image", "csrftoken")  # the search's own fields, never column filters
YEAR = "year"
SUGGESTED_FACETS = ("format", "camera_model", YEAR, "folder")


@dataclass
class Narrowing:
    """Datasette's column filters given beside the query, the facets asked for, and the page."""

    filters: list[tuple[str, str]] = field(default_factory=list)
    where: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    facets: list[str] = field(default_factory=list)
    offset: int = 0


def read_narrowing(request: "Request", settings: Settings) -> Narrowing:
    """Column filters in Datasette's syntax (``taken__startswith=2020&camera_model=Canon+EOS+5D``),
    ``_facet=COLUMN`` and ``_next=OFFSET``; 400 for a column or an operator that does not exist."""
    narrowing = Narrowing()
    for key, value in argument_pairs(request):
        if key == "_facet":
            if value not in ROW_COLUMNS and value != YEAR:
                raise RequestError(400, f"cannot facet by {value!r}: use {YEAR} or one of {', '.join(ROW_COLUMNS)}")
            narrowing.facets.append(value)
        elif key == "_next":
            if not value.isdigit() or int(value) >= settings.max_k:
                raise RequestError(400, f"_next must be a result offset below {settings.max_k}, not {value[:20]!r}")
            narrowing.offset = int(value)
        elif not key.startswith("_") and key not in FORM_FIELDS:
            column = key.rsplit("__", 1)[0] if "__" in key else key
            if column not in ROW_COLUMNS:
                raise RequestError(400, f"cannot filter on {column!r}: the columns are {', '.join(ROW_COLUMNS)}")
            narrowing.filters.append((key, value))
    if narrowing.filters:
        filters = Filters(sorted(narrowing.filters))
        clauses, narrowing.params = filters.build_where_clauses(TABLE)
        if len(clauses) != len(narrowing.filters):
            raise RequestError(400, "unknown filter operator: use Datasette's, such as taken__startswith=2020 or width__gte=1000")
        narrowing.where = " and ".join(clauses)
        narrowing.description = filters.human_description_en()
    return narrowing


async def candidates_for(datasette: "Datasette", target: Target, narrowing: Narrowing) -> Candidates | None:
    """The ids of the rows that pass the filters (SQLite does the filtering), or None for every row."""
    if not narrowing.where:
        return None
    sql = f"select json_group_array(id) from [{TABLE}] where {narrowing.where}"
    result = await datasette.databases[target.database].execute(sql, narrowing.params)
    return Candidates(result.rows[0][0])


def link(base: str, request: "Request", add: tuple[tuple[str, str], ...] = (), drop: tuple[str, ...] = ()) -> str:
    """``base`` with the request's arguments, less the ``drop`` keys and ``_next``, plus ``add``."""
    pairs = [(key, value) for key, value in argument_pairs(request)
             if key not in drop and key != "_next" and (key, value) not in add]
    return base + "?" + urllib.parse.urlencode(pairs + list(add))


def facets_of(
    narrowing: Narrowing, results: list[dict[str, Any]], request: "Request", base: str
) -> dict[str, list[dict[str, Any]]]:
    """For each facet asked for: each value among the results, its count, and a link narrowing to it."""
    active = set(narrowing.filters)
    facets: dict[str, list[dict[str, Any]]] = {}
    for name in narrowing.facets:
        column, key = ("taken", "taken__startswith") if name == YEAR else (name, name)
        counts = collections.Counter(
            (row[column] or "")[:4] if name == YEAR else row[column] for row in results if row[column] is not None
        )
        facets[name] = [
            {"value": value, "count": count, "selected": (key, str(value)) in active,
             "toggle_url": link(base, request, drop=(key,)) if (key, str(value)) in active
             else link(base, request, add=((key, str(value)),))}
            for value, count in sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
        ]
    return facets
