"""One error model for every door: the CLI, the SQL functions, the search page and its JSON.

Every problem a person can act on is an :class:`ImgsearchError` carrying an HTTP status and a short
``kind``. The CLI prints its message as a ``click.ClickException``, the web answers with its status,
and the SQL functions show its message as the SQL error. Anything else is a bug and is not caught here.
"""

from __future__ import annotations


class ImgsearchError(Exception):
    """A problem with what was asked for; ``message`` says what to do about it."""

    status = 400
    kind = "error"

    def __init__(self, message: str, *, kind: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind
        if status is not None:
            self.status = status


class CatalogError(ImgsearchError):
    """A catalog that cannot be used as asked (missing, not a catalog, newer schema, being written)."""

    status = 503
    kind = "catalog"


class ModelError(ImgsearchError):
    """A model that cannot be loaded or used."""

    status = 503
    kind = "model"


class QueryError(ImgsearchError, ValueError):
    """A query that cannot be run; the message says what was wrong and how to write it."""

    kind = "query"


class ImageError(ImgsearchError):
    """An image that cannot be used; ``kind`` is the category stored in ``imgsearch_errors``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message, kind=kind)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickled as its own arguments: it travels from Ray's workers to the build that records it."""
        return ImageError, (self.kind, self.message)

    def __str__(self) -> str:
        return f"{self.message} ({self.kind})"


class RequestError(ImgsearchError):
    """A web request to refuse, with the status it is refused with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status, kind="request")


def web_message(error: ImgsearchError) -> str:
    """The text a page or JSON answer shows: an image error is about the uploaded file."""
    if isinstance(error, ImageError):
        return f"the uploaded file cannot be used: {error.message}"
    return error.message
