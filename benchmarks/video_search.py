"""Finding the moment: toy videos whose scenes show known shapes from known times, searched by each
scene's caption through the command line, the JSON API, the search page and SQL.

    python benchmarks/video_search.py                 # about a minute on two cores
    python benchmarks/video_search.py --seeds 10

A case is right when the scene's video is in the top five and the moment given for it lies within a
second of the scene's start (the target: 90% of cases through every door). Each catalog holds eight
videos of three scenes and twelve toy pictures, so each of the toy world's twelve classes is shown by
two scenes and one picture: three right answers, which a top five can hold. Prints a Markdown table
and writes benchmarks/results/video_search.json.
"""

from __future__ import annotations

import argparse
import asyncio
import html as html_module
import json
import re
import tempfile
from pathlib import Path

from click.testing import CliRunner
from common import TOY_MODEL, save_results, table
from datasette.app import Datasette

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.cli import cli
from datasette_imgsearch.images.toyvideo import Scene, ToyVideo, write_videos
from datasette_imgsearch.images.toyworld import write_world
from datasette_imgsearch.images.video import moment_of
from datasette_imgsearch.models.choice import ModelChoice

TOLERANCE = 1.0
SQL = ("select images.path, images.frame_time from json_each(imgsearch(:q, 5)) as hit "
       "join images on images.id = json_extract(hit.value, '$.id') order by hit.key")


def right(hits: list[tuple[str, float | None]], video: ToyVideo, scene: Scene) -> tuple[bool, bool]:
    """(the video is among the hits, and the first of its hits is at the scene's start, within a second)."""
    times = [time for path, time in hits if moment_of(path)[0] == video.path.name]
    starts = [s.start for s in video.scenes if (s.colour, s.shape) == (scene.colour, scene.shape)]
    return bool(times), bool(times) and times[0] is not None and any(abs(times[0] - start) <= TOLERANCE for start in starts)


async def doors(db: Path, query: str) -> dict[str, list[tuple[str, float | None]]]:
    """The top five through each door, as (path, moment)."""
    printed = CliRunner().invoke(cli, ["search", str(db), query, "-k", "5", "--json"]).output
    ds = Datasette([str(db)])
    api = await ds.client.get(f"/{db.stem}/images/-/imgsearch.json", params={"q": query, "k": 5})
    page = await ds.client.get(f"/{db.stem}/images/-/imgsearch", params={"q": query, "k": 5})
    sql = await ds.execute(db.stem, SQL, {"q": query})
    return {
        "CLI": [(hit["path"], hit.get("frame_time")) for hit in json.loads(printed)],
        "JSON": [(hit["path"], hit.get("frame_time")) for hit in api.json()["results"]],
        "page": shown_on(page.text),
        "SQL": [(row["path"], row["frame_time"]) for row in sql.rows],
    }


def shown_on(html: str) -> list[tuple[str, float | None]]:
    """(path, moment) of each result the page shows, read from its name link and its "▶ 0:02.5" link."""
    shown = []
    for card in html.split('<a class="name"')[1:]:
        path = html_module.unescape(re.search(r'title="([^"]*)"', card).group(1))  # type: ignore[union-attr]
        moment = re.search(r"▶ (?:(\d+):)?(\d+):(\d+\.\d)", card)
        seconds = None if moment is None else (
            int(moment.group(1) or 0) * 3600 + int(moment.group(2)) * 60 + float(moment.group(3)))
        shown.append((path, seconds))
    return shown


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5, help="catalogs of eight videos each")
    arguments = parser.parse_args()
    found: dict[str, list[tuple[bool, bool]]] = {"CLI": [], "JSON": [], "page": [], "SQL": []}
    for seed in range(arguments.seeds):
        with tempfile.TemporaryDirectory() as folder:
            media = Path(folder) / "media"
            videos = write_videos(media, count=8, seed=seed)
            write_world(media, count=12, seed=100 + seed)
            db = Path(folder) / "videos.db"
            build(db, media, BuildOptions(ModelChoice(model=str(TOY_MODEL)), ocr=False))
            for video in videos:
                for scene in video.scenes:
                    for door, hits in (await doors(db, f"a {scene.colour} {scene.shape}")).items():
                        found[door].append(right(hits, video, scene))
    rows, results = [], {}
    for door, cases in found.items():
        in_top, at_moment = sum(a for a, _ in cases) / len(cases), sum(b for _, b in cases) / len(cases)
        results[door] = {"cases": len(cases), "video_in_top_5": round(in_top, 3), "moment_within_1s": round(at_moment, 3)}
        rows.append([door, len(cases), f"{in_top:.3f}", f"{at_moment:.3f}", "≥ 0.9"])
    save_results("video_search", results)
    table(f"Caption queries for the scenes of {8 * arguments.seeds} toy videos in {arguments.seeds} catalogs (toy model)",
          ["door", "cases", "video in the top 5", "and its moment within 1 s", "target"], rows)


if __name__ == "__main__":
    asyncio.run(main())
