"""Toy-world pictures with words on them, in English and Chinese, with the truth of what each says.

Half the pictures carry a sign or a label: a word or two drawn in one of several fonts, sizes, colours
and angles, on a plate or straight onto the picture. The toy CLIP cannot read them; a real OCR model
can. ``benchmarks/text_search.py`` and the tests measure text search against this truth. The fonts are
Debian's (fonts-dejavu, fonts-liberation, fonts-wqy-zenhei); :func:`fonts` says which are missing.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from datasette_imgsearch.images.toyworld import draw_image, sample_classes

ENGLISH = (
    "OPEN", "EXIT", "SALE", "HOTEL", "BAKERY", "PHARMACY", "TAXI", "MUSEUM", "BOOKS", "GARDEN",
    "STATION", "MARKET", "CINEMA", "LIBRARY", "POLICE", "TICKETS", "FLOWERS", "COFFEE",
)
CHINESE = ("咖啡店", "出口", "药店", "银行", "书店", "超市", "酒店", "地铁站", "面包房", "停车场", "花店", "邮局")
FONT_FOLDER = Path("/usr/share/fonts/truetype")
LATIN_FONTS = (
    "dejavu/DejaVuSans.ttf", "dejavu/DejaVuSans-Bold.ttf", "dejavu/DejaVuSerif.ttf",
    "liberation/LiberationSans-Regular.ttf", "liberation/LiberationSerif-Bold.ttf", "liberation/LiberationMono-Regular.ttf",
)
CJK_FONTS = ("wqy/wqy-zenhei.ttc",)
INKS = {"black": (20, 20, 20), "white": (245, 245, 245), "navy": (20, 30, 110), "maroon": (120, 20, 30)}


@dataclass(frozen=True)
class TextImage:
    """One picture: where it was written, what it shows and the words on it (none for half of them)."""

    path: Path
    colour: str
    shape: str
    words: tuple[str, ...]


def fonts() -> tuple[list[Path], list[Path]]:
    """The Latin and CJK font files that are installed; the toy world needs at least one of each."""
    latin = [FONT_FOLDER / name for name in LATIN_FONTS if (FONT_FOLDER / name).exists()]
    cjk = [FONT_FOLDER / name for name in CJK_FONTS if (FONT_FOLDER / name).exists()]
    return latin, cjk


def _plate(word: str, font: ImageFont.FreeTypeFont, ink: tuple[int, int, int], ground: tuple[int, int, int] | None) -> Image.Image:
    """The word on a transparent layer, or on a plate of ``ground`` (a sign)."""
    left, top, right, bottom = font.getbbox(word)
    pad = max(4, (bottom - top) // 3)
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (*ground, 255) if ground else (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((pad - left, pad - top), word, font=font, fill=(*ink, 255))
    return layer


def draw_words(image: Image.Image, words: tuple[str, ...], rng: random.Random) -> Image.Image:
    """``image`` with each of ``words`` drawn on it at a free spot: font, size, ink, plate and angle drawn from ``rng``."""
    latin, cjk = fonts()
    if not latin or not cjk:
        raise RuntimeError("the toy text world needs fonts-dejavu (or fonts-liberation) and fonts-wqy-zenhei installed")
    canvas = image.convert("RGBA")
    width, height = canvas.size
    taken: list[tuple[int, int, int, int]] = []
    for word in words:
        chinese = not word.isascii()
        size = int(height * rng.uniform(0.07, 0.13))
        font = ImageFont.truetype(str(rng.choice(cjk if chinese else latin)), size)
        ink_name = rng.choice(list(INKS))
        ground = None
        if rng.random() < 0.6:  # a sign: a plate that contrasts with the ink
            ground = (235, 230, 210) if ink_name != "white" else (30, 60, 40)
        elif ink_name == "white":
            ground = (60, 60, 60)
        layer = _plate(word, font, INKS[ink_name], ground).rotate(rng.uniform(-12, 12), expand=True, resample=Image.Resampling.BICUBIC)
        box = _free_spot(layer.size, (width, height), taken, rng)
        taken.append(box)
        canvas.alpha_composite(layer, box[:2])
    return canvas.convert("RGB")


def _free_spot(size: tuple[int, int], bounds: tuple[int, int], taken: list[tuple[int, int, int, int]],
               rng: random.Random) -> tuple[int, int, int, int]:
    """A place for a layer of ``size`` that overlaps no earlier word (the last try wins if none is free)."""
    width, height = size
    box = (0, 0, width, height)
    for _ in range(50):
        left, top = rng.randint(0, max(0, bounds[0] - width)), rng.randint(0, max(0, bounds[1] - height))
        box = (left, top, left + width, top + height)
        if all(box[2] <= other[0] or other[2] <= box[0] or box[3] <= other[1] or other[3] <= box[1] for other in taken):
            break
    return box


def write_text_world(folder: str | Path, count: int = 120, seed: int = 0, size: tuple[int, int] = (320, 240),
                     fmt: str = "jpg") -> list[TextImage]:
    """Write ``count`` toy pictures of ``size`` into ``folder``, every other one with one or two words on it
    (a third of them Chinese), as ``picture-{n}.{fmt}``: names that say nothing of what is drawn. The
    truth is also written to ``truth.json`` beside them."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, (colour, shape) in enumerate(sample_classes(count, rng)):
        picture = draw_image(colour, shape, rng, min(size)).resize(size, Image.Resampling.BICUBIC)
        words: tuple[str, ...] = ()
        if number % 2 == 0:
            vocabulary = CHINESE if rng.random() < 1 / 3 else ENGLISH
            words = tuple(rng.sample(vocabulary, rng.choice((1, 1, 2))))
            picture = draw_words(picture, words, rng)
        path = folder / f"picture-{number:05d}.{fmt}"
        picture.save(path, quality=90)
        written.append(TextImage(path, colour, shape, words))
    truth = {image.path.name: {"colour": image.colour, "shape": image.shape, "words": list(image.words)} for image in written}
    (folder / "truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1))
    return written

