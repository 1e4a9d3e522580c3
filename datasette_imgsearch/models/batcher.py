"""Combining concurrent single calls into one batched call: text queries share one model run, and
concurrent exact searches share one pass over the matrix."""

from __future__ import annotations

import threading
from typing import Any, Callable


class Batcher:
    """Combine concurrent single calls into batched calls of ``function`` (a list in, rows out).

    Whoever finds the model idle encodes everything queued so far, its own item included; the others
    wait and wake with their result, or take the next turn."""

    def __init__(self, function: Callable[[list[Any]], Any]) -> None:
        self.function = function
        self.condition = threading.Condition()
        self.queue: list[_Pending] = []
        self.busy = False

    def __call__(self, item: Any) -> Any:
        pending = _Pending(item)
        with self.condition:
            self.queue.append(pending)
            while not pending.done:
                if self.busy:
                    self.condition.wait()
                    continue
                self.busy, batch, self.queue = True, self.queue, []
                self.condition.release()
                try:
                    self._run(batch)
                finally:
                    self.condition.acquire()
                    self.busy = False
                    self.condition.notify_all()
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _run(self, batch: list["_Pending"]) -> None:
        try:
            results = self.function([p.item for p in batch])
        except Exception as error:
            for p in batch:
                p.error, p.done = error, True
            return
        for p, result in zip(batch, results):
            p.result, p.done = result, True


class _Pending:
    def __init__(self, item: Any) -> None:
        self.item = item
        self.result: Any = None
        self.error: Exception | None = None
        self.done = False
