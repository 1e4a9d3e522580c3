"""The local engine: worker threads read and decode while this thread runs the model on full batches."""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

from datasette_imgsearch.build.engines.base import EngineJob
from datasette_imgsearch.build.inspect import Inspected, inspect_file, split_rows
from datasette_imgsearch.images.scan import FoundFile


class LocalEngine:
    """Decoding in ``options.workers`` threads, the model in the calling thread (see :class:`base.Engine`)."""

    precision: str | None = None

    def __init__(self, job: EngineJob) -> None:
        self.job = job

    def results(self, items: list[FoundFile], reusable: set[str]) -> Iterator[Inspected]:
        batch_size = self.job.options.batch_size
        waiting: list[Inspected] = []
        pictures = 0
        for result in self._inspected(items, reusable):
            waiting.append(result)
            pictures += result.features is not None
            if pictures >= batch_size or len(waiting) >= 4 * batch_size:
                yield from self._encoded(waiting)
                waiting, pictures = [], 0
        yield from self._encoded(waiting)

    def close(self) -> None:
        pass

    def _encoded(self, results: list[Inspected]) -> list[Inspected]:
        pictures = [result for result in results if result.features is not None]
        if pictures:
            features = [result.features for result in pictures]
            vectors = self.job.embedder().encode_preprocessed(features)
            for result, rows in zip(pictures, split_rows(vectors, features)):
                result.take_vectors(rows)
        return results

    def _inspected(self, items: list[FoundFile], reusable: set[str]) -> Iterator[Inspected]:
        """Inspect ``items`` (:func:`inspect_file`) in worker threads; yield the results in order."""
        options = self.job.options
        with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
            in_flight: collections.deque[Future[Inspected]] = collections.deque()
            queue = iter(items)
            try:
                for _ in range(len(items)):
                    while len(in_flight) < max(4, options.batch_size * 3):
                        item = next(queue, None)
                        if item is None:
                            break
                        in_flight.append(pool.submit(inspect_file, item, reusable, self.job.embedder, options))
                    yield in_flight.popleft().result()
            finally:
                for future in in_flight:
                    future.cancel()
