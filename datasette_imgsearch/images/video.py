"""Reading a video (the ``video`` extra, PyAV with FFmpeg inside its wheel): its facts and the frames
that stand for it, each with its time.

A video is decoded from start to end at two threads, and a frame is kept when the picture changed
since the last one kept (a scene change) or when ``interval`` seconds passed (longer where
``max_frames`` would not cover the video at that pace), never two within ``MIN_GAP`` seconds: every
moment that looks different gets a frame, a still scene gets one every few seconds. A video longer than
``SEEK_AFTER_SECONDS`` is sampled by seeking to evenly spaced keyframes instead, so a ten-hour file
costs ``max_frames`` seeks, not ten hours of decoding. A video with more scenes than ``max_frames``
keeps an evenly spread share of them. Frames are turned as the file's display matrix says (a phone's
portrait video). Only the kept frames are held, at the size the model and the thumbnail need, so memory
is bounded whatever the file. Every failure is an :class:`ImageError` with the kind that
``imgsearch_errors`` records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from datasette_imgsearch.errors import ImageError

VIDEO_INSTALL = "pip install 'datasette-imgsearch[video]'"
DEFAULT_INTERVAL = 4.0  # seconds: a still scene still gets a frame this often
DEFAULT_MAX_FRAMES = 120  # frames kept per video, at most
MIN_GAP = 0.5  # seconds between two kept frames, at least
SEEK_AFTER_SECONDS = 30 * 60  # longer videos are sampled by seeking (decoding half an hour of 1080p takes minutes)
SCENE_CHANGE = 0.05  # mean absolute difference (0 to 1) of two frames at 32x32 in RGB that makes a new scene
CHECKS_PER_SECOND = 4  # frames compared for scene changes per second of video (the others are only decoded)
MOMENT = re.compile(r"#t=(\d+(?:\.\d+)?)$")
# A phone stores a portrait video as landscape frames plus a display matrix that turns them; FFmpeg gives
# that turn as degrees counterclockwise, as Pillow's transposes are named.
QUARTER_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


@dataclass
class Frame:
    time: float  # seconds from the start
    image: Image.Image  # RGB, as shown, at most ``side`` pixels on its long side
    turn: int = 0  # degrees counterclockwise the display matrix turned the stored frame to show it


@dataclass
class Video:
    facts: dict[str, Any] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)


def frame_path(video_path: str, time: float) -> str:
    """A frame's path in the catalog: the video's, with the media fragment that plays from that moment."""
    return f"{video_path}#t={time:.3f}"


def moment_of(path: str) -> tuple[str, float | None]:
    """A catalog path split into the file's path and, for a frame, its time."""
    found = MOMENT.search(path)
    return (path[:found.start()], float(found.group(1))) if found else (path, None)


def at_moment(path: str, time: float | None) -> str:
    """How a result names a moment: ``clip.mp4 @ 0:12.5``; a picture's path as it is."""
    return path if time is None else f"{moment_of(path)[0]} @ {clock(time)}"


def clock(seconds: float) -> str:
    """12.5 → ``0:12.5``; 3725 → ``1:02:05.0``: how people read a moment."""
    minutes, rest = divmod(round(seconds, 1), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:04.1f}" if hours else f"{minutes}:{rest:04.1f}"


