"""The search page, its JSON API, and the thumbnail and original-image routes.

Each view checks the actor may view the table, then runs the one search pipeline (the same
:class:`~.query.Searcher` the CLI and the SQL functions use). Blocking work (the model, FAISS, file
reads, multipart parsing) runs in a thread. Every problem with a request is an
:class:`~.errors.ImgsearchError` and answers with its status and message, never a 500.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import urllib.parse
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from datasette.utils.asgi import Response

from datasette_imgsearch.catalog.catalog import rows_with_ids
from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.duplicates.collapse import Collapsed, collapsed, group_facts, uncollapsed
from datasette_imgsearch.errors import ImgsearchError, QueryError, RequestError, web_message
from datasette_imgsearch.images import pixels
from datasette_imgsearch.images.video import clock
from datasette_imgsearch.models.names import model_label
from datasette_imgsearch.search.arguments import STRONG_ONLY, Candidates, MinScore, check_k, check_min_score
from datasette_imgsearch.search.fusion import text_query_of
from datasette_imgsearch.search.models import Reading
from datasette_imgsearch.settings import Settings
from datasette_imgsearch.text.matching import explanation
from datasette_imgsearch.vectors.ranking import Hit
from datasette_imgsearch.web import csrf
from datasette_imgsearch.web.narrowing import (
    FORM_FIELDS,
    SEARCH_FIELDS,
    Narrowing,
    browsed_rows,
    candidates_for,
    facets_of,
    link,
    read_narrowing,
    suggested_facets,
)
from datasette_imgsearch.web.routes import search_url
from datasette_imgsearch.web.target import Target, answers_errors, argument_pairs, in_thread, resolve
from datasette_imgsearch.web.uploads import read_upload

PAGE_LOAD_TIMEOUT = 120.0  # a page may wait this long for a model still loading at startup
SHOW_WEAK = "_weak"  # the page shows a query's weak matches when none is strong only when asked
UPLOAD_DECODES = 2  # uploads decoded at once: each may hold tens of MB of pixels, and cores are few
# A search spends most of its time waiting for a model run or a pass over the vectors that it shares
# with the searches arriving beside it (batcher.py), so it waits in a thread of its own: the event
# loop's default pool (CPU count + 4 threads) would cap how many can join one run.
SEARCH_THREADS = 32


@functools.cache
def search_threads() -> concurrent.futures.ThreadPoolExecutor:
    """The threads searches wait in, made at the first search (never by importing this module)."""
    return concurrent.futures.ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="imgsearch-search")


@functools.cache
def upload_decodes() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(UPLOAD_DECODES)

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

    from datasette_imgsearch.search.searcher import Searcher


# Searching -------------------------------------------------------------------------------------
@dataclass
class SearchRequest:
    query: str
    image: bytes | None
    k: int
    min_score: MinScore
    collapse: bool = True  # one result per near-duplicate group; collapse=0 shows every copy


async def read_search_request(datasette: "Datasette", request: "Request", settings: Settings) -> SearchRequest:
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
        if image is not None and values.get("q", "").strip():
            raise RequestError(400, "search by a picture or by words, not both: leave out q when you upload an image "
                                    "(to combine them, search by words with row:ID for a catalogued picture)")
    if "\x00" in values.get("q", ""):
        raise QueryError("the query holds a NUL character")
    k = check_k(values.get("k", settings.page_size), settings.max_k)
    collapse = values.get("collapse", "1")
    if collapse not in ("0", "1"):
        raise QueryError(f"collapse is 1 (one result per group of near-copies, the default) or 0, not {collapse[:20]!r}")
    return SearchRequest(values.get("q", "").strip(), image, k, check_min_score(values.get("min_score")), collapse == "1")


def run_ranking(
    target: Target, search: SearchRequest, candidates: Candidates | None, offset: int
) -> tuple[list[Collapsed], dict[int, dict[str, Any]], bool, list[Reading], float | None]:
    """``search.k`` results from ``offset`` on, one per near-duplicate group unless ``search.collapse`` is
    off or the catalog has no groups, their rows by id, and whether more exist; for a text query also which
    model read each term, and the score from which its hits are strong. Everything is read on this search
    thread's own connection, kept open: no connection per search, and no second trip to another thread
    for the rows."""
    searcher = target.searcher()
    ranking, readings, strong_score = ranking_for(target, searcher, search, candidates)
    most = target.settings.max_k
    catalog = searcher.store.catalog()
    if not (search.collapse and "duplicate_group" in target.row_columns):
        hits = ranking(min(search.k + offset + 1, most))[offset:]  # one more than asked: is there a next page?
        kept, more = uncollapsed(hits[:search.k], {}), len(hits) > search.k
    else:
        kept, more = collapsed(ranking, lambda ids: group_facts(catalog, ids), offset + search.k, most)
        kept = kept[offset:]
    return kept, result_rows(catalog.db.conn, target, [result.hit.id for result in kept]), more, readings, strong_score


def result_rows(conn: Any, target: Target, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The rows of ``ids`` (no BLOBs) by id, with a picture's lines of text where the catalog has them."""
    columns = target.row_columns + (("text_lines",) if "text" in target.row_columns else ())
    found = rows_with_ids(conn, f"select {', '.join(f'[{c}]' for c in columns)} from [{TABLE}]", ids)
    return {row["id"]: row for row in (dict(zip(columns, values)) for values in found)}


