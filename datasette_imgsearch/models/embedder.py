"""A loaded model, turning images and text into unit vectors: CLIP folders on fastclip.py's plain-torch
towers or, for queries, on their ONNX export (onnxclip.py, without importing torch), anything else
through sentence-transformers (hub.py loads those).

Image embedding is split in two so a build can keep the model busy: :meth:`Embedder.preprocess`
(resize, crop, normalise; pure CPU work on one PIL image) runs in worker threads, and
:meth:`Embedder.encode_preprocessed` runs the network on a whole batch at once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.images.pixels import DEFAULT_THUMBNAIL_SIZE
from datasette_imgsearch.models import onnxclip, onnxtext
from datasette_imgsearch.models.batcher import Batcher
from datasette_imgsearch.models.hardware import PRECISIONS, best_precision, resolve_device
from datasette_imgsearch.models.hub import load_sentence_transformer
from datasette_imgsearch.models.names import looks_like_path, model_key
from datasette_imgsearch.models.onnxclip import ONNX_INSTALL, OnnxClip
from datasette_imgsearch.models.onnxtext import OnnxText
from datasette_imgsearch.models.preprocessing import ClipPixels, PixelsOnly, draft_sides, model_input_side

if TYPE_CHECKING:
    from datasette_imgsearch.models.fastclip import FastClip


class Embedder:
    """One loaded model, used for images, text or both.

    A CLIP folder (or a cached hub CLIP) runs on :mod:`fastclip`'s plain-torch towers, with no
    sentence-transformers import; any other model, or ``plain=False``, through sentence-transformers."""

    def __init__(
        self, name: str, device: str = "auto", precision: str = "fp32", option: str = "--model", plain: bool = True,
        runtime: str = "torch", onnx: str | None = None,
    ) -> None:
        self.name = name
        if precision not in PRECISIONS:
            raise ModelError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        self._lock = threading.Lock()
        self._template: dict[str, Any] = {}
        self._text_batcher = Batcher(self.encode_texts, passes_on=True)
        self.model: Any = None  # sentence-transformers' model, where neither of the plain ways runs it
        self.clip: FastClip | None = None
        self.modalities: list[str] = ["text", "image"]
        self._pixels: ClipPixels | None = None
        self.onnx = _on_onnx_runtime(name, device, precision, runtime, onnx) if plain and PLAIN_CLIP else None
        if self.onnx is not None:
            self.device, self.precision, self.dimension = "cpu", "fp32", self.onnx.dimension
            if isinstance(self.onnx, OnnxText):
                self.modalities = ["text"]
            else:
                self._pixels = ClipPixels(self.onnx.image_processor)
            return
        if runtime == "onnx":
            raise ModelError(f"{name} has no ONNX export here to run on ONNX Runtime: make one with "
                             f"'datasette-imgsearch export-onnx --model {name}' ({ONNX_INSTALL}), or use runtime auto")
        try:
            import torch  # noqa: F401  (everything below runs on it)
        except ImportError:
            raise ModelError(f"torch is not installed here and {name} has no ONNX export here: run 'datasette-imgsearch "
                             "export-onnx' where torch is, and name its folder with the onnx setting (docs/onnx.md)") from None
        self.device = resolve_device(device)
        self.precision = best_precision(self.device) if precision == "auto" else precision
        plain_clip = _plain_clip(name, self.device) if plain and PLAIN_CLIP else None
        if plain_clip is not None:
            self.clip, self._pixels = plain_clip
            self.dimension = self.clip.towers.dimension
            return
        self.model = load_sentence_transformer(name, self.device, option)
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
        runs_on = (f"onnx ({self.onnx.text_graph})" if self.onnx is not None else "fastclip" if self.clip is not None
                   else "sentence-transformers")
        return (model_key(self.name), self.device, self.precision, runs_on, tuple(files))

    @property
    def supports_images(self) -> bool:
        return "image" in self.modalities

    @property
    def supports_text(self) -> bool:
        return "text" in self.modalities

    @property
    def input_size(self) -> int:
        """The largest side the model's processor resizes or crops a picture to."""
        if self.onnx is not None:
            return model_input_side(self.onnx.image_processor)
        if self.clip is not None:
            return model_input_side(self.clip.image_processor)
        processor = getattr(self.model[0], "processor", None)
        return model_input_side(getattr(processor, "image_processor", None))

    def shrink_to(self, thumbnail_size: int | None = DEFAULT_THUMBNAIL_SIZE) -> tuple[int, int]:
        return draft_sides(self.input_size, thumbnail_size)

    def pixels_only(self) -> "PixelsOnly | None":
        """This model's image preprocessing without its network, for workers that only decode; None for a
        model whose preprocessing needs the model (sentence-transformers' own)."""
        if (self.clip is None and self.onnx is None) or self._pixels is None:
            return None
        return PixelsOnly(self._pixels, self.input_size)

    def _require(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ModelError(f"the model {self.name!r} cannot encode {modality}s (it handles: {', '.join(self.modalities)})")

    def preprocess(self, image: Any) -> dict[str, Any]:
        """Resize, crop and normalise one PIL image; safe to call from many threads."""
        self._require("image")
        if self.onnx is not None and self._pixels is not None:
            return {"pixel_values": self._pixels(image)[None]}
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
        if isinstance(self.onnx, OnnxClip):
            with self._lock:
                return _normalise(self.onnx.encode_pixels(np.concatenate([item["pixel_values"] for item in batch])))
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
        self._require("text")
        if self.onnx is not None:
            with self._lock:
                return _normalise(self.onnx.encode_texts(texts))
        import torch

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


PLAIN_CLIP = os.environ.get("IMGSEARCH_PLAIN_CLIP", "1") != "0"  # 0: always through sentence-transformers


def _plain_clip(name: str, device: str) -> tuple[FastClip, ClipPixels] | None:
    """The model as fastclip's plain-torch towers with its preprocessing, when its layout allows; None
    means sentence-transformers."""
    from datasette_imgsearch.models import fastclip

    try:
        found = fastclip.load(name, device, looks_like_path(name))
        return None if found is None else (found, ClipPixels(found.image_processor))  # another processor raises
    except Exception:  # anything fastclip cannot read: sentence-transformers reads it, or says why not
        return None


def _on_onnx_runtime(name: str, device: str, precision: str, runtime: str, folder: str | None) -> "OnnxClip | OnnxText | None":
    """The model on ONNX Runtime, when the runtime allows it (``auto`` or ``onnx``; on the CPU, in fp32: bf16
    asked for is torch's) and an export of exactly this model exists with ONNX Runtime installed: a CLIP
    model's two towers, or a text model's one graph (the multilingual model); None means torch."""
    if runtime == "onnx" and precision == "bf16":
        raise ModelError("ONNX Runtime runs the model in fp32: leave out precision bf16, or use runtime torch")
    if runtime == "torch" or precision == "bf16" or device not in ("auto", "cpu") or not onnxclip.runtime_available():
        return None
    clip_export = onnxclip.find_export(name, folder)
    export = clip_export or onnxtext.find_text_export(name, folder)
    if export is None:
        return None
    try:
        return onnxclip.load_export(export) if clip_export else onnxtext.load_text_export(export)
    except Exception as error:  # a damaged export: torch answers where it is installed, and says nothing is lost
        if runtime == "onnx" or importlib.util.find_spec("torch") is None:
            raise ModelError(f"the ONNX export in {export} cannot be read ({error}): make it again with export-onnx") from None
        return None


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


