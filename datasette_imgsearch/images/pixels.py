"""Decoding image bytes into the RGB pixels a model should see, plus the facts people filter on.

Builds and uploads both come through :func:`decode`, so an upload is seen exactly as a catalogued
file would be: EXIF orientation applied, the first frame of an animation, every mode converted to
RGB with transparency composited on white, and a megapixel cap checked from the header before any
pixels are decoded, so a decompression bomb is an error and never an out-of-memory kill.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from datasette_imgsearch.errors import ImageError

DEFAULT_MAX_MEGAPIXELS = 100.0
DEFAULT_THUMBNAIL_SIZE = 256

try:  # the optional ``heif`` extra: HEIC/HEIF photos decode like any other format
    from pillow_heif import register_heif_opener
except ImportError:
    pass
else:
    register_heif_opener()

_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


@dataclass
class Decoded:
    """Pixels ready for the model, and facts about the picture as a person sees it."""

    image: Image.Image
    format: str | None
    width: int
    height: int
    facts: dict[str, Any] = field(default_factory=dict)


def max_file_bytes(max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> int:
    """The most bytes an image file under ``max_megapixels`` can take: eight a pixel (16-bit RGBA, not
    compressed) and a megabyte of metadata."""
    return int(max_megapixels * 8_000_000) + 1_000_000


def read_bytes(path: Any, max_bytes: int | None = None) -> bytes:
    """Read a whole regular file of at most ``max_bytes`` (``max_file_bytes()`` when None), turning OS
    errors into :class:`ImageError`. Anything else is refused before a byte is read: a FIFO would block
    the reader for ever, a device never ends."""
    limit = max_file_bytes() if max_bytes is None else max_bytes
    try:
        with _opened_file(path) as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise ImageError("unreadable", error.strerror or str(error)) from None
    if len(data) > limit:
        raise ImageError("too-large", f"the file is larger than {limit / 1e6:,.0f} MB, more than any image under the pixel cap")
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    return data


def file_hash(path: Any) -> str:
    """The BLAKE2b hash of a file of any size (a video), read a megabyte at a time, with the refusals and
    errors of :func:`read_bytes`."""
    digest, size = hashlib.blake2b(digest_size=16), 0
    try:
        with _opened_file(path) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise ImageError("unreadable", error.strerror or str(error)) from None
    if not size:
        raise ImageError("empty", "the file is empty (0 bytes)")
    return digest.hexdigest()


def _opened_file(path: Any) -> BinaryIO:
    """``path`` open for reading if it is a regular file; :class:`ImageError` if it is not or cannot be opened."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except PermissionError:
        raise ImageError("unreadable", "permission denied") from None
    except OSError as error:
        raise ImageError("unreadable", error.strerror or str(error)) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ImageError("not-a-file", "not a regular file (a folder, a FIFO, a device or a socket): nothing is read")
    return os.fdopen(descriptor, "rb")


