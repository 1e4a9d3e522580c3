"""Loading a searcher's models and vectors once, in the background, so that the first query is fast and
a server answers its first request as soon as it would without them."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from datasette_imgsearch.errors import QueryError

RETRY_SECONDS = 5.0


class BackgroundLoad:
    """Runs ``load`` in a thread of its own; queries wait for it, up to a timeout, and get its error.
    ``describe`` names what is loading, for the message a query gets while it is still going.

    A load that failed is tried again by the first query ``retry_seconds`` after the failure: a model
    folder put back, a cache repaired or a hub that answers again is picked up without a restart, and
    a server that cannot load is not asked to try at every query."""

    def __init__(self, load: Callable[[], None], describe: Callable[[], str], retry_seconds: float | None = None) -> None:
        self._load = load
        self._describe = describe
        self.retry_seconds = retry_seconds  # None: RETRY_SECONDS
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._error: Exception | None = None
        self._failed_at = 0.0
        self._seconds: float | None = None

    def start(self) -> None:
        with self._lock:
            retry = RETRY_SECONDS if self.retry_seconds is None else self.retry_seconds
            stale = self._error is not None and time.monotonic() - self._failed_at >= retry
            if stale and self._done.is_set():
                self._error, self._thread = None, None
                self._done.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imgsearch-loader", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None) -> None:
        """Start the load if need be (again, if it failed long enough ago) and wait for it; raise its error,
        or say that it is still going."""
        self.start()
        if not self._done.wait(timeout):
            raise QueryError(f"imgsearch is still loading the model {self._describe()!r}; try again in a few seconds")
        error = self._error
        if error is not None:
            raise error

    def state(self) -> dict[str, Any]:
        done = self._done.is_set()
        return {
            "loaded": done and self._error is None,
            "load_seconds": self._seconds if done else None,
            "load_error": str(self._error) if self._error else None,
        }

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self._load()
        except Exception as error:  # reported to every query by wait, until it is tried again
            self._error = error
            self._failed_at = time.monotonic()
        finally:
            self._seconds = round(time.monotonic() - started, 3)
            self._done.set()
