"""Reading the words in a picture with a real OCR model: RapidOCR's PP-OCRv4 on ONNX Runtime, offline.

Out of the box RapidOCR enlarges every picture to 736 pixels on its shortest side before it looks for
text, and reads each candidate box whatever it holds: about 0.9 s a picture on two cores. Here the
detector sees the picture shrunk to ``DETECT_SIDE`` on its longest side (the smallest size that kept
recall on the toy text world, see docs/text.md), and the recogniser reads each box it found cut from the
picture at up to ``READ_SIDE``, so small words stay sharp. A box read with less than
``READ_AGAIN_BELOW`` confidence is read again after the direction classifier turned it the right way
up, so a sign photographed sideways or upside down is read too, while most upright words never pay for
the classifier (which, run on every box, added 40 ms a picture). One engine, with its ONNX sessions,
serves a whole build.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from datasette_imgsearch.errors import CatalogError

DETECT_SIDE = 320
READ_SIDE = 2048
MIN_CONFIDENCE = 0.6
# A box read with less confidence is read again after the direction classifier turned it the right way up
# (upside-down words are often read as confident nonsense, so this is above MIN_CONFIDENCE; docs/text.md).
READ_AGAIN_BELOW = 0.9
OCR_INSTALL = "pip install 'datasette-imgsearch[ocr]'"

Corner = tuple[int, int]


@dataclass(frozen=True)
class Line:
    """One line of text: what it says, its four corners in the upright picture's pixels (clockwise from
    the top left) and the recogniser's confidence."""

    text: str
    box: tuple[Corner, Corner, Corner, Corner]
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "box": [list(corner) for corner in self.box], "confidence": round(self.confidence, 3)}


def lines_json(lines: list[Line]) -> str:
    """The lines as the catalog stores them (``text_lines``)."""
    return json.dumps([line.as_dict() for line in lines], ensure_ascii=False)


def ocr_available() -> bool:
    """Whether the ``ocr`` extra is installed: found, not imported (OpenCV's import alone takes a third of
    a second, and a build that reads nothing should not pay it); :class:`TextReader` says what is wrong
    with an install that is found but does not import."""
    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


class TextReader:
    """An OCR engine, loaded once, that reads pictures into :class:`Line` s."""

    def __init__(self, threads: int | None = None, detect_side: int = DETECT_SIDE) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as error:
            raise CatalogError(f"reading text needs the OCR model: {OCR_INSTALL} (or build with --no-ocr): {error}") from None
        threads_option = {"intra_op_num_threads": threads} if threads else {}
        # limit_type "min" with a small side: the detector takes the picture at the size it is handed.
        self._engine = RapidOCR(det_limit_type="min", det_limit_side_len=32, use_cls=True, **threads_option)
        self.detect_side = detect_side

    def read(self, image: Image.Image) -> list[Line]:
        """The lines of text in an upright RGB ``image``, top to bottom; none when it has no text, or when
        the OCR model fails on it: ONNX Runtime and OpenCV raise their own exception types, and one picture
        the model cannot read must not stop a build (its file is fine: it was decoded and embedded)."""
        try:
            return self._read(image)
        except Exception:
            return []

    def _read(self, image: Image.Image) -> list[Line]:
        scale = min(1.0, self.detect_side / max(image.size))
        small = image if scale == 1.0 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
        boxes, _ = self._engine(_bgr(small), use_det=True, use_cls=False, use_rec=False)
        if not boxes:
            return []
        source = image
        reading_scale = min(1.0, READ_SIDE / max(image.size))
        if reading_scale < 1.0:
            source = image.resize((round(image.width * reading_scale), round(image.height * reading_scale)),
                                  Image.Resampling.BILINEAR)
        lines = []
        for box in boxes:
            corners = [(x / scale, y / scale) for x, y in box]
            crop = _cut(source, [(x * reading_scale, y * reading_scale) for x, y in corners])
            if crop is None:
                continue
            text, confidence = self._recognised(crop, turned=False)
            if confidence < READ_AGAIN_BELOW:  # perhaps upside down: turned the right way up, read again
                text, confidence = max((text, confidence), self._recognised(crop, turned=True), key=lambda read: read[1])
            if text.strip() and confidence >= MIN_CONFIDENCE:
                box_ints = tuple((round(x), round(y)) for x, y in corners)
                lines.append(Line(text.strip(), box_ints, confidence))  # type: ignore[arg-type]
        return lines

    def _recognised(self, crop: Image.Image, turned: bool) -> tuple[str, float]:
        """What a box says and how sure the recogniser is; ``turned``: after the direction classifier
        turned it the right way up."""
        found, _ = self._engine(_bgr(crop), use_det=False, use_cls=turned, use_rec=True)
        return (found[0][0], float(found[0][1])) if found else ("", 0.0)


@functools.lru_cache(maxsize=2)
def shared_reader(threads: int | None = None) -> TextReader:
    """The process's reader for ``threads``: loading the ONNX sessions takes most of a second, so builds
    in one process (a test run, a server that builds) share them."""
    return TextReader(threads)


def _bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _cut(image: Image.Image, corners: list[tuple[float, float]]) -> Image.Image | None:
    """The quadrilateral ``corners`` (clockwise from the top left) straightened into a strip; a strip much
    taller than wide is turned a quarter, since the recogniser reads left to right (the direction
    classifier turns it the rest of the way where that left it upside down)."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = corners
    width = round(max(math.dist((x0, y0), (x1, y1)), math.dist((x3, y3), (x2, y2))))
    height = round(max(math.dist((x0, y0), (x3, y3)), math.dist((x1, y1), (x2, y2))))
    if width < 4 or height < 4:
        return None
    strip = image.transform((width, height), Image.Transform.QUAD, (x0, y0, x3, y3, x2, y2, x1, y1),
                            Image.Resampling.BICUBIC)
    return strip.rotate(90, expand=True) if height >= 1.5 * width else strip