def ranking_for(
    target: Target, searcher: "Searcher", search: SearchRequest, candidates: Candidates | None
) -> tuple[Callable[[int], list[Hit]], list[Reading], float | None]:
    """How to rank the catalog (``searcher``'s, the target's) for this search, for any number of hits, and
    what a text query's terms say. An uploaded picture is decoded and embedded here, once, however many
    hits are asked for."""
    settings = target.settings
    searcher.wait_until_loaded(PAGE_LOAD_TIMEOUT)
    if search.image is None:
        snapshot = searcher.store.current()  # one state of the catalog for the terms, their strength and the hits
        readings = searcher.readings(search.query, snapshot)
        return ((lambda count: searcher.search(search.query, count, search.min_score, candidates, snapshot)),
                readings, searcher.strong_score(readings, snapshot))
    with upload_decodes():
        try:
            rank = searcher.image_ranking(search.image, search.min_score, settings.max_megapixels,
                                          settings.max_upload_megapixels)
        finally:
            pixels.release_memory()
    return (lambda count: rank(count, candidates)), [], None


@dataclass
class Outcome:
    """What one search found, for the page and the JSON alike."""

    wanted: SearchRequest
    narrowing: Narrowing
    results: list[dict[str, Any]]
    has_more: bool
    readings: list[Reading]  # each term of a text query and the model that read it
    strong_score: float | None  # the cosine from which a text query's hit is strong in this catalog


async def search(datasette: "Datasette", request: "Request", target: Target, browse: bool = False) -> Outcome:
    """The one pipeline behind the page and the JSON: read the request, filter, rank, join the rows. With
    ``browse`` (the page), no query lists the rows that pass the filters, sorted by a column: a gallery."""
    wanted = await read_search_request(datasette, request, target.settings)
    narrowing = read_narrowing(request, target)
    if not wanted.query and wanted.image is None:
        if not browse:
            raise QueryError("add ?q=... to the URL, or POST an image in a field named 'image'")
        rows = await browsed_rows(datasette, target, narrowing, wanted.k + 1)
        results = [linked(datasette, target, row, None, wanted.k) for row in rows[:wanted.k]]
        return Outcome(wanted, narrowing, results, len(rows) > wanted.k, [], None)
    if narrowing.sort and wanted.min_score != STRONG_ONLY:
        raise QueryError("a ranking is sorted by a column only with strong matches only: add min_score=strong "
                         "(all of them are sorted, not the first k), or leave out _sort")
    candidates = await candidates_for(datasette, target, narrowing)
    offset = 0 if narrowing.sort else narrowing.offset
    asked = replace(wanted, k=target.settings.max_k - 1) if narrowing.sort else wanted
    kept, rows, more, readings, strong_score = await in_thread(run_ranking, target, asked, candidates, offset,
                                                               pool=search_threads())
    results = results_for(datasette, target, kept, rows, wanted.k, wanted.query if wanted.image is None else "")
    if narrowing.sort:  # every strong hit, in the column's order, a page of them
        results = sorted_by(results, *narrowing.sort)[narrowing.offset:]
        more = len(results) > wanted.k
    return Outcome(wanted, narrowing, results[:wanted.k], more, readings, strong_score)


def sorted_by(results: list[dict[str, Any]], column: str, descending: bool) -> list[dict[str, Any]]:
    """Results in a column's order, rows without a value last either way."""
    valued = sorted((row for row in results if row[column] is not None), key=lambda row: row[column], reverse=descending)
    return valued + [row for row in results if row[column] is None]