def read_video(path: Path, side: int, interval: float = DEFAULT_INTERVAL, max_frames: int = DEFAULT_MAX_FRAMES,
               seek_after: float = SEEK_AFTER_SECONDS) -> Video:
    """The facts and the sampled frames of the video at ``path``; frames are scaled to ``side`` on their
    long side; a video longer than ``seek_after`` seconds is sampled by seeking. Raises
    :class:`ImageError` for anything that is not a video with pictures in it."""
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as error:
        raise ImageError("corrupt", f"not a video FFmpeg can read: {_reason(error)}") from None
    try:
        if not container.streams.video:
            raise ImageError("not-a-video", "the file has no video stream (audio only?)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        video = Video(_facts(container, stream))
        duration = video.facts.get("duration") or 0.0
        spacing = max(interval, duration / max_frames)
        frames = _seeking(container, stream, duration, max_frames) if duration > seek_after else \
            _decoding(container, stream, spacing)
        video.frames = _spread(frames, side, max_frames)
        if video.frames and video.frames[0].turn % 180:  # the size as shown, not as stored
            video.facts["width"], video.facts["height"] = video.facts["height"], video.facts["width"]
    except av.error.FFmpegError as error:
        raise ImageError("corrupt", f"the video cannot be decoded: {_reason(error)}") from None
    finally:
        container.close()
    if not video.frames:
        raise ImageError("corrupt", "no frame of the video could be decoded")
    return video


def _spread(frames: Iterator[tuple[float, Any]], side: int, max_frames: int) -> list[Frame]:
    """At most ``max_frames`` of the ``frames`` offered, spread over them all: each time more are offered,
    every other one kept is let go and only every other one still to come is taken, so a video of 500
    scenes keeps one in eight of them, from start to end, rather than its first 120. Only the kept ones
    are converted, so memory holds ``max_frames`` small pictures whatever the video."""
    kept: list[Frame] = []
    stride = 1
    for number, (time, frame) in enumerate(frames):
        if number % stride:
            continue
        turn = _quarter_turn(frame)
        kept.append(Frame(time, _scaled(frame, side, turn), turn))
        if len(kept) > max_frames:
            kept, stride = kept[::2], stride * 2
    return kept


def _decoding(container: Any, stream: Any, spacing: float) -> Iterator[tuple[float, Any]]:
    """Frames from a decode of the whole stream: scene changes, and one every ``spacing`` seconds."""
    kept: tuple[float, np.ndarray] | None = None  # the time and the look of the last frame kept
    next_check = 0.0
    decoded = container.decode(stream)
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            return
        except Exception:  # a damaged packet mid-stream (a truncated file): what came before it stands
            if kept is None:
                raise
            return
        time = _time(frame, stream)
        if time is None or time < next_check:
            continue
        next_check = time + 1 / CHECKS_PER_SECOND
        look = np.asarray(frame.reformat(width=32, height=32, format="rgb24").to_ndarray(), dtype=np.float32) / 255
        if kept is not None:
            kept_at, kept_look = kept
            if time - kept_at < MIN_GAP:
                continue
            changed = float(np.abs(look - kept_look).mean()) >= SCENE_CHANGE
            if not changed and time - kept_at < spacing:
                continue
        kept = time, look
        yield time, frame


def _seeking(container: Any, stream: Any, duration: float, max_frames: int) -> Iterator[tuple[float, Any]]:
    """Frames from seeks to evenly spaced keyframes: a long video's sample, never decoding it whole."""
    last = -1.0
    for step in range(max_frames):
        wanted = duration * (step + 0.5) / max_frames
        container.seek(int(wanted / stream.time_base) + (stream.start_time or 0), stream=stream, backward=True)
        frame = next(container.decode(stream), None)
        time = _time(frame, stream) if frame is not None else None
        if time is not None and time > last:
            last = time
            yield time, frame


def _time(frame: Any, stream: Any) -> float | None:
    if frame.pts is None:
        return None
    return max(0.0, float((frame.pts - (stream.start_time or 0)) * stream.time_base))


def _quarter_turn(frame: Any) -> int:
    """How the display matrix turns the frame, to the nearest quarter: 0, 90, 180 or 270 degrees
    counterclockwise (a mirroring it also asks for is left out: CLIP reads a mirrored picture alike)."""
    rotation = frame.rotation or 0
    if not -180 <= rotation <= 180:  # a singular matrix has no rotation: FFmpeg's NaN reads as INT_MIN
        return 0
    return round(rotation / 90) % 4 * 90


def _scaled(frame: Any, side: int, turn: int) -> Image.Image:
    """The frame as RGB and as shown (turned by ``turn``), at most ``side`` on its long side."""
    width, height = frame.width, frame.height
    scale = min(1.0, side / max(width, height))
    image = frame.to_image(width=max(1, round(width * scale)), height=max(1, round(height * scale)))
    return image.transpose(QUARTER_TURNS[turn]) if turn else image


def _facts(container: Any, stream: Any) -> dict[str, Any]:
    """Duration, frame size as shown, codec, frame rate, creation time and GPS position where recorded."""
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    context = stream.codec_context
    facts: dict[str, Any] = {
        "media": "video", "format": Path(container.name).suffix[1:].upper() or None,
        "duration": round(duration, 3) if duration else None,
        "width": context.width or None, "height": context.height or None, "codec": context.name,
        "frame_rate": round(float(stream.average_rate), 3) if stream.average_rate else None,
    }
    metadata = {**container.metadata, **stream.metadata}
    if metadata.get("creation_time"):
        facts["taken"] = metadata["creation_time"][:19]
    facts.update(_position(metadata.get("com.apple.quicktime.location.ISO6709") or metadata.get("location") or ""))
    return facts


def _position(iso6709: str) -> dict[str, float]:
    """``+48.8584+002.2945+035.000/`` → latitude and longitude (phones write it in the container)."""
    found = re.match(r"([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)", iso6709)
    if not found:
        return {}
    latitude, longitude = float(found.group(1)), float(found.group(2))
    if abs(latitude) > 90 or abs(longitude) > 180:
        return {}
    return {"latitude": latitude, "longitude": longitude}


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)
