"""CSRF for upload POSTs where asgi-csrf guards Datasette (0.65), since it cannot read our multipart forms.

asgi-csrf 0.11 with python-multipart >= 0.0.25 answers 500 to a multipart POST that carries the token
as a form field (asgi-csrf issue #38), which is exactly what the search page's upload form sends
without JavaScript. So the plugin's ``skip_csrf`` hook asks asgi-csrf to step aside for its own two
POST routes, marks the request's scope when it does, and the view applies the same double-submit rule
itself after parsing the form: the ``csrftoken`` field or the ``x-csrftoken`` header must equal the
signed ``ds_csrftoken`` cookie. Requests with no cookies (API clients) and ``Authorization: Bearer``
requests pass, as under asgi-csrf.

No version is consulted: a request that asgi-csrf did not skip for us was either checked by
asgi-csrf itself or by Datasette's own ``Sec-Fetch-Site``/``Origin`` check (1.0a27+, which never
calls the hook), so the mark on the scope is the whole decision.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from datasette_imgsearch.errors import RequestError
from datasette_imgsearch.web.routes import UPLOAD_ROUTES

if TYPE_CHECKING:
    from datasette.app import Datasette
    from datasette.utils.asgi import Request

COOKIE = "ds_csrftoken"
SKIPPED = "datasette_imgsearch.csrf_skipped"


def register_skip_hook(plugin: Any) -> None:
    """Give ``plugin`` (this package, as Datasette registered it) a ``skip_csrf`` hook, once, where Datasette
    defines that hook (0.65 and the alphas before its CSRF middleware went): a plugin that implements a hook
    Datasette does not define shows in its list of hooks and fails its own tests. The plugin is registered
    again under its own name, so it stays one plugin."""
    from datasette import hookimpl
    from datasette.plugins import pm

    if not hasattr(pm.hook, "skip_csrf") or hasattr(plugin, "skip_csrf") or not pm.is_registered(plugin):
        return
    name = pm.get_name(plugin)
    plugin.skip_csrf = hookimpl(skip_csrf)
    pm.unregister(plugin)
    pm.register(plugin, name=name)


def skip_csrf(scope: dict[str, Any]) -> bool | None:
    """Datasette's ``skip_csrf``: leave the plugin's upload routes to :func:`check`."""
    return True if skip_asgi_csrf(scope) else None


def skip_asgi_csrf(scope: dict[str, Any]) -> bool:
    """Whether asgi-csrf should leave this request to :func:`check`; marks the scope when it should."""
    if scope.get("method") == "POST" and UPLOAD_ROUTES.match(scope.get("path", "")):
        scope[SKIPPED] = True
        return True
    return False


def check(datasette: "Datasette", request: "Request", fields: dict[str, str]) -> None:
    """Refuse a cross-site upload with 403, as asgi-csrf would, when asgi-csrf stepped aside for it."""
    if not request.scope.get(SKIPPED):
        return
    if not request.headers.get("cookie") or request.headers.get("authorization", "").startswith("Bearer "):
        return
    cookie = request.cookies.get(COOKIE, "")
    try:
        datasette.unsign(cookie, "csrftoken")
    except Exception:
        cookie = ""
    sent = request.headers.get("x-csrftoken") or fields.get("csrftoken", "")
    if not cookie or not secrets.compare_digest(sent, cookie):
        raise RequestError(403, "the form's CSRF token is missing or out of date: reload the page and try again")