def results_for(
    datasette: "Datasette", target: Target, kept: list[Collapsed], rows: dict[int, dict[str, Any]], k: int, query: str = ""
) -> list[dict[str, Any]]:
    """The results joined to their ``rows``, in rank order, with links, and for a match by the picture's
    text, why it matched."""
    text_query = text_query_of(query) if query and any(result.hit.text_match for result in kept) else None
    found = []
    for each in kept:
        row = rows.get(each.hit.id)
        if row is None:
            continue  # a row removed since: gone
        lines = row.pop("text_lines", None)
        why = explanation(row.get("text"), lines, text_query) if text_query and each.hit.text_match else {}
        moments = [{"id": hit.id, "frame_time": each.times.get(hit.id), "score": round(hit.score, 6)} for hit in each.moments]
        found.append({**linked(datasette, target, row, each.hit, k, each.near_copies), **why,
                      **({"moments": moments} if row.get("frame_time") is not None else {})})
    return found


def linked(
    datasette: "Datasette", target: Target, row: dict[str, Any], hit: Hit | None, k: int, near_copies: int = 0
) -> dict[str, Any]:
    """A result: its row, its score and strength (None when browsing), its near-copies that the result
    stands for, and its links."""
    base = search_url(datasette, target.database, target.table)
    row_id = row["id"]
    group = row.get("duplicate_group")
    return {
        **row,
        "score": None if hit is None else round(hit.score, 6),
        "strength": None if hit is None or hit.strength is None else round(hit.strength, 3),
        "strong": None if hit is None else hit.strong,
        "text_match": None if hit is None else hit.text_match,
        "row_url": datasette.urls.row(target.database, target.table, str(row_id)),
        "thumbnail_url": f"{base}/thumbnail/{row_id}",
        "more_like_this_url": f"{base}?{urllib.parse.urlencode({'q': f'row:{row_id}', 'k': k})}",
        "near_copies": near_copies,
        "near_copies_url": f"{base}?{urllib.parse.urlencode({'duplicate_group': group})}" if near_copies else None,
        **_moment(base, row),
    }


def _moment(base: str, row: dict[str, Any]) -> dict[str, Any]:
    """For a video or one of its frames: the moment, and the video's URL that plays from it."""
    time = row.get("frame_time")
    if time is None:
        return {}
    return {"moment": clock(time), "moment_url": f"{base}/original/{row['id']}#t={time:g}"}


SQL_RECIPE = (
    "select hit.key + 1 as rank, json_extract(hit.value, '$.score') as score, {table}.*\n"
    "from json_each(imgsearch(:q, :k)) as hit\n"
    "join {table} on {table}.id = json_extract(hit.value, '$.id')\n"
    "order by hit.key"
)


def sql_url(datasette: "Datasette", target: Target, search: SearchRequest, narrowing: Narrowing) -> str | None:
    """A link to the same ranking (filters included) as a Datasette SQL query, for CSV export and sharing."""
    if search.image is not None or not search.query:
        return None
    thumbnails = search_url(datasette, target.database, target.table) + "/thumbnail/"
    columns = ", ".join([f"{TABLE}.[{c}]" for c in target.row_columns] + [f"'{thumbnails}' || {TABLE}.id as thumbnail_url"])
    sql = SQL_RECIPE.format(table=TABLE).replace(f"{TABLE}.*", columns)  # exports carry a short link, not the JPEG
    if narrowing.where:
        among = f"(select json_group_array(id) from {TABLE} where {narrowing.where})"
        sql = sql.replace("imgsearch(:q, :k)", f"imgsearch(:q, :k, null, {among})")
    query = {"sql": sql, "q": search.query, "k": str(search.k), **{k: str(v) for k, v in narrowing.params.items()}}
    return datasette.urls.database(target.database) + "?" + urllib.parse.urlencode(query)


@answers_errors(as_json=True)
async def search_json(datasette: "Datasette", request: "Request") -> Response:
    """``/<db>/images/-/imgsearch.json?q=...`` (with column filters, ``_facet`` and ``_next``) and the
    multipart POST with an ``image`` field."""
    target = await resolve(datasette, request)
    outcome = await search(datasette, request, target)
    wanted, narrowing = outcome.wanted, outcome.narrowing
    base = search_url(datasette, target.database, target.table) + ".json"
    facets = await in_thread(facets_of, narrowing, outcome.results, request, base) if narrowing.facets else {}
    next_offset = narrowing.offset + wanted.k if outcome.has_more else None
    return Response.json({
        "ok": True,
        "query": wanted.query if wanted.image is None else None,
        "terms": [{**reading.as_dict(), "model": model_label(reading.model)} for reading in outcome.readings],
        "strong_score": None if outcome.strong_score is None else round(outcome.strong_score, 6),
        "k": wanted.k,
        "count": len(outcome.results),
        "filters": narrowing.description or None,
        "facets": facets,
        "suggested_facets": suggested_facets(narrowing, outcome.results),
        "next": next_offset,
        "next_url": None if next_offset is None else link(base, request, add=(("_next", str(next_offset)),)),
        "sql_url": sql_url(datasette, target, wanted, narrowing),
        "results": outcome.results,
    })


