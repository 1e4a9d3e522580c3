"""Models: loading, the fast preprocessing, batched text queries, separate text models."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.models import batcher as batching
from datasette_imgsearch.models.batcher import Batcher, went_elsewhere
from datasette_imgsearch.models.cache import load_embedder
from datasette_imgsearch.models.embedder import Embedder
from datasette_imgsearch.models.names import same_model
from datasette_imgsearch.search.arguments import Candidates
from datasette_imgsearch.search.searcher import Searcher

from .conftest import run_cli


@pytest.mark.parametrize("size", [(301, 207), (64, 64), (640, 480), (90, 400), (3, 1000)])
def test_the_fast_preprocessing_gives_the_processors_own_numbers(toy_model: str, size: tuple[int, int]) -> None:
    plain, through_st = load_embedder(toy_model, "cpu"), Embedder(toy_model, "cpu", plain=False)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    reference = through_st.model.preprocess([image])["pixel_values"]
    for embedder in (plain, through_st):  # from the folder's settings (fastclip), and checked against the processor
        assert embedder._pixels is not None, "the toy model's processor should take the fast path"
        fast = embedder.preprocess(image)["pixel_values"]
        assert fast.shape == reference.shape
        assert float((fast - reference).abs().max()) < 1e-4


def test_concurrent_text_queries_are_encoded_together_and_correctly() -> None:
    calls: list[int] = []

    def encode(items: list[int]) -> np.ndarray:
        calls.append(len(items))
        time.sleep(0.05)  # a busy model, so that others queue up
        return np.array([[item * 2.0] for item in items])

    batcher = Batcher(encode)
    results: dict[int, float] = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, float(batcher(n)[0]))) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: n * 2.0 for n in range(12)}
    assert sum(calls) == 12 and len(calls) < 12


def test_an_error_reaches_every_caller_of_the_batch() -> None:
    def encode(items: list[str]) -> np.ndarray:
        raise ValueError("model on fire")

    batcher = Batcher(encode)
    with pytest.raises(ValueError, match="model on fire"):
        batcher("x")
    with pytest.raises(ValueError, match="model on fire"):
        batcher("y")  # and the batcher is not left stuck


def one_batch_then(size: int, then: Callable[[int], None]) -> list[threading.Thread]:
    """``size`` threads that are served in one batch of a ``passes_on`` batcher (queued behind a busy run),
    each then doing ``then(its number)``; started, with the batch released."""
    busy = threading.Event()
    first = Batcher(lambda items: [busy.wait(10) if item == "busy" else item for item in items], passes_on=True)
    blocker = threading.Thread(target=first, args=("busy",))
    blocker.start()
    threads = [threading.Thread(target=lambda n=n: then(first(n))) for n in range(size)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(first.queue) < size and time.monotonic() < deadline:
        time.sleep(0.001)
    busy.set()
    return [blocker, *threads]


def recording(sizes: list[int]) -> Batcher:
    return Batcher(lambda items: (sizes.append(len(items)), items)[1])


def test_callers_released_together_share_the_next_batchers_run() -> None:
    sizes: list[int] = []
    second = recording(sizes)

    def arrive_one_by_one(n: int) -> None:
        time.sleep(0.002 * n)  # as each gets the GIL, after its own work
        second(n)

    for thread in one_batch_then(4, arrive_one_by_one):
        thread.join(10)
    assert sizes == [4]


@pytest.mark.parametrize("elsewhere", ["says so", "says nothing"])
def test_a_caller_that_goes_elsewhere_holds_the_others_back_no_longer_than_the_bound(
    monkeypatch: pytest.MonkeyPatch, elsewhere: str
) -> None:
    monkeypatch.setattr(batching, "GATHER_SECONDS", 60.0 if elsewhere == "says so" else 0.3)
    sizes: list[int] = []
    second = recording(sizes)

    def half_go_on(n: int) -> None:
        if n % 2 == 0:
            second(n)
        else:
            time.sleep(0.05)
            if elsewhere == "says so":
                went_elsewhere()

    threads = one_batch_then(4, half_go_on)
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads) and sizes == [2]


@pytest.mark.parametrize("search", ["a full pass", "a few candidates", "a query vector for SQL"])
def test_a_search_counts_as_arrived_at_the_next_batcher_whether_or_not_it_makes_a_pass(
    shared_catalog: Path, search: str
) -> None:
    searcher = Searcher(shared_catalog)
    searcher.search("a red circle", 2)  # its text vector is kept: the searches below call no text batcher
    batch = batching.Cohort(2)
    batching._last_batch.cohort = batch
    if search == "a full pass":
        searcher.search("a red circle", 3)
    elif search == "a few candidates":
        searcher.search("a red circle", 3, None, Candidates("[1, 2, 3]"))
    else:
        searcher.query_vector("a red circle")
    assert batch.coming == 1


def test_batched_and_single_text_vectors_agree(toy_model: str) -> None:
    embedder = load_embedder(toy_model, "cpu")
    texts = ["a red circle", "something blue", "a much longer description of a small green triangle"]
    together = embedder.encode_texts(texts)
    for text, row in zip(texts, together):
        assert float(embedder.encode_text(text) @ row) > 0.9999


@pytest.mark.parametrize("recorded,asked,same", [
    ("clip-ViT-B-32", "clip-ViT-B-32", True),
    ("clip-ViT-B-32", "clip-ViT-L-14", False),
])
def test_model_names_compare_as_recorded(recorded: str, asked: str, same: bool) -> None:
    assert same_model(recorded, asked) is same


def test_a_relative_model_folder_is_the_same_model_as_its_absolute_path(toy_model: str, monkeypatch) -> None:
    monkeypatch.chdir(Path(toy_model).parent)
    assert same_model(str(Path(toy_model).resolve()), "./toy-clip")


def test_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a usable sentence-transformers or Hugging Face CLIP folder"):
        Embedder(str(tmp_path), "cpu")


def test_a_device_that_is_not_there() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="no CUDA GPU"):
        Embedder("unused", "cuda")


@pytest.mark.parametrize("gpu_possible, imports_torch", [(False, False), (True, True)])
def test_auto_is_the_cpu_without_importing_torch_where_no_gpu_can_be(gpu_possible: bool, imports_torch: bool) -> None:
    """A build on ONNX Runtime never needs torch: where no GPU device node exists, ``auto`` is the CPU
    without importing it (seconds of every such build); where one may, torch is asked."""
    probe = ("import sys\nfrom datasette_imgsearch.models import hardware\n"
             f"hardware.gpu_possible = lambda: {gpu_possible}\n"
             "device = hardware.resolve_device('auto')\nprint(device, 'torch' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    device, torch_imported = found.stdout.split()
    assert torch_imported == str(imports_torch) and (device == "cpu" or gpu_possible)


def test_without_torch_a_model_with_no_export_says_what_to_do(toy_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError, as in a serving install
    with pytest.raises(ModelError, match="torch is not installed here and .* has no ONNX export"):
        Embedder(toy_model, "auto", runtime="torch")


def test_a_separate_text_model_is_recorded_and_used(tmp_path: Path, images: Path, toy_model: str) -> None:
    text_model = tmp_path / "text-model"
    shutil.copytree(toy_model, text_model)
    db = tmp_path / "photos.db"
    run_cli("build", db, images, "--model", toy_model, "--text-model", text_model, "--silent")
    assert f"text_model:  {text_model.resolve()}" in run_cli("info", db)
    searcher = Searcher(db)
    assert searcher.models.text_model(searcher.store.current()) == str(text_model.resolve())
    assert len(searcher.search("a red circle", 3)) == 3


def test_querying_with_a_model_of_another_dimension_says_so(shared_catalog: Path, other_dimension_model: Path) -> None:
    output = run_cli("search", shared_catalog, "a red circle", "--text-model", other_dimension_model, expect=1)
    assert "gives 16-dimensional vectors, but this catalog holds 32-dimensional ones" in output


def test_a_text_model_of_another_dimension_is_refused_at_query_time(
    tmp_path: Path, images: Path, toy_model: str, other_dimension_model: Path
) -> None:
    db = tmp_path / "photos.db"
    run_cli("build", db, images, "--model", toy_model, "--text-model", other_dimension_model, "--silent")
    assert "16-dimensional" in run_cli("search", db, "a red circle", expect=1)
    assert run_cli("search", db, "--image", sorted(images.iterdir())[0], "--json", "-k", "1")


@pytest.mark.parametrize("image_processor,side", [
    ({"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}, 224),  # CLIP
    ({"size": {"height": 336, "width": 336}}, 336),  # SigLIP-style fixed size
    ({"size": {"shortest_edge": 256}, "crop_size": {"height": 240, "width": 240}}, 256),
    ({"size": 384}, 384),
    ({}, 224),
])
def test_the_model_input_side_follows_every_processor_shape(image_processor: dict, side: int) -> None:
    from types import SimpleNamespace

    from datasette_imgsearch.models.preprocessing import model_input_side

    assert model_input_side(SimpleNamespace(**image_processor)) == side


def photo(width: int, height: int) -> bytes:
    """A JPEG like a photograph: a picture with fine detail plus mild sensor noise (the benchmarks' recipe)."""
    import io
    import random

    from datasette_imgsearch.images.toyworld import draw_image

    side = max(width, height)
    base = draw_image("blue", "triangle", random.Random(width + height), size=1024).resize((side, side), Image.Resampling.BICUBIC)
    picture = Image.blend(base, Image.effect_noise((side, side), 24).convert("RGB"), 0.15)
    left, top = (side - width) // 2, (side - height) // 2
    buffer = io.BytesIO()
    picture.crop((left, top, left + width, top + height)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("size", [(4000, 3000), (3000, 4000), (6000, 1500), (1500, 6000), (800, 531), (640, 480), (1280, 720)])
def test_reduced_decoding_gives_the_model_the_input_its_own_processor_gives(toy_model: str, size: tuple[int, int]) -> None:
    from datasette_imgsearch.images import pixels

    embedder = load_embedder(toy_model, "cpu")
    data = photo(*size)
    fast = embedder.preprocess(pixels.decode(data, shrink_to=embedder.shrink_to()).image)["pixel_values"]
    processor = Embedder(toy_model, "cpu", plain=False).model  # the model's own processor, on the full decode
    reference = processor.preprocess([pixels.decode(data).image])["pixel_values"]
    grey_levels = (fast - reference).float() * float(np.mean(processor[0].processor.image_processor.image_std)) * 255
    assert float(grey_levels.pow(2).mean().sqrt()) < 2.0  # RMS, in 8-bit grey levels
    vectors = embedder.encode_preprocessed([{**embedder._template, "pixel_values": fast},
                                            {**embedder._template, "pixel_values": reference}])
    assert float(vectors[0] @ vectors[1]) >= 0.9999


@pytest.mark.parametrize("cpuinfo,native", [
    ("flags\t\t: fpu vme sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16", True),  # Sapphire Rapids
    ("flags\t\t: fpu vme sse2 avx2 avx512f avx512_vnni", False),  # AVX-512 without bfloat16 (Cascade Lake)
    ("Features\t: fp asimd evtstrm aes sha3 sve bf16 i8mm", True),  # Arm with BF16 (Graviton 3)
    ("Features\t: fp asimd evtstrm aes", False),
])
def test_bf16_counts_as_native_only_with_the_cpu_feature(cpuinfo: str, native: bool) -> None:
    from datasette_imgsearch.models.hardware import native_bf16

    assert native_bf16(cpuinfo) is native


@pytest.mark.parametrize("cpuinfo,machine,exact", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8", "x86_64", True),  # Sapphire Rapids
    ("flags\t\t: fpu sse2 avx2 avx_vnni", "x86_64", True),  # Alder Lake: VNNI without AVX-512
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw", "x86_64", False),  # Skylake-SP: no VNNI, products saturate
    ("flags\t\t: fpu sse2 avx2", "AMD64", False),
    (None, "x86_64", False),  # no /proc/cpuinfo to tell (macOS on Intel): not assumed
    ("Features\t: fp asimd evtstrm", "aarch64", True),  # Arm widens every product
    (None, "arm64", True),  # Apple silicon
])
def test_signed_byte_products_count_as_exact_only_with_the_cpu_feature(cpuinfo: str | None, machine: str, exact: bool) -> None:
    from datasette_imgsearch.models.hardware import exact_signed_bytes

    assert exact_signed_bytes(cpuinfo, machine) is exact


def test_auto_precision_is_recorded_as_what_it_resolved_to(tmp_path: Path, images: Path, toy_model: str) -> None:
    from datasette_imgsearch.catalog.catalog import Catalog
    from datasette_imgsearch.models.hardware import best_precision

    db = tmp_path / "auto.db"
    run_cli("build", db, images, "--model", toy_model, "--silent")  # --precision auto is the default
    with Catalog(db) as catalog:
        assert catalog.meta("precision") == best_precision("cpu") in ("fp32", "bf16")


def test_bf16_vectors_stay_within_cosine_0_999_of_fp32_and_rank_the_same(tmp_path: Path, images: Path, toy_model: str) -> None:
    import sqlite3

    from datasette_imgsearch.catalog.schema import from_blob
    from datasette_imgsearch.images.toyworld import label_of

    vectors = {}
    for precision in ("fp32", "bf16"):
        db = tmp_path / f"{precision}.db"
        run_cli("build", db, images, "--model", toy_model, "--precision", precision, "--silent")
        with sqlite3.connect(db) as conn:
            vectors[precision] = {path: from_blob(blob) for path, blob in conn.execute("select path, embedding from images")}
        found = Searcher(db).search("a red circle", 5)
        with sqlite3.connect(db) as conn:
            paths = [conn.execute("select path from images where id = ?", [hit.id]).fetchone()[0] for hit in found]
        assert all(label_of(path) == ("red", "circle") for path in paths), (precision, paths)
    assert min(float(vectors["fp32"][p] @ vectors["bf16"][p]) for p in vectors["fp32"]) >= 0.999


def test_queries_encoded_in_bf16_stay_within_cosine_0_999_of_fp32_and_rank_the_same(shared_catalog: Path) -> None:
    from datasette_imgsearch.images.toyworld import COLOURS, SHAPES
    from datasette_imgsearch.models.choice import ModelChoice

    queries = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES] + ["something red - red + blue"]
    searchers = {precision: Searcher(shared_catalog, ModelChoice(precision=precision, runtime="torch"))
                 for precision in ("fp32", "bf16")}
    for query in queries:
        fp32, bf16 = (searchers[p].query_vector(query)[0] for p in ("fp32", "bf16"))
        assert float(fp32 @ bf16) >= 0.999, query
        # The same five, but for near-ties at the edge: each of bf16's five is among fp32's ten, within 0.005 of
        # fp32's fifth score (on a CPU that emulates bf16, ties at rank 5 can go either way).
        fp32_scores = {h.id: h.score for h in searchers["fp32"].search(query, 10)}
        fifth = sorted(fp32_scores.values(), reverse=True)[4]
        for hit in searchers["bf16"].search(query, 5):
            assert fp32_scores.get(hit.id, -1.0) >= fifth - 0.005, query
    assert searchers["bf16"].models.text_embedder(searchers["bf16"].store.current()).precision == "bf16"
