"""Plugin configuration, read from ``datasette.plugin_config("datasette-imgsearch", database=...)``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from datasette_imgsearch.images.pixels import DEFAULT_MAX_MEGAPIXELS
from datasette_imgsearch.models.choice import RUNTIMES, ModelChoice
from datasette_imgsearch.models.languages import ROUTES

if TYPE_CHECKING:
    from datasette.app import Datasette

PLUGIN = "datasette-imgsearch"


@dataclass(frozen=True)
class Settings:
    """One catalog's settings. The model settings (``model``, ``text_model``, ``multilingual_model``,
    ``route``, ``device``, ``precision``, ``runtime``, ``onnx``) are given flat, as the other settings are, and make
    :attr:`models`; ``model`` and the text models override what the catalog recorded (a moved local
    folder, say); ``multilingual_model: none`` switches that model off."""

    models: ModelChoice = field(default_factory=ModelChoice)
    max_upload_mb: float = 20.0
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS  # an upload's size as its header states it
    max_upload_megapixels: float = 16.0  # the pixels an upload may decode to (a JPEG decodes reduced)
    max_k: int = 1000
    page_size: int = 24
    sql_wait_seconds: float = 0.8  # how long a SQL call waits for a model still loading at startup

    def __post_init__(self) -> None:
        if self.models.route not in ROUTES:
            raise ValueError(f"{PLUGIN}: the route setting must be one of {', '.join(ROUTES)}, not {self.models.route!r}")
        if self.models.runtime not in RUNTIMES:
            raise ValueError(f"{PLUGIN}: the runtime setting must be one of {', '.join(RUNTIMES)}, not {self.models.runtime!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @classmethod
    def known(cls) -> tuple[str, ...]:
        return ModelChoice.names() + tuple(f.name for f in fields(cls) if f.name != "models")

    @classmethod
    def for_database(cls, datasette: "Datasette", database: str) -> "Settings":
        config = datasette.plugin_config(PLUGIN, database=database) or {}
        known = cls.known()
        for key in config:
            if key not in known:
                raise ValueError(f"{PLUGIN}: unknown setting {key!r}; known settings: {', '.join(known)}")
        models, others = ModelChoice.taken_from(config)
        return cls(models, **others)
