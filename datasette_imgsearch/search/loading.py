"""Loading a searcher's models and vectors once, in the background, so that the first query is fast and
a server answers its first request as soon as it would without them."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from datasette_imgsearch.errors import QueryError


class BackgroundLoad:
    """Runs ``load`` once in a thread of its own; queries wait for it, up to a timeout, and get its error.
    ``describe`` names what is loading, for the message a query gets while it is still going."""

    def __init__(self, load: Callable[[], None], describe: Callable[[], str]) -> None:
        self._load = load
        self._describe = describe
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._error: Exception | None = None
        self._seconds: float | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imgsearch-loader", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None) -> None:
        """Start the load if need be and wait for it; raise its error, or say that it is still going."""
        self.start()
        if not self._done.wait(timeout):
            raise QueryError(f"imgsearch is still loading the model {self._describe()!r}; try again in a few seconds")
        if self._error is not None:
            raise self._error

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
        except Exception as error:  # reported to every query by wait
            self._error = error
        finally:
            self._seconds = round(time.monotonic() - started, 3)
            self._done.set()
