"""Combining concurrent single calls into one batched call: text queries share one model run, and
concurrent exact searches share one pass over the matrix."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

# How long after a batch's callers are released a batcher they go on to waits at most for all of them,
# so that they share its next run too (a query's text, then its pass over the vectors). They arrive
# one by one as each gets the GIL: under eight clients' load 2.7 ms after the release at the median,
# 15 at the 99th percentile. A caller that goes elsewhere says so (went_elsewhere), so the bound is a
# safety net.
GATHER_SECONDS = 0.020

_last_batch = threading.local()  # the batch (a Cohort) that this thread's last result came from
_counting = threading.Lock()


class Cohort:
    """The callers one batch served, on their way to the next batcher: how many have not arrived, and
    the batchers waiting for them."""

    def __init__(self, size: int) -> None:
        self.coming = size
        self.released = time.monotonic()
        self.watchers: list[threading.Condition] = []

    def arrived(self) -> None:
        with _counting:
            self.coming -= 1
            watchers = list(self.watchers)
        for condition in watchers:
            with condition:
                condition.notify_all()

    def watch(self, condition: threading.Condition) -> None:
        with _counting:
            if condition not in self.watchers:
                self.watchers.append(condition)

    def awaited(self, now: float) -> bool:
        return self.coming > 0 and now < self.released + GATHER_SECONDS


def went_elsewhere() -> None:
    """This thread goes on to no other batcher: the batch it came from stops waiting for it (a search
    answered from an index, or a query vector scored in SQL)."""
    cohort = getattr(_last_batch, "cohort", None)
    _last_batch.cohort = None
    if cohort is not None:
        cohort.arrived()


class Batcher:
    """Combine concurrent single calls into batched calls of ``function`` (a list in, rows out).

    Whoever finds the model idle encodes everything queued so far, its own item included; the others
    wait and wake with their result, or take the next turn. A batcher made with ``passes_on`` is one
    whose callers go on to another batcher (a query's text, then its pass): released together, they
    arrive there one by one, and the first would run alone, so the turn there waits for the rest of
    their batch."""

    def __init__(self, function: Callable[[list[Any]], Any], passes_on: bool = False) -> None:
        self.function = function
        self.passes_on = passes_on
        self.condition = threading.Condition()
        self.queue: list[_Pending] = []
        self.busy = False

    def __call__(self, item: Any) -> Any:
        pending = _Pending(item, getattr(_last_batch, "cohort", None))
        with self.condition:
            self.queue.append(pending)
        went_elsewhere()  # queued first, so that a turn never runs without it once it counts as arrived
        with self.condition:
            while not pending.done:
                if self.busy:
                    self.condition.wait()
                    continue
                self.busy = True
                self._gather()
                batch, self.queue = self.queue, []
                self.condition.release()
                try:
                    self._run(batch)
                finally:
                    self.condition.acquire()
                    self.busy = False
                    self.condition.notify_all()
        if pending.error is not None:
            raise pending.error
        _last_batch.cohort = pending.cohort
        return pending.result

    def _gather(self) -> None:
        """Wait, holding the turn, while callers of a batch that queued calls came from are still coming."""
        while True:
            now = time.monotonic()
            awaited = {id(p.came_with): p.came_with for p in self.queue if p.came_with is not None and p.came_with.awaited(now)}
            if not awaited:
                return
            for cohort in awaited.values():
                cohort.watch(self.condition)
            self.condition.wait(max(c.released for c in awaited.values()) + GATHER_SECONDS - now)

    def _run(self, batch: list["_Pending"]) -> None:
        try:
            results = self.function([p.item for p in batch])
        except Exception as error:
            for p in batch:
                p.error, p.done = error, True
            return
        cohort = Cohort(len(batch)) if self.passes_on and len(batch) > 1 else None
        for p, result in zip(batch, results):
            p.result, p.cohort, p.done = result, cohort, True


class _Pending:
    def __init__(self, item: Any, came_with: Cohort | None) -> None:
        self.item = item
        self.came_with = came_with
        self.cohort: Cohort | None = None
        self.result: Any = None
        self.error: Exception | None = None
        self.done = False
