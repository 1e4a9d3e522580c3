"""Hostile requests against a real `datasette` process on loopback: memory and event-loop responsiveness.

Targets (issues: hardening, both rounds): 8 concurrent large-picture uploads grow the server's peak
memory by at most 600 MB, and 10 s later it is back within 150 MB of its baseline; while 3 POSTs of
200,000 form fields, or 3 searches with the most facets and filters a URL may carry (or far more, which
are refused), run at once, `/-/versions.json` answers within 250 ms; and under 16 clients sending new
queries, the server's memory after `--sustained` minutes is within 150 MB of its value after the first.

    python benchmarks/hostile_uploads.py [--sustained 10]

Every request goes to 127.0.0.1 only, and the run is bounded (a few dozen requests, under a minute).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import httpx
from common import TOY_MODEL, datasette_server, table
from PIL import Image

SEARCH = "/photos/images/-/imgsearch.json"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def png(width: int, height: int, mode: str) -> bytes:
    """A PNG that compresses like a picture (a smooth gradient), so a large one still fits the upload cap."""
    buffer = io.BytesIO()
    gradient = Image.linear_gradient("L").resize((width, height))
    picture = gradient if mode == "L" else Image.merge("RGB", (gradient, gradient.rotate(90), gradient.rotate(180)))
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


class Sampler(threading.Thread):
    """Samples the server's RSS every 20 ms until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)


def uploads(client: httpx.Client, body: bytes, name: str, count: int) -> list[int]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(
            lambda _: client.post(SEARCH, files={"image": (name, body, "image/png")}, data={"k": "5"}, timeout=120).status_code,
            range(count),
        ))


def memory_round(client: httpx.Client, pid: int, label: str, body: bytes, name: str) -> list[object]:
    baseline = rss_mb(pid)
    sampler = Sampler(pid)
    sampler.start()
    started = time.perf_counter()
    statuses = uploads(client, body, name, 8)
    seconds = time.perf_counter() - started
    sampler.running = False
    sampler.join()
    time.sleep(10)
    after = rss_mb(pid)
    return [label, f"{len(body) / 1e6:.1f} MB", ",".join(sorted({str(s) for s in statuses})), f"{seconds:.1f}",
            f"{sampler.peak - baseline:+.0f}", f"{after - baseline:+.0f}"]


def stall_round(base: str, label: str, send: Callable[[httpx.Client], int], size: str = "") -> list[object]:
    """``/-/versions.json``'s latency, polled every 20 ms, while three ``send`` run at once."""
    latencies: list[float] = []
    running = True

    def poll() -> None:
        with httpx.Client(base_url=base) as poller:
            while running:
                started = time.perf_counter()
                poller.get("/-/versions.json", timeout=30)
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    with httpx.Client(base_url=base) as client, ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(lambda _: send(client), range(3)))
    time.sleep(0.2)
    running = False
    watcher.join()
    return [label, size, ",".join(sorted({str(s) for s in statuses})),
            f"{max(latencies) * 1000:.0f}", f"{sorted(latencies)[len(latencies) // 2] * 1000:.0f}", len(latencies)]


def fields_round(base: str) -> list[object]:
    boundary = "b0undary"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(200_000))
    body_bytes = (body + f"--{boundary}--\r\n").encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return stall_round(base, "3 x 200,000-field POSTs", lambda client: client.post(
        SEARCH, content=body_bytes, headers=headers, timeout=120).status_code, f"{len(body_bytes) / 1e6:.1f} MB each")


# Every column a search can facet by, and filters on them that every row passes: the heaviest search a
# URL may ask for (64 arguments, 16 filters).
ALL_FACETS = ["path", "name", "folder", "format", "width", "height", "size", "modified", "mtime_ns", "hash", "taken",
              "camera_make", "camera_model", "latitude", "longitude", "year"]
