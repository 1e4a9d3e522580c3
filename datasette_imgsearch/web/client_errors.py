"""Datasette's answer to a client error (a URL that matches nothing, a 403, a 400), made without the
traceback print that breaks it.

With ``rich`` importable (transformers brings it in), Datasette's default ``handle_exception`` prints
every exception with ``rich``, including the 404 of a URL that matches no route, where there is no
exception being handled: ``rich`` then raises, and the 404 becomes a 500 (and each 4xx floods the log with
a traceback). This hook answers client errors itself, with Datasette's own templates and JSON shape, and
leaves real errors (5xx) to Datasette.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datasette.utils.asgi import Base400, Response

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request


def status_of(exception: BaseException) -> int | None:
    """The 4xx status of a client error; None for anything else."""
    from datasette.views.base import DatasetteError

    if isinstance(exception, Base400):
        return int(exception.status)
    if isinstance(exception, DatasetteError) and 400 <= int(exception.status) < 500:
        return int(exception.status)
    return None


def message_of(exception: BaseException) -> tuple[str, str | None, dict[str, Any]]:
    """(message, title, extra facts) as Datasette's default handler takes them from an exception."""
    from datasette.views.base import DatasetteError
    from markupsafe import Markup

    if isinstance(exception, DatasetteError):
        message = Markup(exception.message) if exception.message_is_html else exception.message
        return message, exception.title, dict(exception.error_dict or {})
    return str(exception.args[0]) if exception.args else "", None, {}


async def client_error_response(datasette: "Datasette", request: "Request", exception: BaseException) -> Response | None:
    """The response to a client error, as Datasette's default handler makes it, or None for other errors."""
    status = status_of(exception)
    if status is None:
        return None
    message, title, info = message_of(exception)
    plain = str(getattr(exception, "plain_message", None) or message)
    headers: dict[str, str] = {}
    if datasette.cors:
        from datasette.utils import add_cors_headers

        add_cors_headers(headers)
    path = request.path.split("?")[0]
    if path.endswith(".json"):
        return Response.json({**info, **_error_body(plain, status, title)}, status=status, headers=headers)
    if path.endswith(".csv"):
        return Response.text(plain, status=status, headers=headers)
    context = {**info, "ok": False, "error": message, "status": status, "title": title}
    html = await datasette.render_template([f"{status}.html", "error.html"], context, request=request)
    return Response.html(html, status=status, headers=headers)


def _error_body(message: str, status: int, title: str | None) -> dict[str, Any]:
    """The JSON of an error in this Datasette's shape (``datasette.utils.error_body`` where it exists)."""
    try:
        from datasette.utils import error_body
    except ImportError:
        return {"ok": False, "error": message, "status": status, "title": title}
    return dict(error_body(message, status))
