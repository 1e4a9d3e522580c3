"""This project against rclip 3.3, side by side in one run, on the same random-weight model.

rclip answers a query on ONNX Runtime and never imports torch; so does `datasette-imgsearch search`
once the catalog's model has an ONNX export (docs/onnx.md). Both get the same full-size ViT-B-32-256
with random weights (the shape of the model rclip ships): this project exports it with `export-onnx`,
and rclip gets those very graphs under the names it reads, with CLIP's own vocabulary file, so the
model's cost is the same and only the two programs differ. rclip is installed into a venv of its own
(benchmarks/.cache/rclip-venv) and never downloads: its data folder holds the model already.

Each round, interleaved, each command a fresh process: a build of the photos (rclip indexes a folder
at its first query, so its build is that first query), then cold text searches, with their peak memory:
this project's from the full install (torch and every extra present) and from a serving install.
A build also reads the words in the pictures when the ``ocr`` extra is installed, which rclip does not
do; the build without it (``--no-ocr``) is the same work as rclip's.

    python benchmarks/rclip_side_by_side.py [--photos 160] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import CACHE, CLIP_BPE_FILE, ROOT, clip_vocabulary, cpu_name, photo_folder, run_measured, table, vit_b32

RCLIP = "rclip==3.3.0"
RCLIP_MODEL_FOLDER = "ViT-B-32-256-datacomp_s34b_b86k"  # where rclip looks for textual.onnx and visual.onnx
CLI = [sys.executable, "-m", "datasette_imgsearch"]
QUERY = "a red circle"


def rclip_venv(folder: Path = CACHE / "rclip-venv") -> Path:
    """rclip's command in a venv of its own (made once): its pins (numpy ~= 2.1) are not this project's."""
    command = folder / "bin" / "rclip"
    if not command.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", RCLIP], check=True)
    return command


def serving_venv(folder: Path = CACHE / "serving-venv") -> Path:
    """The python of a serving install (requirements-serving.txt and this package without its
    dependencies: no torch, no pandas), made once and refreshed with this checkout's package each run."""
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements-serving.txt")],
                       check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(ROOT)],
                   check=True, capture_output=True)
    return python


def renamed_input(source: Path, target: Path) -> None:
    """``source``'s graph with its one input named ``input`` and its output ``output``, as rclip feeds it."""
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    names = {graph.input[0].name: "input", graph.output[0].name: "output"}
    for value in [*graph.input, *graph.output]:
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]
    onnx.save(model, str(target))


def rclip_data(export: Path, folder: Path) -> Path:
    """rclip's data folder holding this export's towers and CLIP's vocabulary: nothing to download."""
    models = folder / RCLIP_MODEL_FOLDER
    if not (models / "visual.onnx").exists():
        models.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer").mkdir(exist_ok=True)
        vocabulary = clip_vocabulary()
        if vocabulary is None:
            raise SystemExit("CLIP's vocabulary could not be downloaded: rclip cannot tokenize without it")
        shutil.copyfile(vocabulary / CLIP_BPE_FILE, folder / "tokenizer" / CLIP_BPE_FILE)
        renamed_input(export / "text.onnx", models / "textual.onnx")
        renamed_input(export / "image.onnx", models / "visual.onnx")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=160, help="640x480 photos to build from")
    parser.add_argument("--repeat", type=int, default=5, help="cold searches of each program per round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, each with fresh builds")
    args = parser.parse_args()
    from datasette_imgsearch.models.onnxclip import export, find_export

    model = str(vit_b32(CACHE / "vit-b32-256-random", image_size=256))
    cache = CACHE / "side-by-side-cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "IMGSEARCH_CACHE": str(cache)}
    os.environ["IMGSEARCH_CACHE"] = str(cache)
    exported = find_export(model) or export(model)
    rclip = str(rclip_venv())
    serving = [str(serving_venv()), "-m", "datasette_imgsearch"]
    photos = photo_folder(args.photos, 640, 480)
    work = Path(tempfile.mkdtemp(prefix="rclip-side-by-side-"))
    times: dict[str, list[float]] = {}
    peaks: dict[str, list[float]] = {}

    def measure(name: str, command: list[str], where: dict[str, str], cwd: Path | None = None) -> None:
        seconds, peak = run_measured(command, where, cwd)
        times.setdefault(name, []).append(seconds)
        peaks.setdefault(name, []).append(peak)

    for round_number in range(args.rounds):
        db = work / f"photos-{round_number}.db"
        data = rclip_data(exported, work / f"rclip-data-{round_number}")
        rclip_env = {**env, "RCLIP_DATADIR": str(data)}
        measure("build", CLI + ["build", str(db), str(photos), "--model", model, "--no-ocr"], env)
        words = work / f"words-{round_number}.db"
        measure("build, words", CLI + ["build", str(words), str(photos), "--model", model], env)
        measure("rclip build", [rclip, "--top", "1", QUERY], rclip_env, photos)
        for _ in range(args.repeat):
            measure("import torch", [sys.executable, "-c", "import torch"], env)
            measure("search", CLI + ["search", str(db), QUERY, "--runtime", "onnx"], env)
            measure("serving search", serving + ["search", str(db), QUERY, "--runtime", "onnx"], env)
            measure("rclip search", [rclip, "--no-indexing", QUERY], rclip_env, photos)
    shutil.rmtree(work, ignore_errors=True)
    torch_s = statistics.median(times["import torch"])
    rows = []
    for name, label in (("import torch", '`python -c "import torch"`'),
                        ("build", f"`datasette-imgsearch build --no-ocr` of {args.photos} photos, 640x480 (rclip's work)"),
                        ("build, words", "the same build, reading the words in the pictures too (the default with [ocr])"),
                        ("rclip build", f"rclip's first query in that folder (it indexes the {args.photos} photos)"),
                        ("search", "cold `datasette-imgsearch search`, text, ONNX Runtime (full install)"),
                        ("serving search", "the same search in a serving install (requirements-serving.txt, no torch)"),
                        ("rclip search", "cold `rclip --no-indexing`, text")):
        seconds = statistics.median(times[name])
        rows.append([label, f"{seconds:.2f}", f"{seconds / torch_s:.2f}x", f"{statistics.median(peaks[name]):.0f}"])
    print(f"CPU: {cpu_name()}; {args.rounds} interleaved rounds, medians; {RCLIP}")
    table("This project and rclip, one model (random-weight ViT-B-32-256), each command a fresh process",
          ["command", "seconds", "of import torch", "peak MB"], rows)


if __name__ == "__main__":
    main()
