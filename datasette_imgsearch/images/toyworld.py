"""A synthetic "toy world" of coloured shapes, with captions that describe each picture.

The world is small enough for a tiny CLIP to learn on a CPU in minutes (see
``scripts/train_toy_clip.py``), yet rich enough that a broken colour channel, a wrong
normalisation or a tokenizer mix-up shows up as wrong search results. Tests, the README's
quick start and the benchmarks all make their image folders with :func:`write_world`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (40, 75, 215),
    "yellow": (240, 205, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise")

CLASS_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "{colour} {shape}",
    "a picture of a {colour} {shape}",
)
COLOUR_TEMPLATES: tuple[str, ...] = ("something {colour}", "a {colour} thing", "{colour}")
SHAPE_TEMPLATES: tuple[str, ...] = ("a {shape}", "a photo of a {shape}", "{shape}")


@dataclass(frozen=True)
class ToyImage:
    """One generated picture: where it was written and what it shows."""

    path: Path
    colour: str
    shape: str


def captions_for(colour: str, shape: str) -> list[str]:
    """Every caption that truthfully describes a picture of a ``colour`` ``shape``."""
    return (
        [t.format(colour=colour, shape=shape) for t in CLASS_TEMPLATES]
        + [t.format(colour=colour) for t in COLOUR_TEMPLATES]
        + [t.format(shape=shape) for t in SHAPE_TEMPLATES]
    )


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _dull_colour(rng: random.Random) -> tuple[int, int, int]:
    """A low-saturation background colour, so the background never reads as one of the four colours."""
    grey = rng.randint(40, 230)
    return _jitter((grey, grey, grey), rng, 14)


def _background(kind: str, size: int, rng: random.Random) -> Image.Image:
    if kind == "plain":
        return Image.new("RGB", (size, size), _dull_colour(rng))
    if kind == "gradient":
        start, end = _dull_colour(rng), _dull_colour(rng)
        ramp = Image.linear_gradient("L").resize((size, size))
        if rng.random() < 0.5:
            ramp = ramp.rotate(90)
        return Image.composite(Image.new("RGB", ramp.size, end), Image.new("RGB", ramp.size, start), ramp)
    noise = Image.effect_noise((size, size), rng.uniform(20, 60)).filter(ImageFilter.BoxBlur(1))
    base = _dull_colour(rng)
    tint = Image.new("RGB", (size, size), base)
    return Image.blend(tint, Image.merge("RGB", (noise, noise, noise)), 0.5)


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    corners = 4 if shape == "square" else 3
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * i / corners),
            cy + radius * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, angle: float, fill: tuple[int, int, int]
) -> None:
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, angle), fill=fill)


def draw_image(colour: str, shape: str, rng: random.Random, size: int = 128) -> Image.Image:
    """Draw one picture: a main ``colour`` ``shape`` and up to two small distractors of other colours."""
    scale = 2  # draw large and shrink, for smooth edges
    canvas = _background(rng.choice(BACKGROUNDS), size * scale, rng)
    draw = ImageDraw.Draw(canvas)
    side = size * scale
    for _ in range(rng.choice((0, 0, 1, 2))):
        other = rng.choice([c for c in COLOURS if c != colour])
        radius = side * rng.uniform(0.05, 0.09)
        _draw_shape(
            draw,
            rng.choice(SHAPES),
            rng.uniform(radius, side - radius),
            rng.uniform(radius, side - radius),
            radius,
            rng.uniform(0, 2 * math.pi),
            _jitter(COLOURS[other], rng),
        )
    radius = side * rng.uniform(0.2, 0.36)
    margin = radius * 1.02
    _draw_shape(
        draw,
        shape,
        rng.uniform(margin, side - margin),
        rng.uniform(margin, side - margin),
        radius,
        rng.uniform(0, 2 * math.pi),
        _jitter(COLOURS[colour], rng),
    )
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def sample_classes(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` (colour, shape) pairs, cycling through all twelve classes so each is represented."""
    classes = [(c, s) for c in COLOURS for s in SHAPES]
    picks = [classes[i % len(classes)] for i in range(count)]
    rng.shuffle(picks)
    return picks


def write_world(folder: str | Path, count: int = 120, seed: int = 0, size: int = 128, fmt: str = "jpg") -> list[ToyImage]:
    """Write ``count`` pictures into ``folder`` as ``{colour}-{shape}-{n}.{fmt}`` and return what each shows."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, (colour, shape) in enumerate(sample_classes(count, rng)):
        path = folder / f"{colour}-{shape}-{number:05d}.{fmt}"
        draw_image(colour, shape, rng, size).save(path, quality=90)
        written.append(ToyImage(path, colour, shape))
    return written


def label_of(path: str | Path) -> tuple[str, str]:
    """The (colour, shape) that :func:`write_world` encoded in a file name."""
    colour, shape = Path(path).name.split("-")[:2]
    return colour, shape
