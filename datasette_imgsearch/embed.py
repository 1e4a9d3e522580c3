"""Loading a sentence-transformers CLIP model and turning images and text into unit vectors.

Image embedding is split in two so a build can keep the model busy: :meth:`Embedder.preprocess`
(resize, crop, normalise; pure CPU work on one PIL image) runs in worker threads, and
:meth:`Embedder.encode_preprocessed` runs the network on a whole batch at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import numpy as np

from .batcher import Batcher
from .errors import ModelError
from .pixels import DEFAULT_THUMBNAIL_SIZE

if TYPE_CHECKING:
    from .fastclip import FastClip

DEFAULT_MODEL = "clip-ViT-B-32"
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


DRAFT_FACTOR = 3  # see shrink_to: at 2 a panorama's 1/8 DCT decode (an 8x8 box average) moved vectors to 0.992
SIZE_KEYS = ("shortest_edge", "longest_edge", "height", "width")


def model_input_side(image_processor: Any) -> int:
    """The largest side a Hugging Face image processor resizes or crops to, whatever its shape: a
    shortest edge (CLIP), a fixed height and width (SigLIP), or a crop size; 224 if it says none."""
    sides: list[int] = []
    for name in ("size", "crop_size"):
        size = getattr(image_processor, name, None)
        for key in SIZE_KEYS:
            value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
            if isinstance(value, (int, float)) and key != "longest_edge":
                sides.append(int(value))
        if isinstance(size, int):
            sides.append(size)
    return max(sides) if sides else 224


def draft_sides(input_size: int, thumbnail_size: int | None = DEFAULT_THUMBNAIL_SIZE) -> tuple[int, int]:
    """How far a JPEG may be shrunk while decoding (shortest side, longest side).

    The decoded picture keeps at least three times the model's input on its short side, so the
    processor's own resampling sees nearly what it would see in the full picture. At twice the
    input, panoramas fell to the 1/8 DCT scale (each pixel an 8x8 box average) and their vectors
    moved to cosine 0.992; at three times every shape tested stays at 0.99999 (see the test
    ``test_reduced_decoding_gives_the_model_the_input_its_own_processor_gives``). For a 224-pixel
    model a 12-MP photo still decodes at a quarter of its size. The thumbnail keeps its full size."""
    side = DRAFT_FACTOR * input_size
    return side, max(side, thumbnail_size or 0)


class Preprocessor(Protocol):
    """What decoding needs of a model: how far to shrink a JPEG, and the model's input for a picture."""

    def shrink_to(self, thumbnail_size: int | None = DEFAULT_THUMBNAIL_SIZE) -> tuple[int, int]: ...

    def preprocess(self, image: Any) -> dict[str, Any]: ...