def decode(
    data: bytes,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    shrink_to: tuple[int, int] | None = None,
    max_decoded_megapixels: float | None = None,
) -> Decoded:
    """Decode ``data`` into an upright RGB image.

    ``shrink_to`` (shortest side, longest side) lets a JPEG decode at a reduced scale (``Image.draft``,
    1/2 to 1/8 in the DCT) as long as both sides stay at least that large: a large photo decodes
    faster, and a model that sees a few hundred pixels cannot tell the difference.
    ``max_decoded_megapixels`` caps the pixels actually decoded (after that reduction): what bounds
    the memory one upload can take, while a large JPEG still passes.
    """
    image = _opened(data, max_megapixels)
    width, height = image.size
    image_format = image.format
    try:
        if shrink_to and image.format == "JPEG":
            shortest, longest = shrink_to
            image.draft("RGB", (longest, shortest) if width >= height else (shortest, longest))
    except Exception as error:
        raise ImageError("corrupt", f"cannot decode the pixels: {error}") from None
    _check_decoded_size(image, max_decoded_megapixels)
    try:
        exif = image.getexif()
    except Exception:
        exif = Image.Exif()
    if exif.get(_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    try:
        image.load()
        rgb = to_rgb(ImageOps.exif_transpose(image) or image)
    except Exception as error:
        raise ImageError("corrupt", f"cannot decode the pixels: {error}") from None
    return Decoded(rgb, image_format, width, height, exif_facts(exif))


def _opened(data: bytes, max_megapixels: float) -> Image.Image:
    """The image's header read, and its size checked against ``max_megapixels``, before any pixels."""
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not-an-image", "not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise ImageError("too-large", str(error)) from None
    except Exception as error:  # Pillow raises many types for malformed headers
        raise ImageError("corrupt", f"cannot read the image header: {error}") from None
    width, height = image.size
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise ImageError(
            "too-large",
            f"{width}x{height} is {megapixels:.0f} megapixels, above the {max_megapixels:g} megapixel cap "
            "(raise it with --max-megapixels)",
        )
    return image


def _check_decoded_size(image: Image.Image, max_decoded_megapixels: float | None) -> None:
    """Refuse an image that would decode to too many pixels. Checked before anything reads pixels:
    Pillow's PNG reader loads the whole image to find EXIF."""
    decoded_megapixels = image.size[0] * image.size[1] / 1e6
    if max_decoded_megapixels is not None and decoded_megapixels > max_decoded_megapixels:
        raise ImageError(
            "too-large",
            f"{image.size[0]}x{image.size[1]} {image.format or 'image'} would decode to {decoded_megapixels:.0f} "
            f"megapixels, above the {max_decoded_megapixels:g} megapixel limit for uploads; send a smaller "
            "picture or a JPEG",
        )


def _trim_function() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_malloc_trim = _trim_function()


def release_memory() -> None:
    """Give the memory of freed pixel buffers back to the operating system where the C library can
    (glibc keeps large freed blocks otherwise, so one big upload would hold hundreds of MB for good)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparent areas become white, as a viewer shows them.

    That includes a colour key (a PNG ``tRNS`` chunk on an RGB, grey or 16-bit grey image), not only an
    alpha channel."""
    key = image.info.get("transparency")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 255.0)
        if image.mode == "F":
            low, top = float(values.min()), float(values.max())
            values = values - low
            top = (top - low) or 1.0
        grey = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8)
        if isinstance(key, int) and image.mode != "F":
            grey[np.asarray(image) == key] = 255
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "RGB" and key is None:
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or key is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def thumbnail(image: Image.Image, size: int = DEFAULT_THUMBNAIL_SIZE) -> bytes:
    """A JPEG that fits in ``size`` × ``size``: small enough to store in every row."""
    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()


def exif_facts(exif: Image.Exif) -> dict[str, Any]:
    """Date taken, camera, GPS position, description and keywords from EXIF, each ``None`` when absent or
    nonsense."""
    try:
        details = exif.get_ifd(ExifTags.IFD.Exif)
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:
        details, gps = {}, {}
    latitude = _coordinate(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef), 90)
    longitude = _coordinate(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef), 180)
    if latitude is None or longitude is None:
        latitude = longitude = None
    return {
        "taken": _exif_date(details.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)),
        "camera_make": _text(exif.get(ExifTags.Base.Make)),
        "camera_model": _text(exif.get(ExifTags.Base.Model)),
        "latitude": latitude,
        "longitude": longitude,
        "description": _text(exif.get(ExifTags.Base.ImageDescription)),
        "keywords": _windows_text(exif.get(ExifTags.Base.XPKeywords)),
    }


def _windows_text(value: Any) -> str | None:
    """Windows' XP tags (keywords, as Explorer and many organisers write them): UTF-16LE bytes, or a
    tuple of byte values as some writers leave them."""
    if isinstance(value, tuple) and all(isinstance(byte, int) and 0 <= byte < 256 for byte in value):
        value = bytes(value)
    if isinstance(value, bytes):
        value = value.decode("utf-16-le", "replace")
    return _text(value)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _exif_date(value: Any) -> str | None:
    """``2021:07:04 18:30:00`` → ``2021-07-04T18:30:00``."""
    text = _text(value)
    if not text or len(text) < 19 or text.startswith("0000"):
        return None
    date, _, clock = text[:19].partition(" ")
    parts = date.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return f"{parts[0]}-{parts[1]}-{parts[2]}T{clock}"


def _coordinate(value: Any, reference: Any, limit: float) -> float | None:
    """Degrees, minutes and seconds (EXIF rationals) to signed decimal degrees."""
    try:
        degrees, minutes, seconds = (float(v) for v in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    result = degrees + minutes / 60 + seconds / 3600
    if not math.isfinite(result) or result > limit:
        return None
    if _text(reference) in ("S", "W"):
        result = -result
    return round(result, 7)
