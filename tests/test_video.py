"""Videos (the video extra): catalogued as a row per sampled moment, found by what they show, answered
with the moment through every door, and never able to hurt a build."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from datasette.app import Datasette

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.images.toyvideo import ToyVideo, write_video, write_videos
from datasette_imgsearch.images.toyworld import write_world
from datasette_imgsearch.images.video import at_moment, clock, frame_path, moment_of, read_video
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.web.ranges import byte_range
from tests.conftest import run_cli

pytest.importorskip("av")

MOMENT_TOLERANCE = 1.0  # seconds between a reported moment and the scene's true start


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, toy_model: str) -> tuple[Path, list[ToyVideo]]:
    """A catalog of six toy videos (three scenes each) beside twelve toy pictures."""
    folder = tmp_path_factory.mktemp("library")
    videos = write_videos(folder / "media", count=6, seed=4)
    write_world(folder / "media", count=12, seed=8)
    db = folder / "library.db"
    build(db, folder / "media", BuildOptions(ModelChoice(model=toy_model), batch_size=16, ocr=False))
    return db, videos


def rows(db: Path, where: str = "1") -> list[dict[str, object]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    return [dict(row) for row in conn.execute(f"select * from images where {where} order by id")]


def found_moment(hits: list[dict[str, object]], video: ToyVideo) -> float | None:
    """The moment reported for ``video`` among the top five hits, or None."""
    for hit in hits[:5]:
        path, time = moment_of(str(hit["path"]))
        if path == video.path.name:
            return time if time is not None else float(hit["frame_time"])  # type: ignore[arg-type]
    return None


def test_a_video_is_a_row_with_its_facts_and_a_row_per_sampled_moment(library: tuple[Path, list[ToyVideo]]) -> None:
    db, videos = library
    video = rows(db, f"path = '{videos[0].path.name}'")[0]
    assert video["media"] == "video" and video["codec"] == "h264" and video["frame_rate"] == 10.0
    assert video["duration"] == pytest.approx(videos[0].scenes[-1].end, abs=0.2)
    assert video["width"] == video["height"] == 128 and video["thumbnail"] and video["frame_time"] == 0.0
    frames = rows(db, f"video_id = {video['id']}")
    assert all(f["media"] == "frame" and f["path"] == frame_path(str(video["path"]), f["frame_time"]) for f in frames)
    for scene in videos[0].scenes:  # every scene has a moment (the video's own, or a frame's) within a second of its start
        assert any(abs(f["frame_time"] - scene.start) <= MOMENT_TOLERANCE for f in [video, *frames]), scene
    assert len(rows(db, "media = 'image'")) == 12


def test_caption_queries_find_the_video_and_the_moment(library: tuple[Path, list[ToyVideo]]) -> None:
    db, videos = library
    cases = [(video, scene) for video in videos for scene in video.scenes]
    right = 0
    for video, scene in cases:
        hits = json.loads(run_cli("search", db, f"a {scene.colour} {scene.shape}", "-k", "5", "--json"))
        moment = found_moment(hits, video)
        starts = [s.start for s in video.scenes if (s.colour, s.shape) == (scene.colour, scene.shape)]
        right += moment is not None and any(abs(moment - start) <= MOMENT_TOLERANCE for start in starts)
    assert right / len(cases) >= 0.9, f"{right} of {len(cases)}"


def test_frames_of_one_video_are_one_result_with_its_other_moments(library: tuple[Path, list[ToyVideo]]) -> None:
    db, videos = library
    hits = json.loads(run_cli("search", db, "something red", "-k", "30", "--json"))
    shown = [moment_of(str(hit["path"]))[0] for hit in hits]
    assert len(shown) == len(set(shown)), "a video shows once"
    every = json.loads(run_cli("search", db, "something red", "-k", "30", "--json", "--all"))
    assert len({moment_of(str(hit["path"]))[0] for hit in every}) < len(every), "--all shows every moment"
    assert any(hit.get("moments") for hit in hits)
    frames = [hit for hit in every if "#t=" in hit["path"]]
    assert frames and all(hit["frame_time"] == pytest.approx(moment_of(hit["path"])[1], abs=1e-3) for hit in frames)
    assert all(moment["frame_time"] is not None for hit in hits for moment in hit.get("moments", []))


def test_the_command_line_prints_the_moment(library: tuple[Path, list[ToyVideo]]) -> None:
    db, videos = library
    scene = videos[1].scenes[1]
    printed = run_cli("search", db, f"a {scene.colour} {scene.shape}", "-k", "5")
    assert f"{videos[1].path.name} @ 0:0" in printed


@pytest.mark.asyncio
async def test_sql_hits_carry_the_video_and_the_time(library: tuple[Path, list[ToyVideo]]) -> None:
    db, videos = library
    scene = videos[2].scenes[0]
    sql = ("select images.path, images.video_id, images.frame_time, images.duration from json_each(imgsearch(:q, 5)) "
           "as hit join images on images.id = json_extract(hit.value, '$.id') order by hit.key")
    result = await Datasette([str(db)]).execute("library", sql, {"q": f"a {scene.colour} {scene.shape}"})
    ours = [dict(row) for row in result.rows if moment_of(row["path"])[0] == videos[2].path.name]
    assert ours and all(row["duration"] and row["frame_time"] is not None for row in ours)
    assert any(abs(row["frame_time"] - scene.start) <= MOMENT_TOLERANCE for row in ours)


@pytest.mark.asyncio
async def test_the_json_and_the_page_link_to_the_moment_and_the_video_seeks(library: tuple[Path, list[ToyVideo]]) -> None:
    db, videos = library
    scene = videos[3].scenes[2]
    ds = Datasette([str(db)])
    page = "/library/images/-/imgsearch"
    data = (await ds.client.get(f"{page}.json", params={"q": f"a {scene.colour} {scene.shape}", "k": 5})).json()
    hit = next(r for r in data["results"] if moment_of(r["path"])[0] == videos[3].path.name)
    assert abs(hit["frame_time"] - scene.start) <= MOMENT_TOLERANCE
    assert hit["moment_url"].endswith(f"#t={hit['frame_time']:g}") and "moments" in hit
    broad = (await ds.client.get(f"{page}.json", params={"q": "something red", "k": 30})).json()["results"]
    moments = [moment for result in broad for moment in result.get("moments", [])]
    assert moments and all(moment["frame_time"] is not None for moment in moments)
    html = (await ds.client.get(page, params={"q": f"a {scene.colour} {scene.shape}", "k": 5})).text
    assert f'▶ {clock(hit["frame_time"])}' in html
    original = hit["moment_url"].split("#")[0]
    size = videos[3].path.stat().st_size
    whole = await ds.client.get(original)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4" and whole.content == videos[3].path.read_bytes()
    part = await ds.client.get(original, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == videos[3].path.read_bytes()[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    beyond = await ds.client.get(original, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize("header,size,expected", [
    (None, 1000, None),
    ("bytes=0-99", 1000, (0, 99)),
    ("bytes=900-", 1000, (900, 999)),
    ("bytes=-100", 1000, (900, 999)),
    ("bytes=990-2000", 1000, (990, 999)),
    ("bytes=1000-", 1000, False),
    ("bytes=-0", 1000, False),
    ("bytes=5-2", 1000, False),
    ("bytes=0-1,5-9", 1000, None),  # several ranges: the whole file, as the RFC allows
    ("items=0-1", 1000, None),
    ("bytes=-", 1000, None),
])
def test_which_bytes_a_range_header_asks_for(header: str | None, size: int, expected: object) -> None:
    assert byte_range(header, size) == expected


def test_an_uploaded_still_finds_the_moment(library: tuple[Path, list[ToyVideo]], tmp_path: Path) -> None:
    db, videos = library
    scene = videos[4].scenes[1]
    sampled = read_video(videos[4].path, 128)
    still = min(sampled.frames, key=lambda frame: abs(frame.time - (scene.start + scene.end) / 2))
    still.image.save(tmp_path / "still.png")
    hits = json.loads(run_cli("search", db, "--image", tmp_path / "still.png", "-k", "3", "--json"))
    assert moment_of(hits[0]["path"])[0] == videos[4].path.name
    assert scene.start - MOMENT_TOLERANCE <= hits[0]["frame_time"] <= scene.end


@pytest.mark.parametrize("time,shown", [(0, "0:00.0"), (12.5, "0:12.5"), (59.96, "1:00.0"), (3725, "1:02:05.0")])
def test_moments_read_as_people_read_them(time: float, shown: str) -> None:
    assert clock(time) == shown
    assert at_moment(frame_path("a b/clip.mp4", time), time) == f"a b/clip.mp4 @ {shown}"
    assert moment_of(frame_path("x#t=1.mp4", time)) == ("x#t=1.mp4", pytest.approx(time, abs=0.001))


def test_moving_copying_and_removing_a_video_carries_its_frames(tmp_path: Path, toy_model: str) -> None:
    folder = tmp_path / "media"
    (video,) = write_videos(folder, count=1, seed=2)
    db = tmp_path / "v.db"
    options = BuildOptions(ModelChoice(model=toy_model), ocr=False)
    build(db, folder, options)
    before = {r["frame_time"]: r["id"] for r in rows(db, "media = 'frame'")}
    (folder / "album").mkdir()
    shutil.move(video.path, folder / "album" / "holiday.mp4")
    summary = build(db, folder, options)
    assert summary.moved == 1
    after = rows(db, "media = 'frame'")
    assert {r["frame_time"]: r["id"] for r in after} == before
    assert all(r["path"].startswith("album/holiday.mp4#t=") and r["folder"] == "album" for r in after)
    shutil.copy(folder / "album" / "holiday.mp4", folder / "copy.mp4")
    assert build(db, folder, options).added == 1
    copy = rows(db, "path = 'copy.mp4'")[0]
    assert len(rows(db, f"video_id = {copy['id']}")) == len(before)
    (folder / "copy.mp4").unlink()
    build(db, folder, options)
    assert not rows(db, f"video_id = {copy['id']}") and not rows(db, "path like 'copy.mp4%'")
    kept = folder.parent / "kept.mp4"
    shutil.move(folder / "album" / "holiday.mp4", kept)
    build(db, folder, options)
    assert not rows(db)
    largest = sqlite3.connect(db).execute("select max(id) from imgsearch_removed").fetchone()[0]
    shutil.move(kept, folder / "back.mp4")
    build(db, folder, options)  # a returning file gets its rows back under their old ids, frames included
    back = rows(db)
    assert len(back) == len(before) + 1 and max(r["id"] for r in back) <= largest
    assert all(r["path"].startswith("back.mp4") for r in back)


def test_near_copies_of_a_video_are_videos_of_its_length_not_videos_that_open_alike(tmp_path: Path, toy_model: str) -> None:
    """A video is compared by its first frame: a re-encoded copy is grouped with it, but another video with
    the same opening scene is not, nor is a still of that frame (Immich #11699)."""
    folder = tmp_path / "media"
    write_video(folder / "trip.mp4", [("red", "circle"), ("blue", "square")], random.Random(1))
    write_video(folder / "trip-small.mp4", [("red", "circle"), ("blue", "square")], random.Random(1),
                width=96, height=96, encoder={"crf": "32"})
    write_video(folder / "other-trip.mp4", [("red", "circle"), ("green", "triangle"), ("yellow", "square")],
                random.Random(1))
    read_video(folder / "trip.mp4", 128).frames[0].image.save(folder / "poster.jpg", quality=95)
    db = tmp_path / "v.db"
    build(db, folder, BuildOptions(ModelChoice(model=toy_model), ocr=False))
    group = {r["path"]: r["duplicate_group"] for r in rows(db, "media is not 'frame'")}
    assert group["trip.mp4"] is not None and group["trip.mp4"] == group["trip-small.mp4"]
    assert group["other-trip.mp4"] is None and group["poster.jpg"] is None


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name,make,kind", [
    ("empty.mp4", lambda p: p.write_bytes(b""), "empty"),
    ("text.mov", lambda p: p.write_text("not a video at all\n" * 50), "corrupt"),
    ("image.mkv", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40), "corrupt"),
    ("header-only.mp4", lambda p: p.write_bytes(p.with_name("good.mp4").read_bytes()[:600]), "corrupt"),
])
def test_a_bad_video_is_an_error_row_and_the_rest_is_catalogued(
    tmp_path: Path, toy_model: str, name: str, make: object, kind: str
) -> None:
    folder = tmp_path / "media"
    write_video(folder / "good.mp4", [("red", "circle")], random.Random(1))
    make(folder / name)  # type: ignore[operator]
    db = tmp_path / "v.db"
    summary = build(db, folder, BuildOptions(ModelChoice(model=toy_model), ocr=False))
    assert summary.failed == 1 and summary.added == 1
    error = sqlite3.connect(db).execute("select error, message from imgsearch_errors").fetchone()
    assert error[0] == kind and error[1]


