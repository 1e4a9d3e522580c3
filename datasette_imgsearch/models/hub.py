"""Loading a sentence-transformers model from a local folder, the hub's cache, or the hub itself, with
one actionable line for each way that fails."""

from __future__ import annotations

import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.models.names import hub_repository, looks_like_path

HUB_CHECK_SECONDS = 5.0


def hub_reachable(timeout: float = HUB_CHECK_SECONDS) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers a TCP connection within ``timeout`` seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def load_sentence_transformer(name: str, device: str, option: str = "--model") -> Any:
    """Load a model, turning the many ways this fails into one line a person can act on (``option`` is
    the command-line option that names a local folder instead).

    A hub name is looked up in the local cache first, so a cached model never touches the network
    (and never changes under a catalog). Only when it is not cached is the hub asked, and only after
    one short connection shows it can be reached: offline, the answer comes in seconds, not after
    minutes of retries."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars would garble the CLI and server logs
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelError(
                f"no model folder at {folder}: {option} takes a sentence-transformers model name or a local model folder"
            )
        try:
            return SentenceTransformer(str(folder), device=device)
        except Exception as error:
            raise ModelError(
                f"{name} is not a usable sentence-transformers or Hugging Face CLIP folder: {_first_line(error)}"
            ) from None
    try:
        return SentenceTransformer(name, device=device, local_files_only=True)
    except Exception as error:
        cached_error = error
    if not hub_reachable():
        raise ModelError(
            f"cannot load the model {name!r}: it is not in the local cache and the Hugging Face hub cannot be reached "
            f"({_first_line(cached_error)[:120]}). Fetch it once with 'datasette-imgsearch fetch-model {name}' on a "
            f"machine with internet, check the spelling, or pass {option} PATH to a local model folder"
        )
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    announce_download(name)
    enable_progress_bars()  # a first download shows its progress
    try:
        return SentenceTransformer(name, device=device)
    except Exception as error:
        raise ModelError(
            f"cannot load the model {name!r}: it is not in the local cache and could not be downloaded "
            f"({_first_line(error)[:160]}). Check the spelling, or pass {option} PATH to a local model folder"
        ) from None
    finally:
        disable_progress_bars()


def announce_download(name: str) -> None:
    """Say, before a download starts, what it is, how big, where it goes and how to avoid it next time."""
    from huggingface_hub import HfApi, constants

    try:
        info = HfApi().model_info(hub_repository(name), files_metadata=True)
        size = f"{sum(f.size or 0 for f in info.siblings or []) / 1e6:,.0f} MB"
    except Exception:
        size = "size unknown"
    print(
        f"Downloading the model {name!r} ({size}) from the Hugging Face hub into {constants.HF_HUB_CACHE}; "
        f"later runs use the cached copy. For a machine without internet: "
        f"'datasette-imgsearch fetch-model {name} --save-to FOLDER' here, then --model FOLDER there.",
        file=sys.stderr, flush=True,
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
