"""The search page, its JSON API, and the thumbnail and original-image routes.

Each view checks the actor may view the table, then runs the one search pipeline (the same
:class:`~.query.Searcher` the CLI and the SQL functions use). Blocking work (the model, FAISS, file
reads, multipart parsing) runs in a thread. Every problem with a request is an
:class:`~.errors.ImgsearchError` and answers with its status and message, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Awaitable, Callable

from datasette.filters import Filters
from datasette.utils import tilde_decode
from datasette.utils.asgi import Response
from markupsafe import Markup, escape

from datasette_imgsearch.catalog.catalog import Catalog, is_catalog
from datasette_imgsearch.catalog.schema import BLOB_COLUMNS, COLUMNS, TABLE
from datasette_imgsearch.errors import ImgsearchError, QueryError, RequestError, web_message
from datasette_imgsearch.images import pixels
from datasette_imgsearch.images.scan import media_type
from datasette_imgsearch.models.names import looks_like_path
from datasette_imgsearch.search.searcher import (
    MAX_ROW_ID,
    Candidates,
    MinScore,
    Reading,
    check_k,
    check_min_score,
    existing_searcher,
    searcher_for,
)
from datasette_imgsearch.settings import Settings
from datasette_imgsearch.status import catalog_status, versions
from datasette_imgsearch.vectors.ranking import Hit
from datasette_imgsearch.web import csrf
from datasette_imgsearch.web.access import can_view_table
from datasette_imgsearch.web.uploads import read_upload

PAGE_LOAD_TIMEOUT = 120.0  # a page may wait this long for a model still loading at startup
ROW_COLUMNS = ["id"] + [c for c in COLUMNS if c not in BLOB_COLUMNS]
SEARCH_FIELDS = ("q", "k", "min_score")
FORM_FIELDS = SEARCH_FIELDS + ("image", "csrftoken")
# Facets over the results: any column, plus the year a photo was taken (narrowed with taken__startswith).
YEAR = "year"
SUGGESTED_FACETS = ("format", "camera_model", YEAR, "folder")
# Uploads decoded at once: each may hold tens of MB of pixels, and there are only so many cores.
_upload_decodes = threading.BoundedSemaphore(2)
# A search spends most of its time waiting for a model run or a pass over the vectors that it shares
# with the searches arriving beside it (batcher.py), so it waits in a thread of its own: the event
# loop's default pool (CPU count + 4 threads, 6 on two cores) would cap how many can join one run.
SEARCH_THREADS = 32
_searches = concurrent.futures.ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="imgsearch-search")


@dataclass
class Target:
    """The catalog a request is about, once it is known to exist and to be visible to the actor."""

    database: str
    table: str
    path: str
    immutable: bool
    settings: Settings

    def searcher(self) -> Any:
        settings = self.settings
        return searcher_for(self.path, settings.models, self.immutable)


def catalog_file(datasette: Any, database: str) -> tuple[str, bool] | None:
    """(path, immutable) of the file a Datasette database serves; None for in-memory databases."""
    db = datasette.databases.get(database)
    if db is None or not getattr(db, "path", None) or db.is_memory:
        return None
    return db.path, not db.is_mutable


def argument_pairs(request: Any) -> list[tuple[str, str]]:
    """Every (key, value) of the query string, repeated keys included."""
    return [(key, value) for key in request.args.keys() for value in request.args.getlist(key)]


async def resolve(datasette: Any, request: Any) -> Target:
    """Find the catalog named in the URL; 404 if there is none, 403 if the actor may not view it."""
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    found = catalog_file(datasette, database)
    if found is None or table != TABLE:
        raise RequestError(404, f"{database}/{table} is not an image catalog")
    if not await can_view_table(datasette, request.actor, database, table):
        raise RequestError(403, "you do not have permission to view this table")
    holds_catalog = await datasette.databases[database].execute_fn(is_catalog)
    if not holds_catalog:
        raise RequestError(404, f"{database} holds no imgsearch catalog")
    return Target(database, table, *found, Settings.for_database(datasette, database))


async def in_thread(function: Callable[..., Any], *args: Any, pool: concurrent.futures.Executor | None = None) -> Any:
    """``function(*args)`` in a thread of ``pool`` (the event loop's default pool when None)."""
    return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


def error_response(error: ImgsearchError, as_json: bool) -> Response:
    if as_json:
        return Response.json({"ok": False, "error": web_message(error)}, status=error.status)
    return Response.text(web_message(error), status=error.status)


# Searching -------------------------------------------------------------------------------------
@dataclass
class SearchRequest:
    query: str
    image: bytes | None
    k: int
    min_score: MinScore


async def read_search_request(datasette: Any, request: Any, settings: Settings) -> SearchRequest:
    """The query, k and min_score from the URL (GET) or from a multipart form with an image (POST)."""
    values: dict[str, str] = {key: request.args.get(key) for key in SEARCH_FIELDS if request.args.get(key)}
    image = None
    if request.method == "POST":
        upload = await read_upload(request, settings.max_upload_bytes)
        csrf.check(datasette, request, upload.fields)
        values.update({k: v for k, v in upload.fields.items() if k in SEARCH_FIELDS and v})
        image = upload.files.get("image") or None
        if image is None and not values.get("q"):
            raise RequestError(400, "choose an image to upload (a field named 'image'), or type a query")
    if "\x00" in values.get("q", ""):
        raise QueryError("the query holds a NUL character")
    k = check_k(values.get("k", settings.page_size), settings.max_k)
    return SearchRequest(values.get("q", "").strip(), image, k, check_min_score(values.get("min_score")))


@dataclass
class Narrowing:
    """Datasette's column filters given beside the query, the facets asked for, and the page."""

    filters: list[tuple[str, str]] = field(default_factory=list)
    where: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    facets: list[str] = field(default_factory=list)
    offset: int = 0


def read_narrowing(request: Any, settings: Settings) -> Narrowing:
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


async def candidates_for(datasette: Any, target: Target, narrowing: Narrowing) -> Candidates | None:
    """The ids of the rows that pass the filters (SQLite does the filtering), or None for every row."""
    if not narrowing.where:
        return None
    sql = f"select json_group_array(id) from [{TABLE}] where {narrowing.where}"
    result = await datasette.databases[target.database].execute(sql, narrowing.params)
    return Candidates(result.rows[0][0])


def run_search(
    target: Target, search: SearchRequest, candidates: Candidates | None, offset: int
) -> tuple[list[Hit], list[Reading], float | None]:
    """The hits from ``offset`` on; for a text query also which model read each term, and the score from
    which its hits are strong."""
    settings = target.settings
    searcher = target.searcher()
    searcher.wait_until_loaded(PAGE_LOAD_TIMEOUT)
    wanted = min(search.k + offset, settings.max_k)
    if search.image is None:
        hits = searcher.search(search.query, wanted, search.min_score, candidates)[offset:]
        readings = searcher.readings(search.query)
        return hits, readings, searcher.strong_score(readings)
    with _upload_decodes:
        try:
            hits = searcher.search_image_bytes(
                search.image, wanted, search.min_score, settings.max_megapixels, settings.max_upload_megapixels, candidates
            )
        finally:
            pixels.release_memory()
    return hits[offset:], [], None


@dataclass
class Outcome:
    """What one search found, for the page and the JSON alike."""

    wanted: SearchRequest
    narrowing: Narrowing
    results: list[dict[str, Any]]
    has_more: bool
    readings: list[Reading]  # each term of a text query and the model that read it
    strong_score: float | None  # the cosine from which a text query's hit is strong in this catalog


async def search(datasette: Any, request: Any, target: Target) -> Outcome:
    """The one pipeline behind the page and the JSON: read the request, filter, rank, join the rows."""
    wanted = await read_search_request(datasette, request, target.settings)
    if not wanted.query and wanted.image is None:
        raise QueryError("add ?q=... to the URL, or POST an image in a field named 'image'")
    narrowing = read_narrowing(request, target.settings)
    candidates = await candidates_for(datasette, target, narrowing)
    hits, readings, strong_score = await in_thread(run_search, target, wanted, candidates, narrowing.offset, pool=_searches)
    has_more = len(hits) == wanted.k and narrowing.offset + wanted.k < target.settings.max_k
    results = await rows_for(datasette, target, hits, wanted.k)
    return Outcome(wanted, narrowing, results, has_more, readings, strong_score)


def link(base: str, request: Any, add: tuple[tuple[str, str], ...] = (), drop: tuple[str, ...] = ()) -> str:
    """``base`` with the request's arguments, less the ``drop`` keys and ``_next``, plus ``add``."""
    pairs = [(key, value) for key, value in argument_pairs(request)
             if key not in drop and key != "_next" and (key, value) not in add]
    return base + "?" + urllib.parse.urlencode(pairs + list(add))


def facets_of(outcome: Outcome, request: Any, base: str) -> dict[str, list[dict[str, Any]]]:
    """For each facet asked for: each value among the results, its count, and a link narrowing to it."""
    active = set(outcome.narrowing.filters)
    facets: dict[str, list[dict[str, Any]]] = {}
    for name in outcome.narrowing.facets:
        column, key = ("taken", "taken__startswith") if name == YEAR else (name, name)
        counts = collections.Counter(
            (row[column] or "")[:4] if name == YEAR else row[column] for row in outcome.results if row[column] is not None
        )
        facets[name] = [
            {"value": value, "count": count, "selected": (key, str(value)) in active,
             "toggle_url": link(base, request, drop=(key,)) if (key, str(value)) in active
             else link(base, request, add=((key, str(value)),))}
            for value, count in sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
        ]
    return facets


async def rows_for(datasette: Any, target: Target, hits: list[Hit], k: int) -> list[dict[str, Any]]:
    """The hits joined to their rows (no BLOBs), in rank order, with links."""
    if not hits:
        return []
    db = datasette.databases[target.database]
    ids = [hit.id for hit in hits]
    result = await db.execute(
        f"select {', '.join(f'[{c}]' for c in ROW_COLUMNS)} from [{TABLE}] where id in ({', '.join('?' for _ in ids)})", ids
    )
    rows = {row["id"]: dict(zip(ROW_COLUMNS, row)) for row in result.rows}
    base = image_routes_base(datasette, target.database, target.table)
    results = []
    for hit in hits:
        row = rows.get(hit.id)
        if row is None:  # removed between the search and this read
            continue
        results.append({
            **row,
            "score": round(hit.score, 6),
            "strength": None if hit.strength is None else round(hit.strength, 3),
            "strong": hit.strong,
            "row_url": datasette.urls.row(target.database, target.table, str(hit.id)),
            "thumbnail_url": f"{base}/thumbnail/{hit.id}",
            "more_like_this_url": f"{base}?{urllib.parse.urlencode({'q': f'row:{hit.id}', 'k': k})}",
        })
    return results


def image_routes_base(datasette: Any, database: str, table: str) -> str:
    return datasette.urls.table(database, table) + "/-/imgsearch"


SQL_RECIPE = (
    "select hit.key + 1 as rank, json_extract(hit.value, '$.score') as score, {table}.*\n"
    "from json_each(imgsearch(:q, :k)) as hit\n"
    "join {table} on {table}.id = json_extract(hit.value, '$.id')\n"
    "order by hit.key"
)


def sql_url(datasette: Any, target: Target, search: SearchRequest, narrowing: Narrowing) -> str | None:
    """A link to the same ranking (filters included) as a Datasette SQL query, for CSV export and sharing."""
    if search.image is not None or not search.query:
        return None
    thumbnails = image_routes_base(datasette, target.database, target.table) + "/thumbnail/"
    columns = ", ".join([f"{TABLE}.[{c}]" for c in ROW_COLUMNS] + [f"'{thumbnails}' || {TABLE}.id as thumbnail_url"])
    sql = SQL_RECIPE.format(table=TABLE).replace(f"{TABLE}.*", columns)  # exports carry a short link, not the JPEG
    if narrowing.where:
        among = f"(select json_group_array(id) from {TABLE} where {narrowing.where})"
        sql = sql.replace("imgsearch(:q, :k)", f"imgsearch(:q, :k, null, {among})")
    query = {"sql": sql, "q": search.query, "k": str(search.k), **{k: str(v) for k, v in narrowing.params.items()}}
    return datasette.urls.database(target.database) + "?" + urllib.parse.urlencode(query)


async def search_json(datasette: Any, request: Any) -> Response:
    """``/<db>/images/-/imgsearch.json?q=...`` (with column filters, ``_facet`` and ``_next``) and the
    multipart POST with an ``image`` field."""
    try:
        target = await resolve(datasette, request)
        outcome = await search(datasette, request, target)
    except ImgsearchError as error:
        return error_response(error, as_json=True)
    wanted, narrowing = outcome.wanted, outcome.narrowing
    base = image_routes_base(datasette, target.database, target.table) + ".json"
    next_offset = narrowing.offset + wanted.k if outcome.has_more else None
    return Response.json({
        "ok": True,
        "query": wanted.query if wanted.image is None else None,
        "terms": [reading.as_dict() for reading in outcome.readings],
        "strong_score": None if outcome.strong_score is None else round(outcome.strong_score, 6),
        "k": wanted.k,
        "count": len(outcome.results),
        "filters": narrowing.description or None,
        "facets": facets_of(outcome, request, base),
        "suggested_facets": [name for name in SUGGESTED_FACETS if name not in narrowing.facets],
        "next": next_offset,
        "next_url": None if next_offset is None else link(base, request, add=(("_next", str(next_offset)),)),
        "sql_url": sql_url(datasette, target, wanted, narrowing),
        "results": outcome.results,
    })


async def search_page(datasette: Any, request: Any) -> Response:
    """The search page: a text box, an image upload and a grid of ranked thumbnails."""
    try:
        target = await resolve(datasette, request)
    except ImgsearchError as error:
        return error_response(error, as_json=False)
    context: dict[str, Any] = {
        "database": target.database,
        "table": target.table,
        "q": request.args.get("q", ""),
        "k": request.args.get("k", str(target.settings.page_size)),
        "min_score": request.args.get("min_score", ""),
        "strong_only": request.args.get("min_score", "").strip().lower() == "strong",
        "results": None,
        "error": None,
        "sql_url": None,
        "uploaded": False,
        "max_upload_mb": target.settings.max_upload_mb,
        "json_url": image_routes_base(datasette, target.database, target.table) + ".json",
        "page_url": image_routes_base(datasette, target.database, target.table),
        "table_url": datasette.urls.table(target.database, target.table),
        "database_url": datasette.urls.database(target.database),
    }
    page = context["page_url"]
    filters = [(key, value) for key, value in argument_pairs(request) if key not in FORM_FIELDS]
    context.update(
        form_action=link(page, request, drop=FORM_FIELDS) if filters else page,
        clear_filters_url=link(page, request, drop=tuple(key for key, _ in filters if key != "_facet")),
        facets={}, suggested_facets=[], filter_description=None, next_url=None, reference_urls=[], terms=[],
    )
    status = 200
    if request.method == "POST" or context["q"]:
        try:
            outcome = await search(datasette, request, target)
            wanted, narrowing = outcome.wanted, outcome.narrowing
            context.update(q=wanted.query, k=str(wanted.k), uploaded=wanted.image is not None, results=outcome.results)
            context["sql_url"] = sql_url(datasette, target, wanted, narrowing)
            context["filter_description"] = narrowing.description or None
            context["facets"] = facets_of(outcome, request, page)
            context["suggested_facets"] = [
                (name, link(page, request, add=(("_facet", name),))) for name in SUGGESTED_FACETS if name not in narrowing.facets
            ]
            context["reference_urls"] = reference_thumbnails(page, outcome.readings)
            context["terms"] = [{**reading.as_dict(), "model_label": model_label(reading.model)} for reading in outcome.readings]
            if outcome.has_more and wanted.image is None:
                context["next_url"] = link(page, request, add=(("_next", str(narrowing.offset + wanted.k)),))
            context["offset"] = narrowing.offset
        except ImgsearchError as error:
            status, context["error"] = error.status, web_message(error)
    html = await datasette.render_template("imgsearch.html", context, request=request)
    return Response.html(html, status=status)


def model_label(name: str | None) -> str:
    """A model's name as the page shows it: a local folder by its last part (the full path is its title)."""
    return Path(name).name if name and looks_like_path(name) else name or ""


def reference_thumbnails(page: str, readings: list[Reading]) -> list[str]:
    """The pictures a text query searches by (its ``row:`` terms with a positive weight), to show above the
    results; an upload has no readings."""
    return [f"{page}/thumbnail/{reading.row}" for reading in readings if reading.row is not None and reading.weight > 0]


# Cells in Datasette's own pages ---------------------------------------------------------------------
def render_cell(value: Any, column: str, table: str | None, database: str, datasette: Any, row: Any) -> Markup | None:
    """Thumbnails as pictures (by their route where the row is known, so pages stay small); a path with
    its picture, a link to the original and "more like this", on table and row pages; and the short
    ``thumbnail_url`` links of the search's SQL page as pictures. Called for every cell of every page,
    so any other column returns at once."""
    if column not in ("thumbnail", "path", "thumbnail_url"):
        return None
    base = image_routes_base(datasette, database, TABLE)
    row_id = _row_id_of(row)
    if column == "thumbnail" and isinstance(value, bytes) and value[:2] == b"\xff\xd8":
        if table == TABLE and row_id is not None:
            return _picture(f"{base}/thumbnail/{row_id}")
        return _picture(f"data:image/jpeg;base64,{base64.b64encode(value).decode()}")
    if column == "path" and table == TABLE and isinstance(value, str) and row_id is not None:
        more = f"{base}?{urllib.parse.urlencode({'q': f'row:{row_id}'})}"
        return Markup(
            f'<img src="{escape(base)}/thumbnail/{row_id}" alt="" loading="lazy" '
            f'style="max-width: 64px; max-height: 64px; vertical-align: middle; margin-right: 0.4em">'
            f'<a href="{escape(base)}/original/{row_id}">{escape(value)}</a> · <a href="{escape(more)}">more like this</a>'
        )
    if column == "thumbnail_url" and table is None and isinstance(value, str) and value.startswith(base + "/thumbnail/"):
        return _picture(value)
    return None


def _picture(source: str) -> Markup:
    return Markup(f'<img src="{escape(source)}" alt="thumbnail" loading="lazy" style="max-width: 128px; max-height: 128px">')


def _row_id_of(row: Any) -> int | None:
    try:
        value = row["id"] if row is not None else None
    except (KeyError, IndexError):
        return None
    return int(value) if isinstance(value, int) else None


# Images ----------------------------------------------------------------------------------------
def _image_folder(target: Target) -> Path | None:
    with Catalog(target.path, immutable=target.immutable) as catalog:
        return catalog.image_folder()


async def _original_of(target: Target, row: dict[str, Any]) -> Path:
    """The file behind a row (see :func:`original_file`), with the folder read from the catalog."""
    return original_file(await in_thread(_image_folder, target), row["path"])


def original_file(folder: Path | None, relative: str) -> Path:
    """The file a row points at: its catalogued path under the catalogued folder.

    The rule is the build's: whatever the folder holds is catalogued, symlinked folders and files
    (an external drive linked in) included, so the same file is served as thumbnail and original.
    A path that is absolute or climbs out with ``..`` is never followed."""
    if folder is None:
        raise RequestError(404, "the catalog does not record its image folder")
    path = PurePosixPath(relative)
    if not path.parts or path.is_absolute() or ".." in path.parts or "\x00" in relative:
        raise RequestError(404, "the row's path is no longer inside the catalogued folder")
    candidate = folder.joinpath(*path.parts)
    try:
        if candidate.is_file():
            return candidate
    except (OSError, ValueError):
        pass
    raise RequestError(404, "the original file is no longer inside the catalogued folder")


def _row_id(request: Any) -> int:
    value = int(request.url_vars["id"])
    if value > MAX_ROW_ID:
        raise RequestError(404, "no such row")
    return value


async def _row_image(
    datasette: Any, request: Any, etag_suffix: str, body_of: Callable[[Target, dict[str, Any]], Awaitable[tuple[bytes, str]]]
) -> Response:
    """Serve one row's picture after the permission check, answering 304 when the browser has it."""
    try:
        target = await resolve(datasette, request)
        found = await datasette.databases[target.database].execute(
            f"select path, hash, thumbnail from [{TABLE}] where id = ?", [_row_id(request)]
        )
        if not found.rows:
            raise RequestError(404, "no such row")
        row = dict(found.rows[0])
        etag = f'"{row["hash"]}{etag_suffix}"'
        if request.headers.get("if-none-match") == etag:
            return Response("", status=304, headers={"ETag": etag})
        body, content_type = await body_of(target, row)
        return Response(
            body,
            content_type=content_type,
            headers={"X-Content-Type-Options": "nosniff", "ETag": etag, "Cache-Control": "private, max-age=3600"},
        )
    except ImgsearchError as error:
        return error_response(error, as_json=False)


async def thumbnail_view(datasette: Any, request: Any) -> Response:
    """A row's stored thumbnail; made from the original when the catalog was built without thumbnails."""

    async def body(target: Target, row: dict[str, Any]) -> tuple[bytes, str]:
        if row["thumbnail"] is not None:
            return row["thumbnail"], "image/jpeg"
        file = await _original_of(target, row)
        return await in_thread(_thumbnail_from_file, file, target.settings.max_megapixels), "image/jpeg"

    return await _row_image(datasette, request, "-thumbnail", body)


def _thumbnail_from_file(file: Path, max_megapixels: float) -> bytes:
    decoded = pixels.decode(pixels.read_bytes(file), max_megapixels, shrink_to=(1, pixels.DEFAULT_THUMBNAIL_SIZE))
    return pixels.thumbnail(decoded.image)


async def original_view(datasette: Any, request: Any) -> Response:
    """The original image file, served only from inside the catalogued folder."""

    async def body(target: Target, row: dict[str, Any]) -> tuple[bytes, str]:
        file = await _original_of(target, row)
        try:
            data = await in_thread(file.read_bytes)
        except OSError:
            raise RequestError(404, "the original file cannot be read") from None
        return data, media_type(file.name)

    return await _row_image(datasette, request, "", body)


# Status ----------------------------------------------------------------------------------------
def _public_status(path: str, immutable: bool) -> dict[str, Any]:
    with Catalog(path, immutable=immutable) as catalog:
        facts = catalog_status(catalog)
    facts.pop("folder")  # an absolute path on the server: not for everyone who may view the table
    return facts


async def status_view(datasette: Any, request: Any) -> Response:
    """``/-/imgsearch``: versions, and for each catalog the actor may view, what it holds and what the
    searcher loaded (and how long that took): one block to paste into a bug report."""
    catalogs: dict[str, Any] = {}
    for name in list(datasette.databases):
        found = catalog_file(datasette, name)
        if found is None or not await datasette.databases[name].execute_fn(is_catalog):
            continue
        if not await can_view_table(datasette, request.actor, name, TABLE):
            continue
        settings = Settings.for_database(datasette, name)
        path, immutable = found
        try:
            facts = await in_thread(_public_status, path, immutable)
        except ImgsearchError as error:
            catalogs[name] = {"error": error.message}
            continue
        searcher = existing_searcher(path, settings.models, immutable)
        facts["searcher"] = await in_thread(searcher.state) if searcher is not None else None
        catalogs[name] = facts
    return Response.json({"versions": versions(), "catalogs": catalogs})
