"""datasette-imgsearch: semantic image search (CLIP + FAISS) in a SQLite catalog, as a Datasette plugin.

The hook functions here are thin: each hands over to plain library code in this package. They import
the web module when first called, so the command line never pays for Datasette's views.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

import pluggy
from markupsafe import Markup

from datasette_imgsearch.catalog.catalog import has_embeddings, is_catalog
from datasette_imgsearch.catalog.schema import REMOVED_TABLE, TABLE
from datasette_imgsearch.errors import ImgsearchError
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search.registry import searcher_for
from datasette_imgsearch.settings import Settings
from datasette_imgsearch.sql import binding
from datasette_imgsearch.sql.functions import register_functions
from datasette_imgsearch.web import csrf

if TYPE_CHECKING:
    from datasette.app import Datasette

# Datasette's own marker (``datasette.hookimpl``) is this one; making it here spares the command line
# the import of Datasette itself.
hookimpl = pluggy.HookimplMarker("datasette")
# The background load waits this long, so that importing torch (seconds of work holding the GIL) does
# not delay Datasette's first answers (+0.3 s measured); a query that comes sooner starts it at once.
LOAD_AFTER_SECONDS = 1.0
# Per Datasette instance, the databases found to hold a catalog when their first connection opened:
# the table action and the cell links appear only there, never on any other table called images.
_catalogs: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _is_catalog(datasette: "Datasette", database: str) -> bool:
    return database in _catalogs.get(datasette, ())


@hookimpl
def prepare_connection(conn: Any, database: str, datasette: "Datasette") -> None:
    from datasette_imgsearch.web.target import catalog_file

    found = catalog_file(datasette, database)
    if found and is_catalog(conn):
        _catalogs.setdefault(datasette, set()).add(database)
        path, immutable = found
        binding.claim(path)  # this connection was opened already: the catalog's next ones get readable errors
        register_functions(conn, path, Settings.for_database(datasette, database), immutable)


@hookimpl
def startup(datasette: "Datasette") -> None:
    """Start loading each catalog's model and vectors in the background, so the first query is fast and
    Datasette answers its first request as soon as it would without this plugin."""
    from datasette_imgsearch.web.target import catalog_file

    csrf.register_skip_hook(sys.modules[__name__])
    for name in list(datasette.databases):
        found = catalog_file(datasette, name)
        if found and has_embeddings(*found):
            binding.claim(found[0])  # before Datasette opens its connections, so imgsearch()'s errors can say what is wrong
            settings = Settings.for_database(datasette, name)
            timer = threading.Timer(LOAD_AFTER_SECONDS, _load, args=(found[0], settings.models, found[1]))
            timer.daemon = True
            timer.start()


def _load(path: str, choice: ModelChoice, immutable: bool) -> None:
    try:
        searcher_for(path, choice, immutable).start_loading()
    except ImgsearchError:
        pass  # the first query that needs this catalog gets the message


@hookimpl
def register_routes() -> list[tuple[str, Any]]:
    from datasette_imgsearch.web.routes import routes

    return routes()


@hookimpl
def table_actions(datasette: "Datasette", database: str, table: str) -> list[dict[str, str]] | None:
    from datasette_imgsearch.web.routes import search_url

    if table != TABLE or not _is_catalog(datasette, database):
        return None
    return [{
        "href": search_url(datasette, database, table),
        "label": "Search images by text or example",
        "description": "Semantic search with CLIP: type a description or upload a reference image",
    }]


@hookimpl
def extra_body_script(datasette: "Datasette", database: str, table: str | None, view_name: str, request: Any) -> Any:
    """On a catalog's table page a visible link to the search; on a row page the picture, large, and more like it."""
    if table != TABLE or not _is_catalog(datasette, database):
        return None
    from datasette_imgsearch.web.pages import page_script

    return page_script(datasette, database, table, view_name, request)


@hookimpl(tryfirst=True)  # before datasette-render-images, which would put the thumbnails' bytes in the page
def render_cell(value: Any, column: str, table: str | None, database: str, datasette: "Datasette", row: Any) -> Markup | None:
    """Thumbnails as pictures; paths with their picture, a link to the original and "more like this"."""
    if table not in (TABLE, REMOVED_TABLE, None) or not _is_catalog(datasette, database):
        return None
    from datasette_imgsearch.web.cells import render_cell as cell

    return cell(value, column, table, database, datasette, row)


@hookimpl(hookwrapper=True)
def handle_exception(datasette: "Datasette", request: Any, exception: BaseException) -> Any:
    """Client errors (404, 403, 400) answered as Datasette's default handler answers them, in its place:
    where ``rich`` is installed that handler prints a traceback even for a URL that matches nothing, where
    no exception is being handled, and the print fails, turning the 404 into a 500. Datasette awaits every
    handler's answer, so the default one (the last: it runs ``trylast``) is taken out of the answers;
    other plugins' come first as before. Other errors are left as they are."""
    from datasette_imgsearch.web.client_errors import client_error_response, status_of

    outcome = yield
    if status_of(exception) is None:
        return
    answers = list(outcome.get_result() or [])
    outcome.force_result(answers[:-1] + [client_error_response(datasette, request, exception)])


@hookimpl
def register_commands(cli: Any) -> None:
    from datasette_imgsearch.cli import cli as imgsearch_cli

    cli.add_command(imgsearch_cli, name="imgsearch")
