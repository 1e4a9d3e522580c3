"""Plugin configuration, read from ``datasette.plugin_config("datasette-imgsearch", database=...)``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .languages import ROUTES
from .pixels import DEFAULT_MAX_MEGAPIXELS
from .query import ModelChoice

PLUGIN = "datasette-imgsearch"


@dataclass(frozen=True)
class Settings:
    model: str | None = None  # overrides the model the catalog recorded (a moved local folder, say)
    text_model: str | None = None  # overrides the catalog's text model
    multilingual_model: str | None = None  # overrides the catalog's multilingual text model ("none": none)
    route: str = "auto"  # which text model reads each term: auto, clip or multilingual
    device: str = "auto"
    precision: str = "auto"  # for query encoding: bf16 only where the hardware computes it natively
    max_upload_mb: float = 20.0
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS  # an upload's size as its header states it
    max_upload_megapixels: float = 16.0  # the pixels an upload may decode to (a JPEG decodes reduced)
    max_k: int = 1000
    page_size: int = 24
    sql_wait_seconds: float = 0.8  # how long a SQL call waits for a model still loading at startup

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"{PLUGIN}: the route setting must be one of {', '.join(ROUTES)}, not {self.route!r}")

    @property
    def choice(self) -> ModelChoice:
        return ModelChoice(self.model, self.text_model, self.multilingual_model, self.route, self.device, self.precision)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @classmethod
    def for_database(cls, datasette: Any, database: str) -> "Settings":
        config = datasette.plugin_config(PLUGIN, database=database) or {}
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key not in known:
                raise ValueError(f"{PLUGIN}: unknown setting {key!r}; known settings: {', '.join(known)}")
            values[key] = value
        return cls(**values)
