"""Hostile uploads against a real `datasette` process on loopback: memory and event-loop responsiveness.

Targets (issue: hardening): 8 concurrent large-picture uploads grow the server's peak memory by at most
600 MB, and 10 s later it is back within 150 MB of its baseline; while 3 POSTs of 200,000 form fields
each run, `/-/versions.json` answers within 250 ms.

    python benchmarks/hostile_uploads.py

Every request goes to 127.0.0.1 only, and the run is bounded (a few dozen requests, under a minute).
"""

from __future__ import annotations

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


def fields_round(client: httpx.Client, base: str) -> list[object]:
    boundary = "b0undary"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(200_000))
    body_bytes = (body + f"--{boundary}--\r\n").encode()
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
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(lambda _: client.post(SEARCH, content=body_bytes, headers=headers, timeout=120).status_code,
                                 range(3)))
    time.sleep(0.2)
    running = False
    watcher.join()
    return ["3 x 200,000-field POSTs", f"{len(body_bytes) / 1e6:.1f} MB each", ",".join(sorted({str(s) for s in statuses})),
            f"{max(latencies) * 1000:.0f}", f"{sorted(latencies)[len(latencies) // 2] * 1000:.0f}", len(latencies)]


def main() -> None:
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
        table("Event loop under hostile forms",
              ["load", "body", "statuses", "max /-/versions.json ms", "p50 ms", "polls"], [fields_round(client, base)])
        print(json.dumps({"memory": rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
