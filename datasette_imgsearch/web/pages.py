"""What the plugin adds to Datasette's own table and row pages of a catalog, through the public
``extra_body_script`` hook (the same on both Datasette lines): a visible link to the search on the table
page, and on a row page the picture itself, large, with its "more like this" results beside it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from datasette_imgsearch.catalog.schema import TABLE
from datasette_imgsearch.web.routes import search_url

if TYPE_CHECKING:
    from datasette.app import Datasette

MORE_LIKE_THIS = 8  # results the row page shows inline

_TABLE_SCRIPT = """
(function () {
  var heading = document.querySelector("h1");
  if (!heading) { return; }
  var link = document.createElement("p");
  link.className = "imgsearch-table-link";
  link.innerHTML = '<a href="' + IMGSEARCH.search + '"><strong>Search these images by text or example</strong></a>' +
    ' · <a href="' + IMGSEARCH.duplicates + '">Near-duplicates</a>';
  (heading.closest(".page-header") || heading).insertAdjacentElement("afterend", link);
})();
"""

_ROW_SCRIPT = """
(function () {
  var heading = document.querySelector("h1");
  if (!heading) { return; }
  heading = heading.closest(".page-header") || heading;
  var figure = document.createElement("figure");
  figure.className = "imgsearch-row-picture";
  figure.style.cssText = "margin: 0.5em 0 1em; max-width: 100%";
  var shown = IMGSEARCH.moment === null ?
    '<a href="' + IMGSEARCH.original + '"><img alt="the picture" ' +
    'style="max-width: 100%; max-height: 60vh; display: block" src="' + IMGSEARCH.original + '" ' +
    'onerror="this.onerror=null; this.src=\\'' + IMGSEARCH.thumbnail + '\\'"></a>' :
    '<video controls preload="metadata" style="max-width: 100%; max-height: 60vh; display: block" poster="' +
    IMGSEARCH.thumbnail + '" src="' + IMGSEARCH.original + '#t=' + IMGSEARCH.moment + '"></video>';
  figure.innerHTML = shown +
    '<figcaption><a href="' + IMGSEARCH.more + '">More like this</a></figcaption><div class="imgsearch-more"></div>';
  heading.insertAdjacentElement("afterend", figure);
  fetch(IMGSEARCH.json, {credentials: "same-origin"}).then(function (response) { return response.json(); }).then(function (data) {
    if (!data.ok) { return; }
    var strip = figure.querySelector(".imgsearch-more");
    strip.style.cssText = "display: flex; flex-wrap: wrap; gap: 8px; margin-top: 0.5em";
    data.results.forEach(function (result) {
      var cell = document.createElement("a");
      cell.href = result.row_url;
      cell.title = result.path + " (" + result.score.toFixed(3) + ")";
      var picture = document.createElement("img");
      picture.src = result.thumbnail_url;
      picture.alt = result.name;
      picture.style.cssText = "width: 96px; height: 96px; object-fit: cover";
      cell.appendChild(picture);
      strip.appendChild(cell);
    });
  });
})();
"""


def page_script(
    datasette: "Datasette", database: str, table: str, view_name: str, request: Any
) -> str | Callable[[], Awaitable[str]] | None:
    """The script for a catalog's table page, or (once the row is read) for a row page; None for any other page."""
    base = search_url(datasette, database, table)
    if view_name == "table":
        return f"var IMGSEARCH = {json.dumps({'search': base, 'duplicates': base + '/duplicates'})};" + _TABLE_SCRIPT
    row_id = str((getattr(request, "url_vars", None) or {}).get("pks", ""))
    if view_name != "row" or not row_id.isascii() or not row_id.isdigit() or len(row_id) > 19:
        return None

    async def row_script() -> str:
        """A video's row (or a frame's) plays its video from its moment; a picture's shows it."""
        config = {
            "original": f"{base}/original/{row_id}",
            "thumbnail": f"{base}/thumbnail/{row_id}",
            "more": f"{base}?q=row:{row_id}",
            "json": f"{base}.json?q=row:{row_id}&k={MORE_LIKE_THIS}",
            "moment": await _moment_of(datasette, database, int(row_id)),
        }
        return f"var IMGSEARCH = {json.dumps(config)};" + _ROW_SCRIPT

    return row_script


async def _moment_of(datasette: "Datasette", database: str, row_id: int) -> float | None:
    """The time in its video of a video's or a frame's row; None for a picture (or a catalog without videos)."""
    db = datasette.databases[database]
    if "frame_time" not in await db.table_columns(TABLE):
        return None
    found = await db.execute(f"select frame_time from [{TABLE}] where id = ?", [row_id])
    return found.rows[0][0] if found.rows else None
