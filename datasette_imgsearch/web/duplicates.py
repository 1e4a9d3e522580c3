"""``/<db>/images/-/imgsearch/duplicates``: the catalog's near-duplicate groups side by side, to review.

The page shows each group's pictures with the facts a person weighs before removing a copy, the
suggested keeper first; its JSON gives the same. Nothing here deletes anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datasette.utils.asgi import Response

from datasette_imgsearch.duplicates.listing import duplicate_groups, group_count
from datasette_imgsearch.errors import CatalogError, RequestError
from datasette_imgsearch.web.narrowing import link
from datasette_imgsearch.web.routes import search_url
from datasette_imgsearch.web.target import answers_errors, resolve

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

GROUPS_PER_PAGE = 20
MAX_OFFSET = 10_000_000


@answers_errors(as_json=False)
async def duplicates_page(datasette: "Datasette", request: "Request") -> Response:
    return await _duplicates(datasette, request, as_json=False)


@answers_errors(as_json=True)
async def duplicates_json(datasette: "Datasette", request: "Request") -> Response:
    return await _duplicates(datasette, request, as_json=True)


async def _duplicates(datasette: "Datasette", request: "Request", as_json: bool) -> Response:
    target = await resolve(datasette, request)
    offset_text = request.args.get("_next", "0")
    if not (offset_text.isascii() and offset_text.isdigit()) or int(offset_text) > MAX_OFFSET:
        raise RequestError(400, f"_next must be a group offset, not {offset_text[:20]!r}")
    offset = int(offset_text)
    if "duplicate_group" not in target.row_columns:
        raise CatalogError("this catalog was built before near-duplicates were found: run 'datasette-imgsearch build' on it")
    db = datasette.databases[target.database]
    groups = await db.execute_fn(lambda conn: duplicate_groups(conn, GROUPS_PER_PAGE + 1, offset))
    total, copies = await db.execute_fn(group_count)
    base = search_url(datasette, target.database, target.table)
    more = len(groups) > GROUPS_PER_PAGE
    next_url = link(f"{base}/duplicates{'.json' if as_json else ''}", request, add=(("_next", str(offset + GROUPS_PER_PAGE)),))
    shown = [group.as_dict() for group in groups[:GROUPS_PER_PAGE]]
    for group in shown:
        for member in group["members"]:
            member.update(row_url=datasette.urls.row(target.database, target.table, str(member["id"])),
                          thumbnail_url=f"{base}/thumbnail/{member['id']}", original_url=f"{base}/original/{member['id']}")
    if as_json:
        return Response.json({"ok": True, "groups": total, "copies": copies, "results": shown,
                              "next_url": next_url if more else None})
    context: dict[str, Any] = {
        "database": target.database, "table": target.table, "groups": shown, "total": total, "copies": copies,
        "offset": offset, "next_url": next_url if more else None, "json_url": f"{base}/duplicates.json",
        "search_url": base, "table_url": datasette.urls.table(target.database, target.table),
    }
    return Response.html(await datasette.render_template("imgsearch_duplicates.html", context, request=request))
