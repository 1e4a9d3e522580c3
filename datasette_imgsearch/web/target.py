"""What every view of the plugin starts from: the catalog a request names, checked to exist and to be
visible to the actor; and the one place an error becomes a response."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from datasette.utils import tilde_decode
from datasette.utils.asgi import Response

from datasette_imgsearch.catalog.catalog import catalog_columns, catalog_stamp
from datasette_imgsearch.catalog.schema import ROW_COLUMNS, TABLE
from datasette_imgsearch.errors import ImgsearchError, RequestError, web_message
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.search.registry import searcher_for
from datasette_imgsearch.settings import Settings
from datasette_imgsearch.web.access import can_view_table

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

    from datasette_imgsearch.search.searcher import Searcher


@dataclass
class Target:
    """The catalog a request is about, once it is known to exist and to be visible to the actor."""

    database: str
    table: str
    path: str
    immutable: bool
    settings: Settings
    row_columns: tuple[str, ...] = ROW_COLUMNS  # those of ROW_COLUMNS the catalog has (an older one has fewer)

    def searcher(self) -> "Searcher":
        return searcher_for(self.path, self.settings.models, self.immutable)


def catalog_file(datasette: "Datasette", database: str) -> tuple[str, bool] | None:
    """(path, immutable) of the file a Datasette database serves; None for in-memory databases."""
    db = datasette.databases.get(database)
    if db is None or not getattr(db, "path", None) or db.is_memory:
        return None
    return db.path, not db.is_mutable


def argument_pairs(request: "Request") -> list[tuple[str, str]]:
    """Every (key, value) of the query string, repeated keys included."""
    return [(key, value) for key in request.args.keys() for value in request.args.getlist(key)]


async def resolve(datasette: "Datasette", request: "Request") -> Target:
    """Find the catalog named in the URL; 404 if there is none, 403 if the actor may not view it."""
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    found = catalog_file(datasette, database)
    if found is None or table != TABLE:
        raise RequestError(404, f"{database}/{table} is not an image catalog")
    if not await can_view_table(datasette, request.actor, database, table):
        raise RequestError(403, "you do not have permission to view this table")
    present = await columns_of(datasette, database, found[0])
    if present is None:
        raise RequestError(404, f"{database} holds no imgsearch catalog")
    columns = tuple(column for column in ROW_COLUMNS if column in present)
    return Target(database, table, *found, Settings.for_database(datasette, database), columns)


# (path, catalog_stamp) -> (the columns of its catalog, or None for a database that holds none,)
KNOWN_COLUMNS = LRU[tuple[set[str] | None]](256)


async def columns_of(datasette: "Datasette", database: str, path: str) -> set[str] | None:
    """:func:`catalog_columns` of the database at ``path``, read once for each state of its file: a request
    to a catalog that has not changed since does not wait for one of Datasette's SQL threads to ask it."""
    key = (path, catalog_stamp(path))
    known = KNOWN_COLUMNS.get(key)
    if known is None:
        known = (await datasette.databases[database].execute_fn(catalog_columns),)
        KNOWN_COLUMNS.put(key, known)
    return known[0]


async def in_thread(function: Callable[..., Any], *args: Any, pool: concurrent.futures.Executor | None = None) -> Any:
    """``function(*args)`` in a thread of ``pool`` (the event loop's default pool when None)."""
    return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


def error_response(error: ImgsearchError, as_json: bool) -> Response:
    if as_json:
        return Response.json({"ok": False, "error": web_message(error)}, status=error.status)
    return Response.text(web_message(error), status=error.status)


View = Callable[["Datasette", "Request"], Awaitable[Any]]  # a Response, or anything with asgi_send


def answers_errors(as_json: bool) -> Callable[[View], View]:
    """The one place a view's :class:`ImgsearchError` becomes a response: its status and message, as
    JSON or as text, never a 500."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def answered(datasette: "Datasette", request: "Request") -> Any:
            try:
                return await view(datasette, request)
            except ImgsearchError as error:
                return error_response(error, as_json)

        return answered

    return decorate