def native_bf16(cpuinfo: str) -> bool:
    """Whether a CPU computes bfloat16 natively, from its ``/proc/cpuinfo`` flags: AVX512-BF16 or AMX
    on x86, the BF16 feature on Arm. Without it, bf16 autocast is emulated (3.7 times slower than
    fp32 on one AVX-512 Xeon)."""
    words = set(cpuinfo.replace(":", " ").split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def best_precision(device: str) -> str:
    """What ``--precision auto`` means on ``device``: half precision where the hardware has it, else fp32.

    On CUDA, "bf16" runs the model under fp16 autocast; on a CPU, only with native bfloat16 (found
    in ``/proc/cpuinfo``; where that file does not exist, fp32, which is never the slow choice)."""
    if device == "cuda":
        return "bf16"
    return "bf16" if device == "cpu" and cpu_computes_bf16() else "fp32"


@functools.cache
def cpu_computes_bf16() -> bool:
    """:func:`native_bf16` for this machine, False where ``/proc/cpuinfo`` cannot be read."""
    try:
        return native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps was asked for, but this torch build has no Apple MPS support")
    return device


def looks_like_path(name: str) -> bool:
    return os.sep in name or name.startswith(".") or name.startswith("~") or Path(name).exists()


def model_key(name: str) -> str:
    """How a model is recorded in a catalog: hub names as given, local folders as absolute paths."""
    return str(Path(name).expanduser().resolve()) if looks_like_path(name) else name


def same_model(recorded: str, asked: str) -> bool:
    """Whether ``asked`` names the model a catalog recorded (a folder may be given relative or absolute)."""
    return model_key(asked) == recorded or asked == recorded


class Embedder:
    """One loaded model, used for images, text or both.

    A CLIP folder (or a cached hub CLIP) runs on :mod:`fastclip`'s plain-torch towers, with no
    sentence-transformers import; any other model, or ``plain=False``, through sentence-transformers."""

    def __init__(
        self, name: str, device: str = "auto", precision: str = "fp32", option: str = "--model", plain: bool = True
    ) -> None:
        self.name = name
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ModelError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self.precision = best_precision(self.device) if precision == "auto" else precision
        self._lock = threading.Lock()
        self._template: dict[str, Any] = {}
        self._text_batcher = Batcher(self.encode_texts)
        plain_clip = _plain_clip(name, self.device) if plain and PLAIN_CLIP else None
        self.clip = plain_clip[0] if plain_clip else None
        if plain_clip is not None:
            self.model: Any = None
            self.dimension = plain_clip[0].towers.dimension
            self.modalities: list[str] = ["text", "image"]
            self._pixels: ClipPixels | None = plain_clip[1]
            return
        self.model = _load(name, self.device, option)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dimension() or 0)
        self.modalities = list(getattr(self.model[0], "modalities", ["text"]))
        self._pixels = self._fast_pixels() if self.supports_images else None

    @property
    def identity(self) -> tuple[object, ...]:
        """What names this model's exact numbers: its name, how it runs, and for a local folder the size and
        time of every file in it (a retrained model in the same folder is another model)."""
        files: list[tuple[str, int, int]] = []
        if looks_like_path(self.name):
            folder = Path(self.name).expanduser()
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    info = file.stat()
                    files.append((str(file.relative_to(folder)), info.st_size, info.st_mtime_ns))
        return (model_key(self.name), self.device, self.precision, self.clip is not None, tuple(files))

    @property
    def supports_images(self) -> bool:
        return "image" in self.modalities

    @property
    def supports_text(self) -> bool:
        return "text" in self.modalities

    @property
    def input_size(self) -> int:
        """The largest side the model's processor resizes or crops a picture to."""
        if self.clip is not None:
            return model_input_side(self.clip.image_processor)
        processor = getattr(self.model[0], "processor", None)
        return model_input_side(getattr(processor, "image_processor", None))

    def shrink_to(self, thumbnail_size: int | None = DEFAULT_THUMBNAIL_SIZE) -> tuple[int, int]:
        return draft_sides(self.input_size, thumbnail_size)

    def pixels_only(self) -> "PixelsOnly | None":
        """This model's image preprocessing without its network, for workers that only decode; None for a
        model whose preprocessing needs the model (sentence-transformers' own)."""
        if self.clip is None or self._pixels is None:
            return None
        return PixelsOnly(self._pixels, self.input_size)

    def _require(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ModelError(f"the model {self.name!r} cannot encode {modality}s (it handles: {', '.join(self.modalities)})")

    def preprocess(self, image: Any) -> dict[str, Any]:
        """Resize, crop and normalise one PIL image; safe to call from many threads."""
        self._require("image")
        if self._pixels is not None:
            import torch

            return {**self._template, "pixel_values": torch.from_numpy(self._pixels(image))[None]}
        return self.model.preprocess([image])

    def _fast_pixels(self) -> "ClipPixels | None":
        """The direct CLIP preprocessing, used only when it gives this model's processor's own numbers."""
        from PIL import Image

        processor = getattr(getattr(self.model[0], "processor", None), "image_processor", None)
        try:
            fast = ClipPixels(processor)
        except (AttributeError, TypeError, ValueError):
            return None
        noise = np.random.default_rng(0).integers(0, 256, size=(207, 301, 3), dtype=np.uint8)
        probe = Image.fromarray(noise, "RGB")
        reference = self.model.preprocess([probe])
        if set(reference) - {"pixel_values", "modality"}:
            return None
        if not np.allclose(fast(probe), reference["pixel_values"][0].float().numpy(), atol=1e-3):
            return None
        self._template = {key: value for key, value in reference.items() if key != "pixel_values"}
        return fast

    def encode_preprocessed(self, batch: list[dict[str, Any]]) -> np.ndarray:
        """Run the network on preprocessed images; returns L2-normalised float32 rows."""
        import torch

        features: dict[str, Any] = {}
        for key, value in batch[0].items():
            if isinstance(value, torch.Tensor):
                features[key] = torch.cat([item[key] for item in batch]).to(self.device)
            else:
                features[key] = value
        with self._lock, torch.inference_mode(), self._autocast():
            if self.clip is not None:
                output = self.clip.towers.encode_images(features["pixel_values"])
            else:
                output = self.model.forward(features)["sentence_embedding"]
        return _normalise(output.float().cpu().numpy())

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self.encode_preprocessed([self.preprocess(image) for image in images])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for ``texts``, through the model directly (``encode`` adds milliseconds per call)."""
        import torch

        self._require("text")
        if self.clip is not None:
            ids = torch.tensor([encoding.ids for encoding in self.clip.tokenizer.encode_batch(texts)], device=self.device)
            half = self.precision == "bf16" and self.device != "mps"  # a half copy of the weights, not autocast
            with self._lock, torch.inference_mode():
                output = self.clip.towers.encode_text(ids, half)
            return _normalise(output.float().cpu().numpy())
        with self._lock, torch.inference_mode(), self._autocast():
            features = self.model.preprocess(texts)
            features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            output = self.model.forward(features)["sentence_embedding"]
        return _normalise(output.float().cpu().numpy())

    def encode_text(self, text: str) -> np.ndarray:
        """One query's vector. Queries that arrive while the model is busy are encoded together in
        one batch, which costs little more than one: a server under concurrent load keeps up."""
        return self._text_batcher(text)

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        import torch

        if self.precision == "fp32" or self.device == "mps":
            yield
            return
        dtype = torch.bfloat16 if self.device == "cpu" else torch.float16
        with torch.autocast(self.device, dtype=dtype):
            yield


class ClipPixels:
    """CLIP's image preprocessing (shortest edge to size, centre crop, rescale, normalise) straight
    through PIL and numpy: the Hugging Face processor's numbers at a third of its cost, which matters
    when two cores share decoding and the model. :class:`Embedder` checks it against the model's own
    processor before using it."""

    def __init__(self, processor: Any) -> None:
        if not (processor.do_resize and processor.do_center_crop and processor.do_rescale and processor.do_normalize):
            raise ValueError("not a resize-crop-normalise processor")
        size, crop = processor.size, processor.crop_size
        shortest = size.get("shortest_edge") if isinstance(size, dict) else size.shortest_edge
        if not shortest or (size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)):
            raise ValueError("not a shortest-edge resize")
        self.shortest = int(shortest)
        self.crop = (int(crop["height"]), int(crop["width"])) if isinstance(crop, dict) else (int(crop.height), int(crop.width))
        self.resample = int(processor.resample)
        self.scale = float(processor.rescale_factor)
        self.mean = np.asarray(processor.image_mean, dtype=np.float32)
        self.std = np.asarray(processor.image_std, dtype=np.float32)

    def __call__(self, image: Any) -> np.ndarray:
        width, height = image.size
        if width <= height:
            size = (self.shortest, int(self.shortest * height / width))
        else:
            size = (int(self.shortest * width / height), self.shortest)
        image = image.resize(size, self.resample)
        crop_height, crop_width = self.crop
        top, left = (size[1] - crop_height) // 2, (size[0] - crop_width) // 2
        image = image.crop((left, top, left + crop_width, top + crop_height))
        pixels = (np.asarray(image, dtype=np.float32) * self.scale - self.mean) / self.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@dataclass(frozen=True)
class PixelsOnly:
    """A CLIP model's image preprocessing without its weights (see :meth:`Embedder.pixels_only`): Ray's
    decode workers each loaded the whole model for this, 600 MB of ViT-B/32 weights they never used."""

    pixels: ClipPixels
    input_size: int

    def shrink_to(self, thumbnail_size: int | None = DEFAULT_THUMBNAIL_SIZE) -> tuple[int, int]:
        return draft_sides(self.input_size, thumbnail_size)

    def preprocess(self, image: Any) -> dict[str, Any]:
        import torch

        return {"pixel_values": torch.from_numpy(self.pixels(image))[None]}


PLAIN_CLIP = os.environ.get("IMGSEARCH_PLAIN_CLIP", "1") != "0"  # 0: always through sentence-transformers


def _plain_clip(name: str, device: str) -> tuple[FastClip, ClipPixels] | None:
    """The model as fastclip's plain-torch towers with its preprocessing, when its layout allows; None
    means sentence-transformers."""
    from . import fastclip

    try:
        found = fastclip.load(name, device, looks_like_path(name))
        return None if found is None else (found, ClipPixels(found.image_processor))  # another processor raises
    except Exception:  # anything fastclip cannot read: sentence-transformers reads it, or says why not
        return None


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


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


def _load(name: str, device: str, option: str = "--model") -> Any:
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


def hub_repository(name: str) -> str:
    """The hub repository sentence-transformers reads a short name such as ``clip-ViT-B-32`` from."""
    return name if "/" in name else f"sentence-transformers/{name}"


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


_cache: dict[tuple[str, str, str], Embedder] = {}
_cache_lock = threading.Lock()
_failures: dict[tuple[str, str, str], tuple[float, ModelError]] = {}
FAILURE_MEMORY_SECONDS = 60.0  # an uncached hub model is tried again at most this often


def load_embedder(name: str, device: str = "auto", precision: str = "fp32", option: str = "--model") -> Embedder:
    """A process-wide shared :class:`Embedder`: several catalogs on one server load a model once.

    A hub model that could not be loaded is not tried again for a minute: on a server without
    internet every query would otherwise wait for the hub's connection check."""
    key = (model_key(name), device, precision)
    with _cache_lock:
        if key not in _cache:
            failed = _failures.get(key)
            if failed is not None and time.monotonic() - failed[0] < FAILURE_MEMORY_SECONDS:
                raise failed[1]
            try:
                _cache[key] = Embedder(name, device, precision, option)
            except ModelError as error:
                if not looks_like_path(name):
                    _failures[key] = (time.monotonic(), error)
                raise
            _failures.pop(key, None)
        return _cache[key]


def is_loaded(name: str) -> bool:
    """Whether this process has loaded the model ``name`` (on any device, at any precision)."""
    with _cache_lock:
        return any(key[0] == model_key(name) for key in _cache)
