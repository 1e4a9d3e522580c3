"""The models a process has loaded, shared by every catalog and door that asks for the same one."""

from __future__ import annotations

import threading
import time

from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.models.embedder import Embedder
from datasette_imgsearch.models.names import looks_like_path, model_key

ModelKey = tuple[str, str, str, str, str | None]  # (model_key(name), device, precision, runtime, export folder)


class ModelCache:
    """Loaded models by name, device and precision; several catalogs on one server load a model once.

    A hub model that could not be loaded is not tried again for ``failure_memory_seconds``: on a
    server without internet every query would otherwise wait for the hub's connection check. A local
    folder is always tried again (it may be put back at any moment)."""

    def __init__(self, failure_memory_seconds: float = 60.0) -> None:
        self.failure_memory_seconds = failure_memory_seconds
        self._loaded: dict[ModelKey, Embedder] = {}
        self._failures: dict[ModelKey, tuple[float, ModelError]] = {}
        self._lock = threading.Lock()

    def load(self, name: str, device: str = "auto", precision: str = "fp32", option: str = "--model",
             runtime: str = "torch", onnx: str | None = None) -> Embedder:
        """The shared :class:`Embedder` for ``name``, loaded at the first call."""
        key = (model_key(name), device, precision, runtime, onnx)
        with self._lock:
            if key not in self._loaded:
                failed = self._failures.get(key)
                if failed is not None and time.monotonic() - failed[0] < self.failure_memory_seconds:
                    raise failed[1]
                try:
                    self._loaded[key] = Embedder(name, device, precision, option, runtime=runtime, onnx=onnx)
                except ModelError as error:
                    if not looks_like_path(name):
                        self._failures[key] = (time.monotonic(), error)
                    raise
                self._failures.pop(key, None)
            return self._loaded[key]

    def is_loaded(self, name: str) -> bool:
        """Whether the model ``name`` is loaded (on any device, at any precision)."""
        with self._lock:
            return any(key[0] == model_key(name) for key in self._loaded)

    def clear(self) -> None:
        """Forget every loaded model and every remembered failure."""
        with self._lock:
            self._loaded.clear()
            self._failures.clear()


MODELS = ModelCache()  # this process's models
load_embedder = MODELS.load
is_loaded = MODELS.is_loaded
