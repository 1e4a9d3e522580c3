"""Re-runs and memory: a no-op build over many unchanged files, and peak memory as a catalog grows.

    python benchmarks/incremental.py              # about 3 minutes on two cores

Uses small toy-world files and the toy model: what is measured here is the bookkeeping, not the model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import TOY_MODEL, save_results, table, timed


def world(count: int) -> Path:
    from datasette_imgsearch.images.toyworld import write_world

    folder = Path(tempfile.mkdtemp()) / f"world-{count}"
    write_world(folder, count=count, seed=5, size=64)
    return folder


def peak_memory_mb(folder: Path) -> float:
    """Peak resident memory of a whole ``build`` process, in MB."""
    db = Path(tempfile.mkdtemp()) / "memory.db"
    code = (
        "import resource, sys\n"
        "from datasette_imgsearch.build.builder import build\n"
        "from datasette_imgsearch.build.options import BuildOptions\n"
        "from datasette_imgsearch.models.choice import ModelChoice\n"
        f"build({str(db)!r}, {str(folder)!r}, BuildOptions(ModelChoice(model={str(TOY_MODEL)!r}), batch_size=32))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    return int(output.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()

    from datasette_imgsearch.build.builder import build
    from datasette_imgsearch.build.options import BuildOptions
    from datasette_imgsearch.models.choice import ModelChoice

    folder = world(args.files)
    db = folder.parent / "catalog.db"
    first = timed(lambda: build(db, folder, BuildOptions(ModelChoice(model=str(TOY_MODEL)), batch_size=64)))
    again = timed(lambda: build(db, folder, BuildOptions(ModelChoice(model=str(TOY_MODEL)))), repeat=3)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "datasette_imgsearch", "build", str(db), "--silent"], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    command = time.perf_counter() - started

    sizes = [500, 2000, 8000]
    memory = {size: peak_memory_mb(world(size)) for size in sizes}
    table(
        f"Incremental builds, {args.files} toy-world files",
        ["run", "seconds"],
        [["first build (toy model)", f"{first:.1f}"],
         ["no-op re-run, in-process (`build()`)", f"{again:.2f}"],
         ["no-op re-run, the whole `datasette-imgsearch build` command", f"{command:.2f}"]],
    )
    table("Peak memory of a build process (toy model)", ["images", "peak RSS, MB"],
          [[size, f"{memory[size]:.0f}"] for size in sizes])
    save_results("incremental", {"files": args.files, "first": first, "noop": again, "noop_command": command,
                                 "memory_mb": memory})


if __name__ == "__main__":
    main()