PASSING_FILTERS = [("width__gte", "0"), ("height__gte", "0"), ("size__gte", "0"), ("mtime_ns__gte", "0"),
                   ("path__contains", "-"), ("name__contains", "."), ("hash__not", "x"), ("format__not", "x")]


def facet_rounds(base: str) -> list[list[object]]:
    heaviest = [("q", "a red circle"), ("k", "1000")] + [("_facet", name) for name in ALL_FACETS] + PASSING_FILTERS
    rounds = [
        ("3 x k=1000 with every facet and 8 filters", heaviest),
        ("3 x 500 repeated facets (refused)", [("q", "a red circle"), ("k", "24")] + [("_facet", "path")] * 500),
        ("3 x 1,000 filters (refused)", [("q", "a red circle")] + [("path__contains", str(n)) for n in range(1000)]),
    ]
    return [stall_round(base, label, lambda client, params=params: client.get(SEARCH, params=params, timeout=120).status_code,
                        f"{len(params)} arguments") for label, params in rounds]


def sustained_round(base: str, pid: int, minutes: float) -> list[object]:
    """16 clients sending new queries for ``minutes``: the server's RSS after the first minute and at the end."""
    deadline = time.monotonic() + minutes * 60
    first_minute = time.monotonic() + 60
    marks: dict[str, float] = {"before": rss_mb(pid)}
    counter = iter(range(10**9))
    errors = 0

    def client_loop() -> int:
        nonlocal errors
        sent = 0
        with httpx.Client(base_url=base) as client:
            while time.monotonic() < deadline:
                status = client.get(SEARCH, params={"q": f"a red circle {next(counter)}", "k": "24"}, timeout=60).status_code
                errors += status != 200
                sent += 1
        return sent

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client_loop) for _ in range(16)]
        while time.monotonic() < deadline:
            time.sleep(1)
            if "after 1 min" not in marks and time.monotonic() >= first_minute:
                marks["after 1 min"] = rss_mb(pid)
        sent = sum(future.result() for future in futures)
    marks["end"] = rss_mb(pid)
    return [f"16 clients, new queries, {minutes:g} min", sent, errors, f"{marks['before']:.0f}",
            f"{marks.get('after 1 min', marks['end']):.0f}", f"{marks['end']:.0f}",
            f"{marks['end'] - marks.get('after 1 min', marks['end']):+.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sustained", type=float, default=0, help="minutes of 16 clients sending new queries (0: none)")
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "datasette_imgsearch"]
    subprocess.run(cli + ["toy-world", str(work / "images"), "--count", "60"], check=True, env=env, capture_output=True)
    subprocess.run(cli + ["build", str(work / "photos.db"), str(work / "images"), "--model", str(TOY_MODEL), "--silent"],
                   check=True, env=env, capture_output=True)
    with datasette_server(work / "photos.db") as (base, server), httpx.Client(base_url=base) as client:
        uploads(client, png(640, 480, "RGB"), "warm-up.png", 2)  # one-time costs (threads, codecs) out of the figures
        print(f"server pid {server.pid}, baseline RSS {rss_mb(server.pid):.0f} MB; "
              f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
        rows = [
            memory_round(client, server.pid, "8 x 9990x9990 PNG (100 MP)", png(9990, 9990, "L"), "huge.png"),
            memory_round(client, server.pid, "8 x 4000x4000 RGB PNG (16 MP, at the cap)", png(4000, 4000, "RGB"), "cap.png"),
        ]
        table("Concurrent large uploads (server RSS, MB)",
              ["uploads", "each", "statuses", "seconds", "peak growth", "after 10 s"], rows)
        table("Event loop under hostile requests",
              ["load", "size", "statuses", "max /-/versions.json ms", "p50 ms", "polls"],
              [fields_round(base)] + facet_rounds(base))
        if arguments.sustained:
            table("Server memory under sustained load (RSS, MB)",
                  ["load", "requests", "errors", "before", "after 1 min", "end", "end - after 1 min"],
                  [sustained_round(base, server.pid, arguments.sustained)])
        print(json.dumps({"memory": rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
