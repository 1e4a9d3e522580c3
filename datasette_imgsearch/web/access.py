"""Whether an actor may view a table, or the instance, on both Datasette lines.

Datasette does not protect plugin routes, so every imgsearch page, JSON endpoint and image route
asks here first. 1.0a20+ has ``datasette.allowed()`` with resource objects; 0.65 has
``ensure_permissions()``, which walks table → database → instance the way Datasette's own pages do
(its ``check_visibility()`` runs that walk a second time, for the anonymous actor, to tell a private
table, which nothing here shows; each walk costs a query for the table's name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasette.app import Datasette


async def can_view_table(datasette: "Datasette", actor: dict[str, Any] | None, database: str, table: str) -> bool:
    if hasattr(datasette, "allowed"):
        from datasette.resources import TableResource

        return bool(
            await datasette.allowed(action="view-table", resource=TableResource(database=database, table=table), actor=actor)
        )
    from datasette import Forbidden

    try:
        await datasette.ensure_permissions(
            actor, [("view-table", (database, table)), ("view-database", database), "view-instance"]
        )
    except Forbidden:
        return False
    return True


async def can_view_instance(datasette: "Datasette", actor: dict[str, Any] | None) -> bool:
    """What Datasette asks before ``/-/versions.json``: the status endpoint shows as much."""
    if hasattr(datasette, "allowed"):
        return bool(await datasette.allowed(action="view-instance", actor=actor))
    return bool(await datasette.permission_allowed(actor, "view-instance", default=True))
