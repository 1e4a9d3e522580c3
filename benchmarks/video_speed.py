"""What cataloguing a video costs: a 60-second 1080p H.264 video (30 frames a second, a new scene every
two to three and a half seconds, as toyvideo.py draws them), built with the toy model.

    python benchmarks/video_speed.py          # about two minutes on two cores, the video made once

Reports the whole build's time beside the target (10 s on two cores), its peak memory in a fresh
process, and its parts: decoding and sampling the frames (images/video.py), and embedding them; best of
three interleaved rounds each.
Prints a Markdown table and writes benchmarks/results/video_speed.json.
"""

from __future__ import annotations

import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CACHE, TOY_MODEL, cpu_name, save_results, table

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.images.toyvideo import write_video
from datasette_imgsearch.images.toyworld import sample_classes
from datasette_imgsearch.images.video import read_video
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.models.embedder import Embedder

TARGET_SECONDS = 10.0
ROUNDS = 3


def video_1080p(seconds: float = 60.0) -> Path:
    """The benchmark's video, made once into the cache (x264 at its 'medium' preset, as phones' encoders go)."""
    path = CACHE / "video-60s-1080p.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(60)
        write_video(path, sample_classes(int(seconds / 2.75), rng), rng, size=256, fps=30, width=1920, height=1080)
    return path


def peak_build_memory(path: Path) -> float:
    """The peak resident memory, in MB, of a fresh process that builds a catalog of the video alone."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "media").mkdir()
        (Path(folder) / "media" / path.name).symlink_to(path)
        code = ("from datasette_imgsearch.build.builder import build; from datasette_imgsearch.build.options import "
                "BuildOptions; from datasette_imgsearch.models.choice import ModelChoice; import sys; "
                "build(sys.argv[1], sys.argv[2], BuildOptions(ModelChoice(model=sys.argv[3]), ocr=False))")
        subprocess.run([sys.executable, "-c", code, str(Path(folder) / "v.db"), str(Path(folder) / "media"), str(TOY_MODEL)],
                       check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    path = video_1080p()
    embedder = Embedder(str(TOY_MODEL), "cpu")
    side = max(embedder.shrink_to(256))
    decoding, embedding, whole = [], [], []
    for _ in range(ROUNDS):  # interleaved, best of each: the shared cores' speed drifts
        started = time.perf_counter()
        sampled = read_video(path, side)
        decoding.append(time.perf_counter() - started)
        started = time.perf_counter()
        embedder.encode_images([frame.image for frame in sampled.frames])
        embedding.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "media").mkdir()
            (Path(folder) / "media" / path.name).symlink_to(path)
            started = time.perf_counter()
            build(Path(folder) / "v.db", Path(folder) / "media", BuildOptions(ModelChoice(model=str(TOY_MODEL)), ocr=False))
            whole.append(time.perf_counter() - started)
    decoding, embedding, whole = min(decoding), min(embedding), min(whole)  # type: ignore[assignment]
    peak = peak_build_memory(path)
    facts = sampled.facts
    video = f"{facts['duration']:.0f} s, {facts['width']}x{facts['height']}, {facts['frame_rate']:g} fps, {facts['codec']}"
    results = {
        "cpu": cpu_name(), "video": video, "frames_kept": len(sampled.frames), "build_seconds": round(whole, 2),
        "build_peak_mb": round(peak), "decode_seconds": round(decoding, 2), "embed_seconds": round(embedding, 3),
    }
    save_results("video_speed", results)
    table(f"Cataloguing one video (toy model, {cpu_name()})",
          ["video", "frames kept", "build", "its peak memory", "decoding and sampling alone", "embedding alone", "target"],
          [[video, len(sampled.frames), f"{whole:.1f} s", f"{peak:.0f} MB", f"{decoding:.1f} s", f"{embedding:.2f} s",
            f"≤ {TARGET_SECONDS:.0f} s"]])


if __name__ == "__main__":
    main()
