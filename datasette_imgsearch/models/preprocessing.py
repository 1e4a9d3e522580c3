"""A model's image preprocessing: how far a JPEG may shrink while decoding, and CLIP's resize, crop and
normalise straight through PIL and numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from datasette_imgsearch.images.pixels import DEFAULT_THUMBNAIL_SIZE

DRAFT_FACTOR = 3  # see draft_sides
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

    The decoded picture keeps at least ``DRAFT_FACTOR`` times the model's input on its short side, so
    the processor's own resampling sees nearly what it would see in the full picture; at twice the
    input, panoramas fell to the 1/8 DCT scale (each pixel an 8x8 box average) and their vectors moved
    visibly (the test ``test_reduced_decoding_gives_the_model_the_input_its_own_processor_gives`` holds
    every shape to the full picture's vector). The thumbnail keeps its full size."""
    side = DRAFT_FACTOR * input_size
    return side, max(side, thumbnail_size or 0)


class Preprocessor(Protocol):
    """What decoding needs of a model: how far to shrink a JPEG, and the model's input for a picture."""

    def shrink_to(self, thumbnail_size: int | None = DEFAULT_THUMBNAIL_SIZE) -> tuple[int, int]: ...

    def preprocess(self, image: Any) -> dict[str, Any]: ...


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
    """A CLIP model's image preprocessing without its weights (see :meth:`Embedder.pixels_only`), so that
    Ray's decode workers never load weights they do not use."""

    pixels: ClipPixels
    input_size: int

    def shrink_to(self, thumbnail_size: int | None = DEFAULT_THUMBNAIL_SIZE) -> tuple[int, int]:
        return draft_sides(self.input_size, thumbnail_size)

    def preprocess(self, image: Any) -> dict[str, Any]:
        import torch

        return {"pixel_values": torch.from_numpy(self.pixels(image))[None]}
