"""How models are named: hub names as given, local folders as absolute paths, and the hub repository a
short name stands for."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "clip-ViT-B-32"


def looks_like_path(name: str) -> bool:
    return os.sep in name or name.startswith(".") or name.startswith("~") or Path(name).exists()


def model_key(name: str) -> str:
    """How a model is recorded in a catalog: hub names as given, local folders as absolute paths."""
    return str(Path(name).expanduser().resolve()) if looks_like_path(name) else name


def same_model(recorded: str, asked: str) -> bool:
    """Whether ``asked`` names the model a catalog recorded (a folder may be given relative or absolute)."""
    return model_key(asked) == recorded or asked == recorded


def hub_repository(name: str) -> str:
    """The hub repository sentence-transformers reads a short name such as ``clip-ViT-B-32`` from."""
    return name if "/" in name else f"sentence-transformers/{name}"


def model_label(name: str | None) -> str | None:
    """A model's name as a server shows it: a hub name as it is, a local folder by its last part only (a
    server's absolute paths are not for everyone who searches); None for none."""
    return Path(name).name if name and looks_like_path(name) else name


def cache_folder() -> Path:
    """The user's cache folder for this package: strength's random-text vectors and ONNX exports live there
    (``IMGSEARCH_CACHE``, else ``$XDG_CACHE_HOME/datasette-imgsearch``)."""
    if os.environ.get("IMGSEARCH_CACHE"):
        return Path(os.environ["IMGSEARCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "datasette-imgsearch"
