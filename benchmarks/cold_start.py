"""Cold start: a one-off `datasette-imgsearch search` (text and --image) against `python -c "import torch"`,
each a fresh process, on the toy model and a full-size ViT-B/32, with and without fastclip.

Target (issue: fast from the first keystroke): a cold search within 1.5x `import torch` on the same
machine with the toy model; `--help` and `info` load no model code; Datasette's startup not slowed by
the plugin (time to the first answer of `/-/versions.json`, and to the first search).

    python benchmarks/cold_start.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TOY_MODEL, free_port, run_measured, table, vit_b32

CLI = [sys.executable, "-m", "datasette_imgsearch"]


def seconds(command: list[str], repeat: int, plain: bool = True, cache: Path | None = None) -> float:
    """The median wall time of ``command`` run ``repeat`` times, each in a fresh process (with ``cache`` as
    its IMGSEARCH_CACHE, where an ONNX export may wait)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "IMGSEARCH_PLAIN_CLIP": "1" if plain else "0",
           **({"IMGSEARCH_CACHE": str(cache)} if cache else {})}
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def peak_mb(command: list[str], cache: Path | None = None) -> float:
    """The peak resident memory of ``command`` in a fresh process, in MB."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"IMGSEARCH_CACHE": str(cache)} if cache else {})}
    return run_measured(command, env)[1]


def onnx_rows(catalogs: dict[str, Path], picture: Path, repeat: int, torch_s: float) -> list[list[str]]:
    """Cold searches on ONNX Runtime (an export in a cache of their own) beside torch's, with peak memory."""
    from datasette_imgsearch.models.onnxclip import export

    rows = []
    for name, db in catalogs.items():
        cache = Path(tempfile.mkdtemp(prefix="onnx-cache-"))
        os.environ["IMGSEARCH_CACHE"] = str(cache)
        model = str(TOY_MODEL) if name == "toy model" else str(vit_b32())
        export(model)
        for way, runtime in (("ONNX Runtime", "onnx"), ("torch", "torch")):
            text = CLI + ["search", str(db), "a red circle", "--runtime", runtime]
            image = CLI + ["search", str(db), "--image", str(picture), "--runtime", runtime]
            text_s, image_s = seconds(text, repeat, cache=cache), seconds(image, repeat, cache=cache)
            target = "≤ 0.60x" if runtime == "onnx" else ""
            rows.append([f"cold `search`, text, {name}, {way}", f"{text_s:.2f}", f"{text_s / torch_s:.2f}x", target])
            rows.append([f"cold `search --image`, {name}, {way}", f"{image_s:.2f}", f"{image_s / torch_s:.2f}x", target])
            rows.append(["  peak memory of that text search (MB)", f"{peak_mb(text, cache):.0f}", "", ""])
    return rows


def served(db: Path, path: str, plugins: bool = True) -> float:
    """Seconds from starting `datasette serve db` until ``path`` first answers 200."""
    import httpx

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({} if plugins else {"DATASETTE_LOAD_PLUGINS": ""})}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "datasette", "serve", str(db), "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    finally:
        server.terminate()
        server.wait(10)


def plugins_can_be_switched_off() -> bool:
    """Whether this Datasette reads DATASETTE_LOAD_PLUGINS (1.0 does; 0.65 always loads every plugin)."""
    import datasette.plugins

    return hasattr(datasette.plugins, "DATASETTE_LOAD_PLUGINS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from datasette_imgsearch.build.builder import build
    from datasette_imgsearch.build.options import BuildOptions
    from datasette_imgsearch.images.toyworld import write_world
    from datasette_imgsearch.models.choice import ModelChoice

    folder = Path(tempfile.mkdtemp(prefix="cold-start-"))
    images = folder / "images"
    written = write_world(images, count=60, seed=3)
    catalogs = {}
    for name, model in (("toy model", TOY_MODEL), ("ViT-B/32", vit_b32())):
        catalogs[name] = folder / f"{name.replace('/', '')}.db"
        build(catalogs[name], images, BuildOptions(ModelChoice(model=str(model))))
    torch_s = seconds([sys.executable, "-c", "import torch"], args.repeat)
    rows = [["`python -c \"import torch\"`", f"{torch_s:.2f}", "1.00x", ""]]
    rows.append(["`datasette-imgsearch --help`", f"{seconds(CLI + ['--help'], args.repeat):.2f}", "", ""])
    info = seconds(CLI + ["info", str(catalogs["toy model"])], args.repeat)
    rows.append(["`datasette-imgsearch info`", f"{info:.2f}", "", ""])
    for name, db in catalogs.items():
        for plain in (True, False):
            way = "fastclip" if plain else "sentence-transformers"
            text = seconds(CLI + ["search", str(db), "a red circle"], args.repeat, plain)
            image = seconds(CLI + ["search", str(db), "--image", str(written[0].path)], args.repeat, plain)
            target = "≤ 1.50x" if name == "toy model" and plain else ""
            rows.append([f"cold `search`, text, {name}, {way}", f"{text:.2f}", f"{text / torch_s:.2f}x", target])
            rows.append([f"cold `search --image`, {name}, {way}", f"{image:.2f}", f"{image / torch_s:.2f}x", target])
    rows += onnx_rows(catalogs, written[0].path, args.repeat, torch_s)
    db = catalogs["ViT-B/32"]
    versions = statistics.median(served(db, "/-/versions.json") for _ in range(args.repeat))
    rows.append(["`datasette serve` (ViT-B/32 catalog): first `/-/versions.json`", f"{versions:.2f}", "", "not slowed"])
    if plugins_can_be_switched_off():
        bare = statistics.median(served(db, "/-/versions.json", plugins=False) for _ in range(args.repeat))
        rows.append(["  the same with no plugins (`DATASETTE_LOAD_PLUGINS=`)", f"{bare:.2f}", "", ""])
    search = f"/{db.stem}/images/-/imgsearch.json?q=a+red+circle"
    first = statistics.median(served(db, search) for _ in range(args.repeat))
    rows.append(["`datasette serve` (ViT-B/32 catalog): first search answered", f"{first:.2f}", "", ""])
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; median of {args.repeat}")
    table("Cold start, each a fresh process (seconds)", ["command", "s", "of import torch", "target"], rows)


if __name__ == "__main__":
    main()
