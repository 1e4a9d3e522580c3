"""Toy videos with known truth: scenes of the toy world's shapes at known times, encoded with PyAV.

Each video shows a few scenes of two to three and a half seconds, cut from one to the next (one toy
picture each, drifting a little so the frames are not identical). The tests and
``benchmarks/video_search.py`` ask for a scene's caption and check the video and the moment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from datasette_imgsearch.images.toyworld import draw_image, sample_classes
from datasette_imgsearch.images.video import QUARTER_TURNS


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    start: float
    end: float


@dataclass(frozen=True)
class ToyVideo:
    path: Path
    scenes: tuple[Scene, ...]


def write_videos(folder: str | Path, count: int = 4, seed: int = 0, scenes: int = 3, size: int = 128, fps: int = 10,
                 suffix: str = ".mp4") -> list[ToyVideo]:
    """Write ``count`` videos of ``scenes`` scenes each into ``folder``; return what each shows, and when."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classes = sample_classes(count * scenes, rng)
    written = []
    for number in range(count):
        path = folder / f"video-{number:03d}{suffix}"
        shown = classes[number * scenes:(number + 1) * scenes]
        written.append(ToyVideo(path, write_video(path, shown, rng, size, fps)))
    return written


def write_video(path: Path, shown: list[tuple[str, str]], rng: random.Random, size: int = 128, fps: int = 10,
                width: int | None = None, height: int | None = None, encoder: dict[str, str] | None = None,
                turn: int = 0) -> tuple[Scene, ...]:
    """One video of the (colour, shape) scenes in ``shown``, one after the other; scaled to ``width`` x
    ``height`` when given, encoded with the ``encoder`` options (x264's ``preset``, say). With ``turn``
    (90, 180 or 270) the frames are stored turned back and the container says to turn them by that many
    degrees counterclockwise, as a phone stores a portrait video. Returns the scenes with their times."""
    timeline: list[tuple[Image.Image, float]] = []
    scenes = []
    clock = 0.0
    for colour, shape in shown:
        length = round(rng.uniform(2.0, 3.5), 1)
        timeline.append((draw_image(colour, shape, rng, size), length))
        scenes.append(Scene(colour, shape, clock, clock + length))
        clock += length
    _encode(path, timeline, fps, width or size, height or size, encoder or {}, turn)
    return tuple(scenes)


def _encode(path: Path, timeline: list[tuple[Image.Image, float]], fps: int, width: int, height: int,
            encoder: dict[str, str], turn: int = 0) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if path.suffix != ".webm" else "libvpx-vp9", rate=fps)
        stream.width, stream.height = (height, width) if turn % 180 else (width, height)
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = dict[str, object](encoder)
        if turn:
            stream.set_display_rotation(turn)
        index = 0
        for picture, seconds in timeline:
            scaled = picture.resize((width, height))
            if turn:
                scaled = scaled.transpose(QUARTER_TURNS[360 - turn])  # stored turned back
            for step in range(round(seconds * fps)):
                drift = scaled.transform(scaled.size, Image.Transform.AFFINE, (1, 0, step % 3 - 1, 0, 1, 0),
                                         fillcolor=scaled.getpixel((0, 0)))
                frame = av.VideoFrame.from_ndarray(np.asarray(drift), format="rgb24")
                frame.pts = index
                index += 1
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
