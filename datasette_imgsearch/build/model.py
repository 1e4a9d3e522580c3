"""Which model a build embeds with, checked against the catalog, loaded only when a file needs it, and
the facts the catalog records about it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.models import onnxclip
from datasette_imgsearch.models.cache import ModelCache
from datasette_imgsearch.models.embedder import Embedder
from datasette_imgsearch.models.hardware import cpu_computes_bf16, resolve_device
from datasette_imgsearch.models.languages import NO_MODEL
from datasette_imgsearch.models.names import DEFAULT_MODEL, model_key, same_model


def choose_model(catalog: Catalog, asked: str | None, reembed: bool) -> tuple[str, bool]:
    """The model a run embeds with, and whether it re-embeds every row (switching models)."""
    recorded = catalog.meta("model")
    pending = catalog.meta("reembedding")
    if pending:
        if asked and not same_model(pending, asked):
            raise CatalogError(
                f"an interrupted --reembed with {pending!r} is half done: finish it with --model {pending!r} --reembed"
            )
        return asked or pending, True
    if recorded and asked and not same_model(recorded, asked):
        if not reembed:
            raise CatalogError(
                f"{catalog.path} was built with the model {recorded!r}, not {asked!r}: leave out --model to "
                f"update it with {recorded!r}, or add --reembed to re-embed every image with {asked!r} (row ids are kept)"
            )
        return asked, True
    # Re-embedding with the same model is allowed (a clean slate); a new catalog has nothing to re-embed.
    return asked or recorded or DEFAULT_MODEL, reembed and bool(recorded)


def build_runtime(options: BuildOptions, name: str) -> str:
    """``torch`` or ``onnx``: what a build runs the image tower on. Asked for, it is that (Ray's workers run
    torch). ``auto`` picks ONNX Runtime only where it is the faster, measured (docs/onnx.md): fp32 on a
    CPU without native bfloat16, for a CLIP folder, with the onnx extra installed; torch's bf16 on a CPU
    that has it, and CUDA, stay faster."""
    asked = options.models.runtime
    if options.engine == "ray" or asked == "torch":
        return "torch"
    if asked == "onnx":
        if not onnxclip.can_export():
            raise CatalogError(f"--runtime onnx needs the onnx extra: {onnxclip.ONNX_INSTALL}")
        return "onnx"
    if options.models.precision == "bf16" or cpu_computes_bf16() or resolve_device(options.models.device) != "cpu":
        return "torch"
    return "onnx" if onnxclip.can_export() and onnxclip.model_folder(name) is not None else "torch"


class BuildModel:
    """The model of one build: chosen at the start, loaded at the first new picture (so a run of moved
    files or a no-op run never loads it), and refused when it cannot fill this catalog."""

    def __init__(self, catalog: Catalog, options: BuildOptions, models: ModelCache) -> None:
        self.catalog = catalog
        self.options = options
        self.models = models
        self.name, self.reembed = choose_model(catalog, options.models.model, options.reembed)
        self._recorded_dimension = catalog.meta("dimension")
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    def embedder(self) -> Embedder:
        """The model, loaded the first time a file actually needs it."""
        with self._lock:
            if self._embedder is None:
                # With Ray the workers run the model; this process only checks it and records its facts.
                device = "cpu" if self.options.engine == "ray" else self.options.models.device
                embedder = self.models.load(self.name, device, self.options.models.precision, runtime=self.runtime(),
                                            onnx=self.options.models.onnx)
                if not embedder.supports_images:
                    raise CatalogError(f"the model {self.name!r} cannot encode images; use a CLIP model")
                recorded = self._recorded_dimension
                if recorded and not self.reembed and int(recorded) != embedder.dimension:
                    raise CatalogError(
                        f"{self.name!r} gives {embedder.dimension}-dimensional vectors "
                        f"but the catalog holds {recorded}-dimensional ones"
                    )
                self._embedder = embedder
            return self._embedder

    def runtime(self) -> str:
        """What runs the image tower (see :func:`build_runtime`); an export it needs is made first."""
        runtime = build_runtime(self.options, self.name)
        if runtime == "onnx" and onnxclip.find_export(self.name, self.options.models.onnx) is None:
            onnxclip.export(self.name, Path(self.options.models.onnx) if self.options.models.onnx else None)
        return runtime

    def runtime_line(self) -> str:
        """What ran the image model in this build, for its summary; empty when no picture needed it."""
        embedder = self._embedder
        if embedder is None or self.options.engine == "ray":
            return ""
        way = "ONNX Runtime" if embedder.onnx is not None else f"torch on {embedder.device}"
        return f"images embedded on {way} in {embedder.precision}"

    def first_facts(self) -> dict[str, Any]:
        """What is recorded before the first image, so an interrupted first build still knows its model
        (the dimension follows with the first vectors); a multilingual model is checked first."""
        chosen = self.options.models
        facts: dict[str, Any] = {}
        if self.reembed:
            facts["reembedding"] = model_key(self.name)
        elif not self.catalog.meta("model"):
            facts["model"] = model_key(self.name)
        if chosen.text_model and not self.reembed:
            facts["text_model"] = model_key(chosen.text_model)
        if chosen.multilingual_model:
            self._check_multilingual()
            if not self.reembed:
                facts["multilingual_model"] = self._multilingual_key()
        return facts

    def facts(self, engine_precision: str | None) -> dict[str, Any]:
        """What the catalog records about the model it holds vectors of (``engine_precision``: how an
        engine's own workers ran it, where they did)."""
        embedder = self.embedder()
        text_model = model_key(self.options.models.text_model) if self.options.models.text_model else None
        multilingual = self._multilingual_key()
        if same_model(self.catalog.meta("model") or "", self.name):  # a re-embed with the same model keeps them
            text_model = text_model or self.catalog.meta("text_model")
            multilingual = multilingual or self.catalog.meta("multilingual_model")
        return {
            "model": model_key(self.name),
            "text_model": text_model,
            "multilingual_model": multilingual,
            "dimension": embedder.dimension,
            "precision": engine_precision or embedder.precision,
            "runtime": "onnx" if embedder.onnx is not None and not engine_precision else "torch",
        }

    def _multilingual_key(self) -> str | None:
        name = self.options.models.multilingual_model
        return None if not name else NO_MODEL if name == NO_MODEL else model_key(name)

    def _check_multilingual(self) -> None:
        """Refuse a multilingual model that cannot read text into this catalog's space, before any work."""
        name = self.options.models.multilingual_model
        if not name or name == NO_MODEL:
            return
        multilingual = self.models.load(name, self.options.models.device, option="--multilingual-model")
        if not multilingual.supports_text:
            raise CatalogError(f"the multilingual model {name!r} cannot encode text")
        dimension = self.embedder().dimension
        if multilingual.dimension != dimension:
            raise CatalogError(
                f"the multilingual model {name!r} gives {multilingual.dimension}-dimensional vectors, but "
                f"{self.name!r} gives {dimension}-dimensional ones: it must be trained into the image model's space"
            )
