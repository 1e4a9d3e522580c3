"""Which models a catalog is built or searched with: the one description the command line, the build
and the plugin's settings share."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class ModelChoice:
    """What a build or a searcher is told beyond what the catalog records: model overrides, the
    multilingual text model, how query terms are routed between the text models, and the device.
    ``None`` means the catalog's own choice (or the default for a new catalog)."""

    model: str | None = None  # the image model (a moved local folder, say)
    text_model: str | None = None  # CLIP's text tower, or a replacement for it
    multilingual_model: str | None = None  # reads the terms that are not English-like; "none" for none
    route: str = "auto"  # auto, clip or multilingual (see languages.reader_of); searches only
    device: str = "auto"
    precision: str = "auto"  # bf16 only where the hardware has it (see hardware.best_precision)
    runtime: str = "auto"  # queries: auto (ONNX Runtime where the model has an export), torch or onnx
    onnx: str | None = None  # the folder of the model's ONNX export, else the cache's (see onnxclip.py)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    @classmethod
    def taken_from(cls, values: dict[str, Any]) -> tuple["ModelChoice", dict[str, Any]]:
        """The choice made by those of ``values`` that name its fields, and the other values."""
        names = cls.names()
        return cls(**{k: v for k, v in values.items() if k in names}), {k: v for k, v in values.items() if k not in names}