def test_a_truncated_video_keeps_the_moments_before_the_cut(tmp_path: Path, toy_model: str) -> None:
    """Matroska is written as it is recorded, so a cut file still plays up to the cut (an MP4 whose index
    was to come at the end cannot be opened at all: an error row, tested above)."""
    folder = tmp_path / "media"
    scenes = write_video(folder / "cut.mkv", [("red", "circle"), ("blue", "square"), ("green", "triangle")],
                         random.Random(3))
    _truncated(folder / "cut.mkv")
    db = tmp_path / "v.db"
    summary = build(db, folder, BuildOptions(ModelChoice(model=toy_model), ocr=False))
    assert summary.added == 1 and summary.failed == 0
    times = [r["frame_time"] for r in rows(db)]
    assert any(abs(t - scenes[0].start) <= MOMENT_TOLERANCE for t in times)


def test_an_audio_only_file_is_not_a_video(tmp_path: Path, toy_model: str) -> None:
    import av
    import numpy as np

    folder = tmp_path / "media"
    folder.mkdir()
    with av.open(str(folder / "voice.mp4"), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        container.mux(stream.encode(None))
    build(tmp_path / "v.db", folder, BuildOptions(ModelChoice(model=toy_model), ocr=False))
    error = sqlite3.connect(tmp_path / "v.db").execute("select error, message from imgsearch_errors").fetchone()
    assert error == ("not-a-video", "the file has no video stream (audio only?)")


@pytest.mark.parametrize("seeking", [False, True], ids=["decoded whole", "sampled by seeking"])
@pytest.mark.parametrize("turn", [90, 180, 270])
def test_a_phone_s_turned_video_is_read_upright_with_its_size_as_shown(tmp_path: Path, turn: int, seeking: bool) -> None:
    """A phone stores a portrait video as landscape frames and a display matrix that turns them: frames,
    thumbnails and vectors are of the picture as shown, and so are the width and height."""
    av = pytest.importorskip("av")
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display matrix")
    scenes = [("red", "triangle"), ("blue", "square")]
    upright, turned = tmp_path / "upright.mp4", tmp_path / "turned.mp4"
    write_video(upright, scenes, random.Random(3), width=96, height=64)
    write_video(turned, scenes, random.Random(3), width=96, height=64, turn=turn)
    limits = {"max_frames": 4, "seek_after": 1} if seeking else {}
    expected, found = read_video(upright, 96, **limits), read_video(turned, 96, **limits)
    assert (found.facts["width"], found.facts["height"]) == (96, 64)
    assert len(found.frames) == len(expected.frames) >= 2
    for shown, read in zip(expected.frames, found.frames):
        assert read.image.size == shown.image.size == (96, 64)
        assert np.abs(np.asarray(read.image, float) - np.asarray(shown.image, float)).mean() < 6


def test_a_video_whose_display_matrix_is_nonsense_is_read_as_stored(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    if not hasattr(av.video.stream.VideoStream, "set_display_matrix"):
        pytest.skip("this PyAV cannot write a display matrix")
    path = tmp_path / "singular.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_matrix([0] * 9)
        for _ in range(5):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 96, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    video = read_video(path, 96)
    assert (video.facts["width"], video.facts["height"]) == (96, 64) and video.frames[0].image.size == (96, 64)


@pytest.mark.parametrize("max_frames", [2, 3, 5])
def test_a_video_with_more_scenes_than_frames_kept_keeps_them_spread_from_start_to_end(
    tmp_path: Path, max_frames: int
) -> None:
    path = tmp_path / "many-scenes.mp4"
    scenes = write_video(path, [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle")] * 3,
                         random.Random(4), size=64)
    every = [frame.time for frame in read_video(path, 64).frames]
    kept = [frame.time for frame in read_video(path, 64, max_frames=max_frames).frames]
    assert len(every) >= len(scenes) > max_frames
    assert max_frames // 2 < len(kept) <= max_frames
    assert set(kept) <= set(every) and kept[0] == every[0]
    assert kept[-1] >= scenes[-1].end / 2  # not the first scenes only


def test_a_long_video_is_sampled_by_seeking_with_a_bounded_number_of_frames(tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    write_video(path, [("red", "circle")] * 3, random.Random(5), size=64, fps=2)
    sampled = read_video(path, 64, max_frames=4, seek_after=1)
    assert 1 <= len(sampled.frames) <= 4
    times = [frame.time for frame in sampled.frames]
    assert times == sorted(times) and times[-1] > times[0]


@pytest.mark.asyncio
async def test_videos_in_the_table_can_be_filtered_and_faceted(library: tuple[Path, list[ToyVideo]]) -> None:
    db, _ = library
    data = (await Datasette([str(db)]).client.get("/library/images.json", params={"_facet": "media", "_size": 0})).json()
    facets = data["facet_results"].get("results", data["facet_results"])  # 1.0 nests them under "results"
    counts = {item["value"]: item["count"] for item in facets["media"]["results"]}
    assert counts["video"] == 6 and counts["image"] == 12 and counts["frame"] >= 6 * 2  # a scene's moment is the video's


def test_without_the_video_extra_videos_are_left_alone_with_a_note(
    tmp_path: Path, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasette_imgsearch.images import scan

    monkeypatch.setattr(scan, "video_available", lambda: False)
    folder = tmp_path / "media"
    write_videos(folder, count=2, seed=1)
    write_world(folder, count=3, seed=1)
    summary = build(tmp_path / "v.db", folder, BuildOptions(ModelChoice(model=toy_model), ocr=False))
    assert summary.added == 3 and summary.failed == 0
    assert summary.notes == ["2 video files were not catalogued: pip install 'datasette-imgsearch[video]'"]


def test_toy_world_writes_videos_with_their_scenes(tmp_path: Path) -> None:
    printed = run_cli("toy-world", tmp_path / "clips", "--count", "2", "--videos", "2")
    assert "wrote 2 images" in printed and printed.count("@ 0:00.0") == 2
    assert sorted(p.name for p in (tmp_path / "clips").glob("*.mp4")) == ["video-000.mp4", "video-001.mp4"]


@pytest.mark.asyncio
async def test_a_video_s_row_page_plays_it_from_the_moment_and_a_picture_s_shows_it(
    library: tuple[Path, list[ToyVideo]]
) -> None:
    db, videos = library
    frame = rows(db, "media = 'frame'")[0]
    picture = rows(db, "media = 'image'")[0]
    ds = Datasette([str(db)])
    frame_page = (await ds.client.get(f"/library/images/{frame['id']}")).text
    assert f'"moment": {frame["frame_time"]}' in frame_page and "<video controls" in frame_page
    assert '"moment": null' in (await ds.client.get(f"/library/images/{picture['id']}")).text


def test_variable_frame_rate_moments_are_the_frames_own_times(tmp_path: Path) -> None:
    """Times come from each frame's timestamp, never from its number: a phone's variable frame rate."""
    from fractions import Fraction

    import av
    import numpy as np

    from datasette_imgsearch.images.toyworld import draw_image

    rng = random.Random(9)
    path = tmp_path / "vfr.mkv"
    scenes = [(draw_image("red", "circle", rng), 0.0, 2.0, 4), (draw_image("blue", "square", rng), 2.0, 5.0, 25)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 128
        stream.pix_fmt, stream.time_base = "yuv420p", Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for picture, start, end, fps in scenes:  # 4 frames a second, then 25
            for number in range(round((end - start) * fps)):
                frame = av.VideoFrame.from_ndarray(np.asarray(picture), format="rgb24")
                frame.pts, frame.time_base = round((start + number / fps) * 1000), Fraction(1, 1000)
                container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    times = [frame.time for frame in read_video(path, 128).frames]
    assert times[0] == 0.0 and any(abs(time - 2.0) <= 0.3 for time in times), times


def test_info_counts_files_as_a_build_does_and_says_how_many_moments(library: tuple[Path, list[ToyVideo]]) -> None:
    db, _ = library
    facts = json.loads(run_cli("info", db, "--json"))
    moments = len(rows(db, "media in ('video', 'frame')"))
    assert facts["images"] == 18 and facts["videos"] == f"6 videos, {moments} moments"
    # the library was built without OCR: its 12 pictures wait to be read, and videos are not read at all
    assert facts["text"] == "read in 0 pictures, 0 with words; 12 not read yet (a build with OCR reads them)"
