"""Datasette's column filters, facets and paging beside a search: read from the request, turned into the
rows a search may rank (SQLite does the filtering), and counted over the results."""

from __future__ import annotations

import collections
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datasette.database import QueryInterrupted
from datasette.filters import Filters
from datasette.utils.sqlite import sqlite3

from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.errors import RequestError
from datasette_imgsearch.search.arguments import Candidates
from datasette_imgsearch.web.target import Target, argument_pairs

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request


# Facets over the results: any column, plus the year a photo was taken (narrowed with taken__startswith).
MAX_ARGUMENTS = 64  # a URL with more is not one a person or a page made
MAX_FILTERS = 16
FACET_SIZE = 30  # values shown per facet, as Datasette's own facets show
SEARCH_FIELDS = ("q", "k", "min_score", "collapse")
FORM_FIELDS = SEARCH_FIELDS + ("image", "csrftoken")  # the search's own fields, never column filters
YEAR = "year"
SUGGESTED_FACETS = ("media", "format", "camera_model", YEAR, "folder")


@dataclass
class Narrowing:
    """Datasette's column filters given beside the query, the facets asked for, and the page."""

    filters: list[tuple[str, str]] = field(default_factory=list)
    where: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    facets: list[str] = field(default_factory=list)
    offset: int = 0
    sort: tuple[str, bool] | None = None  # (column, descending) from _sort or _sort_desc


def read_narrowing(request: "Request", target: Target) -> Narrowing:
    """Column filters in Datasette's syntax (``taken__startswith=2020&camera_model=Canon+EOS+5D``),
    ``_facet=COLUMN`` and ``_next=OFFSET``; 400 for a column or an operator that does not exist, and for
    more filters or facets than a person asks for (each costs SQL or work per result)."""
    narrowing, columns, settings = Narrowing(), target.row_columns, target.settings
    pairs = argument_pairs(request)
    if len(pairs) > MAX_ARGUMENTS:
        raise RequestError(400, f"the URL has {len(pairs)} arguments; at most {MAX_ARGUMENTS} are taken")
    for key, value in pairs:
        if key == "_facet":
            if value not in columns and value != YEAR:
                raise RequestError(400, f"cannot facet by {value[:40]!r}: use {YEAR} or one of {', '.join(columns)}")
            if value not in narrowing.facets:
                narrowing.facets.append(value)
        elif key in ("_sort", "_sort_desc"):
            if value not in columns:
                raise RequestError(400, f"cannot sort by {value[:40]!r}: use one of {', '.join(columns)}")
            narrowing.sort = (value, key == "_sort_desc")
        elif key == "_next":
            if not (value.isascii() and value.isdigit()) or int(value) >= settings.max_k:
                raise RequestError(400, f"_next must be a result offset below {settings.max_k}, not {value[:20]!r}")
            narrowing.offset = int(value)
        elif not key.startswith("_") and key not in FORM_FIELDS:
            column = key.rsplit("__", 1)[0] if "__" in key else key
            if column not in columns:
                raise RequestError(400, f"cannot filter on {column!r}: the columns are {', '.join(columns)}")
            narrowing.filters.append((key, value))
    if len(narrowing.filters) > MAX_FILTERS:
        raise RequestError(400, f"{len(narrowing.filters)} column filters; at most {MAX_FILTERS} are taken")
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
    result = await filtered(datasette, target, f"select json_group_array(id) from [{TABLE}] where {narrowing.where}",
                            narrowing.params)
    return Candidates(result.rows[0][0])


async def browsed_rows(datasette: "Datasette", target: Target, narrowing: Narrowing, k: int) -> list[dict[str, Any]]:
    """Up to ``k`` rows from ``narrowing.offset`` on that pass the filters, in the order of ``narrowing.sort``
    (by id when none): the gallery without a query."""
    column, descending = narrowing.sort or ("id", False)
    where = f"where {narrowing.where}" if narrowing.where else ""
    sql = (f"select {', '.join(f'[{c}]' for c in target.row_columns)} from [{TABLE}] {where} "
           f"order by [{column}] {'desc' if descending else 'asc'}, id limit {int(k)} offset {int(narrowing.offset)}")
    result = await filtered(datasette, target, sql, narrowing.params)
    return [dict(zip(target.row_columns, row)) for row in result.rows]


async def filtered(datasette: "Datasette", target: Target, sql: str, params: dict[str, Any]) -> Any:
    """``sql`` with the filters' WHERE run on the catalog; its errors are 400s that never quote the SQL."""
    try:
        return await datasette.databases[target.database].execute(sql, params)
    except QueryInterrupted:
        raise RequestError(400, "the column filters took longer than this server lets a query run: narrow them "
                                "(an exact value or a range on an indexed column such as taken is quick)") from None
    except (sqlite3.DatabaseError, OverflowError) as error:  # the message names the problem, never the SQL
        raise RequestError(400, f"the column filters cannot be run: {str(error)[:120]}") from None


def link(base: str, request: "Request", add: tuple[tuple[str, str], ...] = (), drop: tuple[str, ...] = ()) -> str:
    """``base`` with the request's arguments, less the ``drop`` keys and ``_next``, plus ``add``."""
    pairs = [(key, value) for key, value in argument_pairs(request)
             if key not in drop and key != "_next" and (key, value) not in add]
    return base + "?" + urllib.parse.urlencode(pairs + list(add))


def label_of(facet: str, value: Any) -> str:
    """How a facet's value reads: the folder at the top of the catalog has an empty name."""
    if facet == "folder" and value == "":
        return "(top folder)"
    return str(value)


def suggested_facets(narrowing: Narrowing, results: list[dict[str, Any]]) -> list[str]:
    """The facets worth suggesting: not asked for yet, and with a value among the results."""
    def has_values(name: str) -> bool:
        if name == "media":  # worth it only where videos are among the pictures
            return any(row.get("media") in ("video", "frame") for row in results)
        column = "taken" if name == YEAR else name
        return any(row.get(column) is not None and (row.get(column) != "" or name == "folder") for row in results)

    return [name for name in SUGGESTED_FACETS if name not in narrowing.facets and has_values(name)]


def facets_of(
    narrowing: Narrowing, results: list[dict[str, Any]], request: "Request", base: str
) -> dict[str, list[dict[str, Any]]]:
    """For each facet asked for: its ``FACET_SIZE`` most frequent values among the results, each with its
    count and a link narrowing to it."""
    active = set(narrowing.filters)
    facets: dict[str, list[dict[str, Any]]] = {}
    for name in narrowing.facets:
        column, key = ("taken", "taken__startswith") if name == YEAR else (name, name)
        counts = collections.Counter(
            (row[column] or "")[:4] if name == YEAR else row[column] for row in results if row[column] is not None
        )
        facets[name] = [
            {"value": value, "label": label_of(name, value), "count": count, "selected": (key, str(value)) in active,
             "toggle_url": link(base, request, drop=(key,)) if (key, str(value)) in active
             else link(base, request, add=((key, str(value)),))}
            for value, count in sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))[:FACET_SIZE]
        ]
    return facets
