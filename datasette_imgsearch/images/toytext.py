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


Colour = tuple[int, int, int]


def _plate(word: str, font: ImageFont.FreeTypeFont, ink: Colour, ground: Colour | None) -> Image.Image:
    """The word on a plate of ``ground`` (a sign), or straight on a transparent layer with a contrasting
    outline (a label or a caption, as photo apps and memes write them, legible on any picture)."""
    outline = 0 if ground else max(1, font.size // 14)
    left, top, right, bottom = (int(edge) for edge in font.getbbox(word, stroke_width=outline))
    pad = max(4, (bottom - top) // 3)
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (*ground, 255) if ground else (0, 0, 0, 0))
    halo = (255, 255, 255, 255) if sum(ink) < 384 else (0, 0, 0, 255)
    ImageDraw.Draw(layer).text((pad - left, pad - top), word, font=font, fill=(*ink, 255), stroke_width=outline,
                               stroke_fill=halo)
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
        angle = rng.uniform(-12, 12)
        layer = _plate(word, font, INKS[ink_name], ground).rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
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


def write_text_world(folder: str | Path, count: int = 120, seed: int = 0, size: tuple[int, int] = (640, 480),
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



def mixed_queries(truth: dict[str, dict], id_of: dict[str, int]) -> list[tuple[str, set[int], set[int]]]:
    """Each query "a {colour} {shape} {word}" that some picture both shows and says, from the truth that
    :func:`write_text_world` writes: (the query, the ids of the pictures that do both, the ids of those
    that do only one of the two)."""
    cases = []
    for colour, shape, word in sorted({(f["colour"], f["shape"], w) for f in truth.values() for w in f["words"]}):
        shows = {id_of[name] for name, f in truth.items() if (f["colour"], f["shape"]) == (colour, shape)}
        says = {id_of[name] for name, f in truth.items() if word in f["words"]}
        cases.append((f"a {colour} {shape} {word}", shows & says, shows ^ says))
    return cases


def shown_and_said_first(ranking: list[int], both: set[int], one: set[int]) -> bool:
    """Whether the pictures that show and say a query are in ``ranking`` (ids, best first), above every
    picture there that does only one of the two."""
    ranks = {id_: rank for rank, id_ in enumerate(ranking)}
    shown = [ranks[id_] for id_ in both if id_ in ranks]
    return bool(shown) and all(max(shown) < ranks[id_] for id_ in one if id_ in ranks)