@answers_errors(as_json=False)
async def search_page(datasette: "Datasette", request: "Request") -> Response:
    """The search page: a text box, an image upload and a grid of ranked thumbnails."""
    target = await resolve(datasette, request)
    context = page_context(datasette, request, target)
    status = 200
    try:  # with no query, the gallery of the rows that pass the filters
        outcome = await search(datasette, request, target, browse=True)
        page = context["page_url"]
        facets = await in_thread(facets_of, outcome.narrowing, outcome.results, request, page)
        context.update(outcome_context(datasette, request, target, outcome, page), facets=facets)
    except ImgsearchError as error:
        status, context["error"] = error.status, web_message(error)
    html = await datasette.render_template("imgsearch.html", context, request=request)
    return Response.html(html, status=status)


SORTS = (("newest first", "_sort_desc", "taken"), ("oldest first", "_sort", "taken"), ("by name", "_sort", "name"),
         ("largest first", "_sort_desc", "size"))


def sort_label(sort: tuple[str, bool] | None) -> str | None:
    if sort is None:
        return None
    for label, key, column in SORTS:
        if column == sort[0] and (key == "_sort_desc") == sort[1]:
            return label
    return f"by {sort[0]}{', descending' if sort[1] else ''}"


def sort_links(page: str, request: "Request", ranked: bool) -> list[tuple[str, str]]:
    """Links that sort the gallery, or a query's strong matches, by a column (the filters kept)."""
    strong = (("min_score", "strong"),) if ranked else ()
    return [(label, link(page, request, drop=("_sort", "_sort_desc", "min_score"), add=((key, column),) + strong))
            for label, key, column in SORTS]


def page_context(datasette: "Datasette", request: "Request", target: Target) -> dict[str, Any]:
    """What the search page shows before (or without) a search: the form as the request filled it."""
    page = search_url(datasette, target.database, target.table)
    filters = [(key, value) for key, value in argument_pairs(request) if key not in FORM_FIELDS]
    return {
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
        "json_url": page + ".json",
        "page_url": page,
        "table_url": datasette.urls.table(target.database, target.table),
        "database_url": datasette.urls.database(target.database),
        "form_action": link(page, request, drop=FORM_FIELDS) if filters else page,
        "clear_filters_url": link(page, request, drop=tuple(key for key, _ in filters if key != "_facet")),
        "facets": {}, "suggested_facets": [], "filter_description": None, "next_url": None, "show_weak_url": None,
        "collapsed_note": False, "every_copy_url": None,
        "reference_urls": [],
        "terms": [],
    }


def outcome_context(
    datasette: "Datasette", request: "Request", target: Target, outcome: Outcome, page: str
) -> dict[str, Any]:
    """What the search page shows of a search's outcome, but its facets."""
    wanted, narrowing = outcome.wanted, outcome.narrowing
    more = outcome.has_more
    best = outcome.results[0] if outcome.results else None
    weak_only = best is not None and best["strength"] is not None and not best["strong"] and not best["text_match"]
    hide_weak = weak_only and request.args.get(SHOW_WEAK) != "1"  # a nonsense query shows no grid unless asked
    return {
        "q": wanted.query, "k": str(wanted.k), "uploaded": wanted.image is not None, "results": outcome.results,
        "sql_url": sql_url(datasette, target, wanted, narrowing),
        "filter_description": narrowing.description or None,
        "suggested_facets": [(name, link(page, request, add=(("_facet", name),)))
                             for name in suggested_facets(narrowing, outcome.results)],
        "reference_urls": reference_thumbnails(page, outcome.readings),
        "terms": [{**reading.as_dict(), "model": model_label(reading.model)} for reading in outcome.readings],
        "next_url": link(page, request, add=(("_next", str(narrowing.offset + wanted.k)),)) if more else None,
        "show_weak_url": link(page, request, add=((SHOW_WEAK, "1"),)) if hide_weak else None,
        "collapsed_note": any(result["near_copies"] for result in outcome.results),
        "every_copy_url": link(page, request, drop=("collapse",), add=(("collapse", "0"),)),
        "sort_label": sort_label(narrowing.sort),
        "sort_links": [] if wanted.image is not None else sort_links(page, request, bool(wanted.query)),
        "offset": narrowing.offset,
    }


def reference_thumbnails(page: str, readings: list[Reading]) -> list[str]:
    """The pictures a text query searches by (its ``row:`` terms with a positive weight), to show above the
    results; an upload has no readings."""
    return [f"{page}/thumbnail/{reading.row}" for reading in readings if reading.row is not None and reading.weight > 0]


