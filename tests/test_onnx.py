"""Queries on ONNX Runtime: a CLIP model's towers exported by this package, checked against torch, and
searches that never import torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from datasette_imgsearch.build import model as build_model
from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.model import build_runtime
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import from_blob
from datasette_imgsearch.cli import cli
from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.models import int8text
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.models.embedder import Embedder
from datasette_imgsearch.models.onnxclip import FAITHFUL, TEXT_SUBFOLDER, digest, export, find_export
from datasette_imgsearch.models.onnxgraph import TEXTS_A_PART, side_by_side
from datasette_imgsearch.models.onnxtext import OnnxText, export_text, find_text_export
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.settings import Settings

from .conftest import run_cli

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, toy_model: str) -> Path:
    """The toy CLIP's export, in a folder of its own (the session's cache stays without one, so the other
    tests keep running on torch)."""
    return export(toy_model, tmp_path_factory.mktemp("onnx") / "toy-clip")


def test_the_export_records_its_model_and_how_faithful_it_is(exported: Path, toy_model: str) -> None:
    facts = json.loads((exported / "export.json").read_text())
    assert facts["model_digest"] == digest(Path(toy_model)) and facts["worst_cosine"] >= FAITHFUL
    # each graph's weights in a file of their own, which ONNX Runtime maps rather than parses
    assert {"text.onnx", "text.onnx.data", "image.onnx", "image.onnx.data", "export.json"} <= {
        file.name for file in exported.iterdir()}
    assert (exported / "text.onnx").stat().st_size < (exported / "text.onnx.data").stat().st_size
    assert find_export(toy_model, exported) == exported


def test_vectors_on_onnx_runtime_match_torch_in_fp32(exported: Path, toy_model: str, world: Path) -> None:
    on_onnx = Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(exported))
    on_torch = Embedder(toy_model, "cpu", "fp32", runtime="torch")
    assert on_onnx.onnx is not None and on_torch.onnx is None
    texts = ["a red circle", "something yellow", "红色的圆", "a" * 300]
    pictures = [Image.open(path).convert("RGB") for path in sorted(world.iterdir())[:6]]
    for ours, theirs in ((on_onnx.encode_texts(texts), on_torch.encode_texts(texts)),
                         (on_onnx.encode_images(pictures), on_torch.encode_images(pictures))):
        assert np.min(np.sum(ours * theirs, axis=1)) >= FAITHFUL


@pytest.mark.parametrize("count", [1, 2 * TEXTS_A_PART - 1, 2 * TEXTS_A_PART, 200])
def test_a_large_batch_of_texts_is_encoded_in_parts_side_by_side_in_order(count: int) -> None:
    calls: list[tuple[int, str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append((len(texts), threading.current_thread().name))
        return np.array([[float(text)] for text in texts])

    assert side_by_side(encode, [str(n) for n in range(count)])[:, 0].tolist() == list(range(count))
    if count < 2 * TEXTS_A_PART:
        assert calls == [(count, threading.current_thread().name)]
    else:
        assert sum(size for size, _ in calls) == count and max(size for size, _ in calls) == TEXTS_A_PART
        assert all(name.startswith("encode texts") for _, name in calls)


def test_a_large_batch_on_onnx_runtime_gives_torchs_vectors_in_order(exported: Path, toy_model: str) -> None:
    colours, shapes = ("red", "green", "blue", "yellow", "a very pale violet"), ("circle", "square", "star")
    texts = [f"{colour} {shape} number {n}" for n in range(3) for colour in colours for shape in shapes]  # 45: three parts
    on_onnx = Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(exported))
    on_torch = Embedder(toy_model, "cpu", "fp32", runtime="torch")
    assert np.min(np.sum(on_onnx.encode_texts(texts) * on_torch.encode_texts(texts), axis=1)) >= FAITHFUL


@pytest.mark.parametrize("query", ["a red circle", "something blue - blue + green", "row:5"])
def test_a_search_on_onnx_runtime_ranks_as_torch_does(exported: Path, shared_catalog: Path, toy_model: str, query: str) -> None:
    on_onnx = Searcher(shared_catalog, ModelChoice(model=toy_model, runtime="onnx", onnx=str(exported), precision="fp32"))
    on_torch = Searcher(shared_catalog, ModelChoice(model=toy_model, runtime="torch", precision="fp32"))
    assert [hit.id for hit in on_onnx.search(query, 10)] == [hit.id for hit in on_torch.search(query, 10)]


def run_search(args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys\nfrom datasette_imgsearch.cli import cli\ntry:\n    cli(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('torch' in sys.modules, file=sys.stderr)\n")
    environment = {**os.environ, "IMGSEARCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=environment, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize(("how", "torch_needs_torch"), [(["a red circle"], True), (["--image", "IMAGE"], True),
                                                       (["row:3"], False)])  # a row's vector needs no model at all
def test_a_cold_search_with_an_export_never_imports_torch(
    exported: Path, shared_catalog: Path, toy_model: str, tmp_path: Path, how: list[str], torch_needs_torch: bool
) -> None:
    picture = next(iter(sorted((shared_catalog.parent / "images").iterdir())))
    args = ["search", str(shared_catalog), *[str(picture) if a == "IMAGE" else a for a in how], "--model", toy_model,
            "--onnx", str(exported), "--json"]
    found = run_search(args, tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stderr.strip().splitlines()[-1] == "False" and len(json.loads(found.stdout)) == 10
    on_torch = run_search([*args[:-3], "--runtime", "torch", "--json"], tmp_path)
    assert on_torch.stderr.strip().splitlines()[-1] == str(torch_needs_torch)
    assert [hit["id"] for hit in json.loads(found.stdout)] == [hit["id"] for hit in json.loads(on_torch.stdout)]


def test_onnx_asked_for_without_an_export_says_how_to_make_one(
    toy_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "empty-cache"))  # a build on a CPU without bf16 exports
    with pytest.raises(ModelError, match="datasette-imgsearch export-onnx --model"):
        Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(tmp_path))


@pytest.mark.parametrize("runtime,runs_on", [("auto", "torch"), ("torch", "torch"), ("onnx", "an error")])
def test_bf16_asked_for_runs_on_torch(exported: Path, toy_model: str, runtime: str, runs_on: str) -> None:
    """ONNX Runtime runs fp32 only: asking for bf16 is asking for torch, whatever export there is."""
    if runs_on == "an error":
        with pytest.raises(ModelError, match="ONNX Runtime runs the model in fp32"):
            Embedder(toy_model, "cpu", "bf16", runtime=runtime, onnx=str(exported))
        return
    embedder = Embedder(toy_model, "cpu", "bf16", runtime=runtime, onnx=str(exported))
    assert embedder.onnx is None and embedder.precision == "bf16"


def test_an_export_of_another_version_of_the_model_is_not_used(exported: Path, toy_model: str, tmp_path: Path) -> None:
    changed = tmp_path / "toy-clip"
    shutil.copytree(toy_model, changed)
    (changed / "config.json").write_text((changed / "config.json").read_text() + " ")
    assert find_export(str(changed), exported) is None
    assert Embedder(str(changed), "cpu", "fp32", runtime="auto", onnx=str(exported)).onnx is None


def test_a_server_without_the_model_folder_uses_the_export_named_for_that_model(exported: Path, tmp_path: Path) -> None:
    """A deployment carries the catalog and the export, not the model: the export says what it was made from."""
    absent = str(tmp_path / "elsewhere" / "toy-clip")
    carried = tmp_path / "carried"
    shutil.copytree(exported, carried)
    facts = json.loads((carried / "export.json").read_text())
    (carried / "export.json").write_text(json.dumps({**facts, "name": absent}))
    assert find_export(absent, carried) == carried
    assert find_export(str(tmp_path / "another"), carried) is None
    assert Embedder(absent, "cpu", "fp32", runtime="auto", onnx=str(carried)).onnx is not None


@pytest.mark.parametrize("file_name, damage", [("text.onnx", "cut short"), ("text.onnx.data", "cut short"),
                                               ("text.onnx.data", "missing"), ("tokenizer.json", "cut short")])
def test_a_damaged_export_falls_back_to_torch_or_says_so(
    exported: Path, toy_model: str, tmp_path: Path, file_name: str, damage: str
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(exported, damaged)
    file = damaged / file_name
    if damage == "missing":
        file.unlink()
    else:
        file.write_bytes(file.read_bytes()[:1000])
    assert Embedder(toy_model, "cpu", "fp32", runtime="auto", onnx=str(damaged)).onnx is None
    with pytest.raises(ModelError, match="cannot be read"):
        Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(damaged))


def test_a_tokenizer_garbled_in_place_is_named_at_the_first_text(exported: Path, toy_model: str, tmp_path: Path) -> None:
    garbled = tmp_path / "garbled"
    shutil.copytree(exported, garbled)
    tokenizer = garbled / "tokenizer.json"
    tokenizer.write_bytes(b"{" * tokenizer.stat().st_size)  # its recorded size, so only reading it finds out
    embedder = Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(garbled))
    with pytest.raises(ModelError, match="tokenizer .* cannot be read .* export-onnx"):
        embedder.encode_text("a red circle")
    assert embedder.encode_images([Image.new("RGB", (64, 64), "red")]).shape == (1, embedder.dimension)


def test_a_model_that_is_not_a_clip_folder_is_not_exported(toy_multilingual: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot be exported"):
        export(toy_multilingual, tmp_path / "out")


def test_the_command_exports_a_catalogs_models(shared_catalog: Path, tmp_path: Path) -> None:
    output = run_cli("export-onnx", shared_catalog, "--to", tmp_path / "out")
    assert "exported to" in output and (tmp_path / "out" / "export.json").exists()
    run_cli("export-onnx", expect=2)


# The multilingual text model (a sentence-transformers model, not CLIP) -----------------------------
@pytest.fixture(scope="module")
def text_exported(tmp_path_factory: pytest.TempPathFactory, toy_multilingual: str) -> Path:
    return export_text(toy_multilingual, tmp_path_factory.mktemp("onnx-text") / "toy-multilingual")


@pytest.fixture(scope="module")
def ml_catalog(tmp_path_factory: pytest.TempPathFactory, world: Path, toy_model: str, toy_multilingual: str) -> Path:
    """The toy world built with the toy multilingual model recorded beside the toy CLIP."""
    folder = tmp_path_factory.mktemp("onnx-multilingual")
    shutil.copytree(world, folder / "images")
    build(folder / "photos.db", folder / "images",
          BuildOptions(ModelChoice(model=toy_model, multilingual_model=toy_multilingual), batch_size=16))
    return folder / "photos.db"


def test_a_text_models_export_gives_sentence_transformers_vectors(text_exported: Path, toy_multilingual: str) -> None:
    facts = json.loads((text_exported / "export.json").read_text())
    assert facts["kind"] == "text" and facts["worst_cosine"] >= FAITHFUL
    on_onnx = Embedder(toy_multilingual, "cpu", "fp32", runtime="onnx", onnx=str(text_exported))
    on_torch = Embedder(toy_multilingual, "cpu", "fp32", runtime="torch")
    assert isinstance(on_onnx.onnx, OnnxText) and on_onnx.modalities == ["text"] and on_torch.onnx is None
    texts = ["一个红色的圆", "синий квадрат", "a red circle", "红" * 500]  # the last is cut where the model cuts it
    assert np.min(np.sum(on_onnx.encode_texts(texts) * on_torch.encode_texts(texts), axis=1)) >= FAITHFUL
    with pytest.raises(ModelError, match="cannot encode images"):
        on_onnx.encode_images([Image.new("RGB", (8, 8))])


@pytest.mark.parametrize(("model", "export_fixture", "text_threads"), [
    ("toy_model", "exported", 0),  # 0: a thread per core
    ("toy_multilingual", "text_exported", 0),
    ("toy_model", "int8_exported", 1),  # the 8-bit text graph: one thread
])
def test_8_bit_text_graphs_run_on_one_thread_float32_ones_and_pictures_on_every_core(
    model: str, export_fixture: str, text_threads: int, request: pytest.FixtureRequest
) -> None:
    folder = request.getfixturevalue(export_fixture)
    embedder = Embedder(request.getfixturevalue(model), "cpu", "fp32", runtime="onnx", onnx=str(folder))
    assert embedder.onnx is not None
    assert (embedder.onnx.text_graph == "text.int8.onnx") == (export_fixture == "int8_exported")
    embedder.encode_texts(["a red circle"])
    opened = {"text": embedder.onnx.sessions.opening(embedder.onnx.text_graph).result()}
    if model == "toy_model":
        embedder.encode_images([Image.new("RGB", (8, 8))])
        opened["image"] = embedder.onnx.sessions.opening("image.onnx").result()
    threads = {graph: session.get_session_options().intra_op_num_threads for graph, session in opened.items()}
    assert threads == {"text": text_threads, **({"image": 0} if model == "toy_model" else {})}


def test_an_export_is_found_only_for_its_kind_of_model(
    exported: Path, text_exported: Path, toy_model: str, toy_multilingual: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "empty-cache"))
    assert find_export(toy_model, text_exported) is None and find_text_export(toy_multilingual, exported) is None
    beside = tmp_path / "clip-onnx"  # what export-onnx CATALOG --to writes: the text model in a subfolder
    shutil.copytree(exported, beside)
    shutil.copytree(text_exported, beside / TEXT_SUBFOLDER)
    assert find_export(toy_model, beside) == beside
    assert find_text_export(toy_multilingual, beside) == beside / TEXT_SUBFOLDER


def test_a_damaged_text_export_falls_back_to_torch_or_says_so(text_exported: Path, toy_multilingual: str, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(text_exported, damaged)
    (damaged / "tokenizer.json").write_text("{not json")
    assert Embedder(toy_multilingual, "cpu", "fp32", runtime="auto", onnx=str(damaged)).onnx is None
    with pytest.raises(ModelError, match="cannot be read"):
        Embedder(toy_multilingual, "cpu", "fp32", runtime="onnx", onnx=str(damaged))


@pytest.mark.slow
@pytest.mark.parametrize("query", ["一个红色的圆", "синий квадрат", "a red circle + 绿色"])
def test_a_catalogs_exports_answer_other_languages_without_torch(ml_catalog: Path, tmp_path: Path, query: str) -> None:
    output = run_cli("export-onnx", ml_catalog, "--to", tmp_path / "clip-onnx")
    assert output.count("exported to") == 2 and (tmp_path / "clip-onnx" / TEXT_SUBFOLDER / "export.json").exists()
    args = ["search", str(ml_catalog), query, "--onnx", str(tmp_path / "clip-onnx"), "--json"]
    found = run_search(args, tmp_path / "empty-cache")
    assert found.returncode == 0, found.stderr
    assert found.stderr.strip().splitlines()[-1] == "False"  # torch never imported
    on_torch = run_search([*args[:-1], "--runtime", "torch", "--json"], tmp_path / "empty-cache")
    assert [hit["id"] for hit in json.loads(found.stdout)] == [hit["id"] for hit in json.loads(on_torch.stdout)]


def test_a_multilingual_model_not_on_this_machine_leaves_the_clip_export_made(shared_catalog: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "photos.db"
    shutil.copyfile(shared_catalog, catalog)
    with Catalog(catalog, write=True) as opened:
        opened.set_meta(multilingual_model=str(tmp_path / "no-such-model"))
    result = CliRunner().invoke(cli, ["export-onnx", str(catalog), "--to", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "no-such-model: not exported" in result.output and "terms it reads need torch" in result.output
    assert (tmp_path / "out" / "export.json").exists() and not (tmp_path / "out" / TEXT_SUBFOLDER).exists()


@pytest.mark.datasette
@pytest.mark.asyncio
async def test_the_plugin_answers_on_onnx_runtime_when_told_to(exported: Path, shared_catalog: Path, toy_model: str) -> None:
    from datasette.app import Datasette

    from .test_plugin import DATASETTE_1

    config = {"plugins": {"datasette-imgsearch": {"model": toy_model, "runtime": "onnx", "onnx": str(exported)}}}
    ds = Datasette([str(shared_catalog)], **({"config": config} if DATASETTE_1 else {"metadata": config}))
    await ds.invoke_startup()
    data = (await ds.client.get("/photos/images/-/imgsearch.json", params={"q": "a red circle", "k": "5"})).json()
    assert data["ok"] and all(row["name"].startswith("red-circle") for row in data["results"])


def test_an_unknown_runtime_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="runtime setting must be one of auto, torch, onnx"):
        Settings(ModelChoice(runtime="tensorflow"))


@pytest.mark.parametrize(("runtime", "native_bf16", "precision", "engine", "expected"), [
    ("auto", False, "auto", "local", "onnx"),  # a CPU without native bfloat16: ONNX Runtime's fp32 is faster
    ("auto", True, "auto", "local", "torch"),  # one with it: torch's bf16
    ("auto", False, "bf16", "local", "torch"),  # bf16 asked for: torch
    ("auto", False, "auto", "ray", "torch"),  # Ray's workers run torch
    ("torch", False, "auto", "local", "torch"),
    ("onnx", True, "auto", "local", "onnx"),
])
def test_a_build_runs_on_the_faster_runtime_for_its_cpu_unless_told(
    monkeypatch: pytest.MonkeyPatch, toy_model: str, runtime: str, native_bf16: bool, precision: str, engine: str,
    expected: str,
) -> None:
    monkeypatch.setattr(build_model, "cpu_computes_bf16", lambda: native_bf16)
    options = BuildOptions(ModelChoice(model=toy_model, runtime=runtime, precision=precision, device="cpu"), engine=engine)
    assert build_runtime(options, toy_model) == expected


def test_a_build_on_onnx_runtime_exports_the_model_and_gives_torchs_vectors(
    monkeypatch: pytest.MonkeyPatch, toy_model: str, world: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "cache"))  # the export lands here, not in the session's cache
    on_onnx = build(tmp_path / "onnx.db", world, BuildOptions(ModelChoice(model=toy_model, runtime="onnx")))
    on_torch = build(tmp_path / "torch.db", world, BuildOptions(ModelChoice(model=toy_model, runtime="torch",
                                                                            precision="fp32")))
    assert on_onnx.runtime == "images embedded on ONNX Runtime in fp32" and "torch on cpu in fp32" in on_torch.runtime
    assert find_export(toy_model) is not None
    vectors = []
    for name in ("onnx.db", "torch.db"):
        with Catalog(tmp_path / name) as catalog:
            vectors.append(dict(catalog.db.execute("select path, embedding from images").fetchall()))
            assert catalog.meta("runtime") == name.split(".")[0]
    for path, blob in vectors[0].items():
        assert float(np.dot(from_blob(blob), from_blob(vectors[1][path]))) >= FAITHFUL


# An 8-bit text graph, asked for with export-onnx --int8-text ----------------------------------------
@pytest.fixture(scope="module")
def int8_exported(tmp_path_factory: pytest.TempPathFactory, toy_model: str) -> Path:
    return export(toy_model, tmp_path_factory.mktemp("onnx-int8") / "toy-clip", int8_text=True)


def test_an_8bit_text_graph_is_checked_recorded_and_what_text_queries_run_on(int8_exported: Path, toy_model: str) -> None:
    facts = json.loads((int8_exported / "export.json").read_text())
    assert facts[int8text.FACT]["worst_cosine"] >= int8text.AGREEMENT
    assert {int8text.INT8_GRAPH, f"{int8text.INT8_GRAPH}.data"} <= set(facts["sizes"])  # a cut-off copy is found
    on_int8 = Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(int8_exported))
    on_torch = Embedder(toy_model, "cpu", "fp32", runtime="torch")
    assert on_int8.onnx is not None and on_int8.onnx.text_graph == int8text.INT8_GRAPH
    texts = ["a red circle", "something yellow", "a purple star on a hill", "a" * 300]
    assert np.min(np.sum(on_int8.encode_texts(texts) * on_torch.encode_texts(texts), axis=1)) >= int8text.AGREEMENT
    on_float = Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(exported_again(int8_exported)))
    assert np.abs(on_int8.encode_texts(texts) - on_float.encode_texts(texts)).max() > 1e-5  # close, but not the same
    picture = [Image.new("RGB", (64, 64), "red")]  # pictures stay on the float32 image tower
    assert np.array_equal(on_int8.encode_images(picture), on_float.encode_images(picture))
    assert on_int8.identity != on_float.identity  # a cache of the float32 graph's vectors is never read for the 8-bit one


@pytest.mark.parametrize("signed", [True, False])
def test_an_8bit_graphs_weights_are_signed_only_where_this_cpu_multiplies_them_exactly(
    toy_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signed: bool
) -> None:
    onnx = pytest.importorskip("onnx")
    if signed and not int8text.cpu_multiplies_signed_bytes():
        pytest.skip("this CPU's products of signed bytes are not exact: its exports have unsigned weights")
    monkeypatch.setattr(int8text, "cpu_multiplies_signed_bytes", lambda: signed)
    folder = export(toy_model, tmp_path / "out", int8_text=True)
    assert json.loads((folder / "export.json").read_text())[int8text.FACT]["weights"] == ("signed" if signed else "unsigned")
    graph = onnx.load(str(folder / int8text.INT8_GRAPH), load_external_data=False).graph
    initializers = {tensor.name: tensor.data_type for tensor in graph.initializer}
    products = ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")  # as ONNX Runtime's fusions leave them
    weight_types = {initializers[node.input[1]] for node in graph.node if node.op_type in products}
    assert weight_types == {onnx.TensorProto.INT8 if signed else onnx.TensorProto.UINT8}
    on_int8 = Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(folder))
    on_torch = Embedder(toy_model, "cpu", "fp32", runtime="torch")
    texts = ["a red circle", "something yellow", "a purple star on a hill"]
    assert np.min(np.sum(on_int8.encode_texts(texts) * on_torch.encode_texts(texts), axis=1)) >= int8text.AGREEMENT


@pytest.mark.parametrize("weights, cpu_exact, graph", [
    ("signed", True, int8text.INT8_GRAPH),
    ("signed", False, int8text.FLOAT_GRAPH),  # not checked for this CPU: the float32 graph answers
    ("unsigned", False, int8text.INT8_GRAPH),
    (None, False, int8text.INT8_GRAPH),  # made before the weights were recorded: unsigned
])
def test_a_signed_8bit_graph_answers_only_where_the_cpu_multiplies_signed_bytes_exactly(
    int8_exported: Path, toy_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    weights: str | None, cpu_exact: bool, graph: str,
) -> None:
    folder = tmp_path / "export"
    shutil.copytree(int8_exported, folder)
    facts = json.loads((folder / "export.json").read_text())
    facts[int8text.FACT].pop("weights")
    if weights:
        facts[int8text.FACT]["weights"] = weights
    (folder / "export.json").write_text(json.dumps(facts))
    monkeypatch.setattr(int8text, "cpu_multiplies_signed_bytes", lambda: cpu_exact)
    embedder = Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(folder))
    assert embedder.onnx is not None and embedder.onnx.text_graph == graph
    on_torch = Embedder(toy_model, "cpu", "fp32", runtime="torch")
    assert float(embedder.encode_text("a red circle") @ on_torch.encode_text("a red circle")) >= int8text.AGREEMENT


def exported_again(export_folder: Path) -> Path:
    """A copy of ``export_folder`` as an export without an 8-bit text graph would be."""
    plain = export_folder.parent / "plain"
    if not plain.exists():
        shutil.copytree(export_folder, plain)
        facts = json.loads((plain / "export.json").read_text())
        (plain / "export.json").write_text(json.dumps({key: value for key, value in facts.items() if key != int8text.FACT}))
    return plain


@pytest.mark.parametrize("query", ["a red circle", "something blue - blue + green", "a yellow square"])
def test_a_search_on_the_8bit_text_graph_finds_what_torch_finds(
    int8_exported: Path, shared_catalog: Path, toy_model: str, query: str
) -> None:
    on_int8 = Searcher(shared_catalog, ModelChoice(model=toy_model, runtime="onnx", onnx=str(int8_exported), precision="fp32"))
    on_torch = Searcher(shared_catalog, ModelChoice(model=toy_model, runtime="torch", precision="fp32"))
    assert {hit.id for hit in on_int8.search(query, 5)} == {hit.id for hit in on_torch.search(query, 5)}


def test_exporting_again_without_int8_text_takes_the_8bit_graph_away(int8_exported: Path, toy_model: str, tmp_path: Path) -> None:
    folder = tmp_path / "again"
    shutil.copytree(int8_exported, folder)
    export(toy_model, folder)
    assert not any((folder / name).exists() for name in int8text.graph_files())
    assert int8text.FACT not in json.loads((folder / "export.json").read_text())
    assert Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(folder)).onnx.text_graph == int8text.FLOAT_GRAPH


@pytest.mark.parametrize("file_name, damage", [("text.int8.onnx", "cut short"), ("text.int8.onnx.data", "missing")])
def test_a_damaged_8bit_text_graph_falls_back_to_torch_or_says_so(
    int8_exported: Path, toy_model: str, tmp_path: Path, file_name: str, damage: str
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(int8_exported, damaged)
    if damage == "missing":
        (damaged / file_name).unlink()
    else:
        (damaged / file_name).write_bytes((damaged / file_name).read_bytes()[:1000])
    assert Embedder(toy_model, "cpu", "fp32", runtime="auto", onnx=str(damaged)).onnx is None
    with pytest.raises(ModelError, match="cannot be read"):
        Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(damaged))


def test_an_8bit_text_graph_that_drifts_too_far_is_refused_and_the_float32_export_kept(
    toy_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(int8text, "AGREEMENT", 1.0 + 1e-6)  # no 8-bit graph reaches it
    with pytest.raises(ModelError, match="8-bit text graph drifts .* the float32 export is in place"):
        export(toy_model, tmp_path / "out", int8_text=True)
    assert not any((tmp_path / "out" / name).exists() for name in int8text.graph_files())
    assert find_export(toy_model, tmp_path / "out") == tmp_path / "out"
    assert Embedder(toy_model, "cpu", "fp32", runtime="onnx", onnx=str(tmp_path / "out")).onnx.text_graph == int8text.FLOAT_GRAPH


def test_a_text_models_8bit_graph_gives_vectors_close_to_sentence_transformers(toy_multilingual: str, tmp_path: Path) -> None:
    folder = export_text(toy_multilingual, tmp_path / "toy-multilingual", int8_text=True)
    assert json.loads((folder / "export.json").read_text())[int8text.FACT]["worst_cosine"] >= int8text.AGREEMENT
    on_int8 = Embedder(toy_multilingual, "cpu", "fp32", runtime="onnx", onnx=str(folder))
    on_torch = Embedder(toy_multilingual, "cpu", "fp32", runtime="torch")
    assert isinstance(on_int8.onnx, OnnxText) and on_int8.onnx.text_graph == int8text.INT8_GRAPH
    texts = ["一个红色的圆", "синий квадрат", "a red circle"]
    assert np.min(np.sum(on_int8.encode_texts(texts) * on_torch.encode_texts(texts), axis=1)) >= int8text.AGREEMENT


@pytest.mark.slow
def test_the_command_makes_8bit_text_graphs_that_a_cold_search_runs_without_torch(ml_catalog: Path, tmp_path: Path) -> None:
    output = run_cli("export-onnx", ml_catalog, "--to", tmp_path / "clip-onnx", "--int8-text")
    assert output.count("with an 8-bit text graph") == 2
    for folder in (tmp_path / "clip-onnx", tmp_path / "clip-onnx" / TEXT_SUBFOLDER):
        assert (folder / int8text.INT8_GRAPH).exists()
    args = ["search", str(ml_catalog), "a red circle + 红色的圆", "--onnx", str(tmp_path / "clip-onnx"), "--json", "-k", "5"]
    found = run_search(args, tmp_path / "empty-cache")
    assert found.returncode == 0, found.stderr
    assert found.stderr.strip().splitlines()[-1] == "False"  # torch never imported
    on_torch = run_search([*args[:-3], "--runtime", "torch", "--json", "-k", "5"], tmp_path / "empty-cache")
    assert {hit["id"] for hit in json.loads(found.stdout)} == {hit["id"] for hit in json.loads(on_torch.stdout)}
