"""Near-copies of toy-world pictures, with the truth of what each is a copy of.

Each original of :func:`toyworld.write_world` gets copies made the ways photo libraries fill up:
resized, re-compressed, cropped by up to a tenth, turned, mirrored, brightened or darkened, re-coloured,
or marked with a small overlay. The other pictures of the same colour and shape are the hard negatives:
the same subject, never a copy. ``benchmarks/duplicates.py`` and the tests measure grouping against it.
"""

from __future__ import annotations

import collections
import io
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageEnhance

from datasette_imgsearch.images.toyworld import write_world


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _crop(fraction: float) -> Callable[[Image.Image, random.Random], Image.Image]:
    def crop(image: Image.Image, rng: random.Random) -> Image.Image:
        width, height = image.size
        dx, dy = int(width * fraction), int(height * fraction)
        left, top = rng.randint(0, dx), rng.randint(0, dy)
        return image.crop((left, top, left + width - dx, top + height - dy))
    return crop


def _overlay(image: Image.Image, rng: random.Random) -> Image.Image:
    """A small caption box in a corner, as a sharing app or a watermark leaves."""
    marked = image.copy()
    width, height = marked.size
    box_width, box_height = int(width * 0.3), int(height * 0.1)
    left = rng.choice((2, width - box_width - 2))
    ImageDraw.Draw(marked).rectangle((left, height - box_height - 2, left + box_width, height - 2), fill=(250, 250, 250))
    ImageDraw.Draw(marked).text((left + 3, height - box_height), "© me", fill=(20, 20, 20))
    return marked


T = Image.Transpose
TRANSFORMS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "resized to half": lambda im, rng: im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC),
    "resized to 1.5x": lambda im, rng: im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.BICUBIC),
    "re-compressed at quality 30": lambda im, rng: _jpeg(im, 30),
    "cropped by 5%": _crop(0.05),
    "cropped by 10%": _crop(0.10),
    "turned 90°": lambda im, rng: im.transpose(T.ROTATE_90),
    "turned 180°": lambda im, rng: im.transpose(T.ROTATE_180),
    "turned 270°": lambda im, rng: im.transpose(T.ROTATE_270),
    "mirrored": lambda im, rng: im.transpose(T.FLIP_LEFT_RIGHT),
    "brighter by 20%": lambda im, rng: ImageEnhance.Brightness(im).enhance(1.2),
    "darker by 20%": lambda im, rng: ImageEnhance.Brightness(im).enhance(0.8),
    "more saturated": lambda im, rng: ImageEnhance.Color(im).enhance(1.3),
    "less contrast": lambda im, rng: ImageEnhance.Contrast(im).enhance(0.8),
    "with an overlay": _overlay,
}


@dataclass(frozen=True)
class ToyCopy:
    """A derived picture: where it was written, what it is a copy of, and how it was made."""

    path: Path
    original: Path
    transform: str


def write_copies(folder: str | Path, count: int = 96, copies_each: int = 2, seed: int = 0) -> tuple[list[Path], list[ToyCopy]]:
    """Write ``count`` toy-world originals and ``copies_each`` copies of each (cycling through every
    transform) into ``folder``; return the originals and the copies."""
    folder = Path(folder)
    originals = [image.path for image in write_world(folder, count=count, seed=seed)]
    rng = random.Random(seed + 1)
    names = list(TRANSFORMS)
    copies = []
    for number, original in enumerate(originals):
        for each in range(copies_each):
            transform = names[(number * copies_each + each) % len(names)]
            image = TRANSFORMS[transform](Image.open(original).convert("RGB"), rng)
            path = folder / f"{original.stem}-copy{each}.jpg"
            image.save(path, quality=rng.choice((75, 85, 95)))
            copies.append(ToyCopy(path, original, transform))
    return originals, copies


@dataclass(frozen=True)
class Score:
    """How near-duplicate groups compare with the truth: pair precision and recall, and for each
    transform the share of copies found in their original's group."""

    precision: float
    recall: float
    predicted_pairs: int
    true_pairs: int
    per_transform: dict[str, float]


def score_groups(group_of: dict[Path, int | None], originals: list[Path], copies: list[ToyCopy]) -> Score:
    """Score groups (each picture's group, None when alone) against the copies' truth."""
    truth = {original: original for original in originals} | {copy.path: copy.original for copy in copies}
    predicted: dict[int, list[Path]] = collections.defaultdict(list)
    for path, group in group_of.items():
        if group is not None:
            predicted[group].append(path)
    predicted_pairs = {frozenset(pair) for members in predicted.values() for pair in itertools.combinations(members, 2)}
    by_original: dict[Path, list[Path]] = collections.defaultdict(list)
    for path, original in truth.items():
        by_original[original].append(path)
    true_pairs = {frozenset(pair) for members in by_original.values() for pair in itertools.combinations(members, 2)}
    right = len(predicted_pairs & true_pairs)
    found: dict[str, list[bool]] = collections.defaultdict(list)
    for copy in copies:
        group = group_of.get(copy.path)
        found[copy.transform].append(group is not None and group == group_of.get(copy.original))
    return Score(
        precision=right / len(predicted_pairs) if predicted_pairs else 1.0,
        recall=right / len(true_pairs) if true_pairs else 1.0,
        predicted_pairs=len(predicted_pairs),
        true_pairs=len(true_pairs),
        per_transform={name: sum(hits) / len(hits) for name, hits in sorted(found.items())},
    )
