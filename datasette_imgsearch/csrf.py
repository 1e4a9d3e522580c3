"""CSRF for upload POSTs on Datasette 0.65, where asgi-csrf cannot read our multipart forms.

asgi-csrf 0.11 with python-multipart >= 0.0.25 answers 500 to a multipart POST that carries the token
as a form field (asgi-csrf issue #38), which is exactly what the search page's upload form sends
without JavaScript. So on 0.65 the plugin asks asgi-csrf to skip its own two POST routes and applies
the same double-submit rule itself, after parsing the form: the ``csrftoken`` field or the
``x-csrftoken`` header must equal the signed ``ds_csrftoken`` cookie. Requests with no cookies (API
clients) and ``Authorization: Bearer`` requests pass, as under asgi-csrf. Datasette 1.0a27+ checks
``Sec-Fetch-Site``/``Origin`` instead, needs none of this, and never calls the hook.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from datasette.version import __version__ as datasette_version

from .uploads import RequestError


def uses_asgi_csrf(version: str) -> bool:
    """0.x and the 1.0 alphas before a27 protect POSTs with asgi-csrf."""
    alpha = re.match(r"1\.0a(\d+)", version)
    return version.startswith("0.") or bool(alpha and int(alpha.group(1)) < 27)


USES_ASGI_CSRF = uses_asgi_csrf(datasette_version)
COOKIE = "ds_csrftoken"
_UPLOAD_ROUTES = re.compile(r"^/[^/]+/[^/]+/-/imgsearch(\.json)?$")


def skip_asgi_csrf(scope: dict[str, Any]) -> bool:
    """Whether asgi-csrf should leave this request to :func:`check`."""
    return USES_ASGI_CSRF and scope.get("method") == "POST" and bool(_UPLOAD_ROUTES.match(scope.get("path", "")))


def check(datasette: Any, request: Any, fields: dict[str, str]) -> None:
    """Refuse a cross-site upload on 0.65 with 403, as asgi-csrf would."""
    if not USES_ASGI_CSRF:
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
