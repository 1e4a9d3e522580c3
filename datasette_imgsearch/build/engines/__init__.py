"""Engines: the read-decode-embed part of a build, as peers behind one interface (base.py). ``local``
runs in this process; ``ray`` on a Ray cluster. Adding one is one entry here."""

from __future__ import annotations

from typing import Callable

from datasette_imgsearch.build.engines.base import Engine, EngineJob
from datasette_imgsearch.build.engines.local import LocalEngine
from datasette_imgsearch.build.engines.ray import RayEngine

ENGINES: dict[str, Callable[[EngineJob], Engine]] = {"local": LocalEngine, "ray": RayEngine}
