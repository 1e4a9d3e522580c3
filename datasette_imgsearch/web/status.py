"""``/-/imgsearch``: what each catalog the actor may view holds and what its searcher loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datasette.utils.asgi import Response

from datasette_imgsearch.catalog.catalog import Catalog, is_catalog
from datasette_imgsearch.catalog.schema import ERRORS_TABLE, TABLE
from datasette_imgsearch.errors import ImgsearchError, RequestError
from datasette_imgsearch.models.names import model_label
from datasette_imgsearch.search.registry import existing_searcher
from datasette_imgsearch.settings import Settings
from datasette_imgsearch.status import catalog_status, versions
from datasette_imgsearch.web.access import can_view_instance, can_view_table
from datasette_imgsearch.web.routes import SEGMENT, search_url
from datasette_imgsearch.web.target import answers_errors, catalog_file, in_thread

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request


# Status ----------------------------------------------------------------------------------------
def _public_status(path: str, immutable: bool) -> dict[str, Any]:
    with Catalog(path, immutable=immutable) as catalog:
        facts = catalog_status(catalog)
    facts.pop("folder")  # an absolute path on the server: not for everyone who may view the table
    for key in ("model", "text_model", "multilingual_model"):
        facts[key] = model_label(facts.get(key))
    return facts


@answers_errors(as_json=True)
async def status_view(datasette: "Datasette", request: "Request") -> Response:
    """``/-/imgsearch``: versions, and for each catalog the actor may view, what it holds and what the
    searcher loaded (and how long that took): one block to paste into a bug report. Only for actors who
    may view the instance, as Datasette's own ``/-/versions.json``."""
    if not await can_view_instance(datasette, request.actor):
        raise RequestError(403, "you do not have permission to view this instance")
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
        state = await in_thread(searcher.state) if searcher is not None else None
        if state is not None:
            state["text_model"] = model_label(state["text_model"])
            state["multilingual_model"] = model_label(state["multilingual_model"])
        facts["searcher"] = state
        catalogs[name] = facts
    if request.path.endswith(".json"):
        return Response.json({"versions": versions(), "catalogs": catalogs})
    for name, facts in catalogs.items():
        facts.update(table_url=datasette.urls.table(name, TABLE), search_url=search_url(datasette, name, TABLE),
                     errors_url=datasette.urls.table(name, ERRORS_TABLE))
    context = {"catalogs": catalogs, "versions": versions(), "json_url": datasette.urls.path(SEGMENT + ".json")}
    return Response.html(await datasette.render_template("imgsearch_status.html", context, request=request))
