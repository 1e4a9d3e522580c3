"""The query language and the ranking shared by the CLI, SQL, the page and JSON."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datasette_imgsearch.catalog.schema import from_blob
from datasette_imgsearch.errors import ModelError, QueryError
from datasette_imgsearch.search.arguments import check_k
from datasette_imgsearch.search.parse import Term, parse
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.vectors import store
from datasette_imgsearch.vectors.ranking import BLOCK, best_positions, top_k

from .conftest import run_cli


@pytest.mark.parametrize(
    "query,terms",
    [
        ("a red circle", [Term(1.0, text="a red circle")]),
        ("  padded  ", [Term(1.0, text="padded")]),
        ("row:12", [Term(1.0, row=12)]),
        ("ROW: 7", [Term(1.0, row=7)]),
        ("2:dog + beach - night", [Term(2.0, text="dog"), Term(1.0, text="beach"), Term(-1.0, text="night")]),
        ("red circle - red + blue", [Term(1.0, text="red circle"), Term(-1.0, text="red"), Term(1.0, text="blue")]),
        ("0.5:row:3 + sea", [Term(0.5, row=3), Term(1.0, text="sea")]),
        ("t-shirt + x+y", [Term(1.0, text="t-shirt"), Term(1.0, text="x+y")]),
        ("- night", [Term(-1.0, text="night")]),
        ("+ dog", [Term(1.0, text="dog")]),
        ("a photo of 2 dogs", [Term(1.0, text="a photo of 2 dogs")]),
    ],
)
def test_queries_parse_into_weighted_terms(query: str, terms: list[Term]) -> None:
    assert parse(query) == terms


@pytest.mark.parametrize(
    "query,message",
    [
        ("", "the query is empty"),
        ("   ", "the query is empty"),
        ("dog +", "has no term after it"),
        ("dog - + cat", "has no term after it"),
        ("row:abc", "row: takes a row id"),
        ("2:", "has no term after it"),
        ("x" * 1001, "the limit is 1000"),
        (" + ".join(["a"] * 17), "the limit is 16"),
        (None, "the query must be text"),
        (42, "the query must be text"),
    ],
)
def test_bad_queries_say_what_is_wrong(query: object, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse(query)  # type: ignore[arg-type]


@pytest.mark.parametrize("k,expected", [(1, 1), ("5", 5), (1000, 1000)])
def test_k_accepts_whole_numbers_in_range(k: object, expected: int) -> None:
    assert check_k(k, 1000) == expected


@pytest.mark.parametrize("k", [0, -3, 1001, "ten", None, 2.5j])
def test_k_refuses_anything_else(k: object) -> None:
    with pytest.raises(QueryError, match="k must be"):
        check_k(k, 1000)


def test_top_k_orders_by_score_then_id_and_honours_exclusions_and_min_score() -> None:
    ids = np.array([10, 11, 12, 13, 14])
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.7], dtype=np.float32)
    best = top_k(ids, scores, 3, set(), None)
    assert [h.id for h in best] == [11, 14, 10]
    assert [h.score for h in best] == pytest.approx([0.9, 0.7, 0.5])
    assert [h.id for h in top_k(ids, scores, 3, {11}, None)] == [14, 10, 12]
    assert [h.id for h in top_k(ids, scores, 10, set(), 0.6)] == [11, 14]
    assert top_k(ids[:0], scores[:0], 3, set(), None) == []


def scores_shaped(shape: str, size: int) -> np.ndarray:
    rng = np.random.default_rng(size)
    values = rng.normal(size=size).astype(np.float32)
    if shape == "ties":
        values = np.round(values * 2) / 2
    elif shape == "hidden blocks":
        values[: size // 2] = -np.inf
    elif shape == "NaN blocks":
        values[: size // 2] = np.nan
        values[size // 2 :: 3] = np.nan
    elif shape == "all NaN but a few":
        values[:] = np.nan
        values[::97] = rng.normal(size=len(values[::97]))
    elif shape == "ascending":
        values = np.sort(values)
    return values


@pytest.mark.parametrize("shape", ["random", "ties", "hidden blocks", "NaN blocks", "all NaN but a few", "ascending"])
@pytest.mark.parametrize("size", [1, BLOCK - 1, 20 * BLOCK, 20 * BLOCK + 77, 100_000])
@pytest.mark.parametrize("count", [1, 10, 11 * BLOCK])
def test_best_positions_are_the_largest_values_a_nan_counting_as_the_smallest(shape: str, size: int, count: int) -> None:
    values = scores_shaped(shape, size)
    count = min(count, size)
    found = best_positions(values, count)
    assert len(set(found.tolist())) == count
    expected = -np.sort(-values)[:count]  # numpy sorts NaN last
    assert np.array_equal(np.sort(values[found]), np.sort(expected), equal_nan=True)


def stored(db: Path) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    conn = sqlite3.connect(db)
    rows = conn.execute("select id, path, embedding from images order by id").fetchall()
    conn.close()
    ids = np.array([r[0] for r in rows])
    return ids, np.stack([from_blob(r[2]) for r in rows]), {r[0]: r[1] for r in rows}


@pytest.mark.parametrize("query", ["a red circle", "something blue", "2:a triangle + green - yellow"])
def test_search_json_ranks_exactly_as_brute_force_cosine(shared_catalog: Path, query: str) -> None:
    searcher = Searcher(shared_catalog)
    vector, _ = searcher.query_vector(query)
    ids, matrix, paths = stored(shared_catalog)
    scores = matrix @ vector
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))[:10]
    output = json.loads(run_cli("search", shared_catalog, query, "-k", "10", "--json"))
    assert [hit["id"] for hit in output] == [int(ids[i]) for i in order]
    assert [hit["path"] for hit in output] == [paths[int(ids[i])] for i in order]
    assert [hit["score"] for hit in output] == pytest.approx([float(scores[i]) for i in order], abs=1e-5)


def test_an_image_query_returns_the_image_itself_first(shared_catalog: Path) -> None:
    folder = shared_catalog.parent / "images"
    for name in sorted(p.name for p in folder.iterdir())[:3]:
        output = json.loads(run_cli("search", shared_catalog, "--image", folder / name, "-k", "3", "--json"))
        assert output[0]["path"] == name
        assert output[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_row_queries_leave_the_row_out(shared_catalog: Path) -> None:
    ids, _, _ = stored(shared_catalog)
    output = json.loads(run_cli("search", shared_catalog, f"row:{ids[0]}", "-k", "59", "--json"))
    assert len(output) == 59 and int(ids[0]) not in [hit["id"] for hit in output]


@pytest.mark.parametrize(
    "args,message",
    [
        (["row:999999"], "row:999999 is not in the catalog"),
        (["red - red"], "cancel each other out"),
        (["red", "-k", "0"], "k must be between 1 and 10000"),
        (["--image", "missing.jpg"], "unreadable"),
    ],
)
def test_search_errors_are_one_line(shared_catalog: Path, args: list[str], message: str) -> None:
    output = run_cli("search", shared_catalog, *args, expect=1)
    assert message in output and "Traceback" not in output


def test_search_by_a_file_that_is_not_an_image(shared_catalog: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    assert "not a recognised image format" in run_cli("search", shared_catalog, "--image", fake, expect=1)


def test_search_needs_a_query_or_an_image(shared_catalog: Path) -> None:
    assert "give either a QUERY or --image FILE" in run_cli("search", shared_catalog, expect=2)


def test_min_score_leaves_out_weak_matches(shared_catalog: Path) -> None:
    everything = json.loads(run_cli("search", shared_catalog, "a red circle", "-k", "60", "--json"))
    threshold = everything[4]["score"] - 1e-6  # scores are printed rounded to six places
    strong = json.loads(run_cli("search", shared_catalog, "a red circle", "-k", "60", "--min-score", threshold, "--json"))
    assert [h["id"] for h in strong] == [h["id"] for h in everything if h["score"] >= threshold]


def test_the_bfloat16_first_pass_never_changes_the_exact_top_k() -> None:
    import torch

    from datasette_imgsearch.vectors.ranking import FIRST_PASS_MARGIN, exact_scores, rescored_top_k, scores_of

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(50, 64)).astype(np.float32)
    matrix = centres[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 64)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = np.arange(100, 20_100)
    rough_table = torch.from_numpy(matrix).bfloat16()
    for seed in range(25):
        vector = matrix[seed * 7] + 0.05 * np.random.default_rng(seed).normal(size=64).astype(np.float32)
        vector /= np.linalg.norm(vector)
        rough = exact_scores(rough_table, [vector])[0]
        exact = scores_of(matrix, vector)
        assert float(np.abs(rough - exact).max()) < FIRST_PASS_MARGIN
        for k, exclude in ((1, set()), (10, set()), (50, {int(ids[seed * 7])})):
            found = rescored_top_k(ids, matrix, vector, rough, FIRST_PASS_MARGIN, k, exclude, None)
            assert [h.id for h in found] == [h.id for h in top_k(ids, exact, k, exclude, None)]


@pytest.mark.parametrize("queries", [1, 4])
@pytest.mark.parametrize("bfloat16_batches", [True, False], ids=["native bfloat16", "emulated bfloat16"])
def test_a_shared_pass_reads_the_first_pass_unless_several_queries_would_run_emulated_bfloat16(
    bfloat16_batches: bool, queries: int
) -> None:
    import torch

    from datasette_imgsearch.vectors.ranking import FIRST_PASS_MARGIN, score_batch

    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(2_000, 64)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    vectors = [matrix[i * 11] for i in range(queries)]
    rows = score_batch([(vector, matrix, torch.from_numpy(matrix).bfloat16()) for vector in vectors], bfloat16_batches)
    errors = [float(np.abs(scores - matrix @ vector).max()) for (scores, _), vector in zip(rows, vectors)]
    assert max(errors) < FIRST_PASS_MARGIN
    in_float32 = queries > 1 and not bfloat16_batches
    assert all((error < 1e-5) == in_float32 for error in errors), errors
    assert [margin for _, margin in rows] == [0.0 if in_float32 else FIRST_PASS_MARGIN] * queries


def test_a_large_catalog_searches_through_the_first_pass_and_ranks_exactly(shared_catalog: Path) -> None:
    ids, matrix, _ = stored(shared_catalog)
    searcher = Searcher(shared_catalog)
    searcher.store.first_pass_rows = 1  # as if it held millions of rows
    vector, _ = searcher.query_vector("a red circle")
    hits = searcher.store.search(vector, 10, set(), None)
    assert searcher.store.current().base.rough is not None
    expected = top_k(ids, matrix @ vector, 10, set(), None)
    assert [h.id for h in hits] == [h.id for h in expected]
    assert [h.score for h in hits] == pytest.approx([h.score for h in expected], abs=1e-5)


@pytest.mark.parametrize("native,rows", [(True, store.NATIVE_FIRST_PASS_ROWS), (False, store.FIRST_PASS_ROWS)],
                         ids=["native bfloat16", "emulated bfloat16"])
def test_the_first_pass_starts_at_fewer_rows_where_the_cpu_computes_bfloat16(
    shared_catalog: Path, monkeypatch: pytest.MonkeyPatch, native: bool, rows: int
) -> None:
    monkeypatch.setattr(store, "cpu_computes_bf16", lambda: native)
    assert store.VectorStore(shared_catalog).first_pass_rows == rows


def test_a_query_never_mixes_two_models_when_the_catalog_switches_under_it(shared_catalog: Path) -> None:
    import dataclasses

    searcher = Searcher(shared_catalog)
    loaded = searcher.store.current()
    # as if a re-embed switched models mid-query
    switched = dataclasses.replace(loaded, facts=dataclasses.replace(loaded.facts, dimension=16))
    with pytest.raises(QueryError, match="switched to another model while this query ran"):
        searcher.query_vector("row:3 + a red circle", switched)
    with pytest.raises(ModelError, match="gives 32-dimensional vectors"):
        searcher.text_vector("a brand new caption", switched)


@pytest.mark.parametrize("queries", [1, 3, 8])
def test_onnx_runtime_scores_as_numpy_does(queries: int) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from datasette_imgsearch.vectors.onnxproduct import onnx_scores

    rng = np.random.default_rng(queries)
    matrix = rng.normal(size=(3_000, 64)).astype(np.float32)
    vectors = [rng.normal(size=64).astype(np.float32) for _ in range(queries)]
    scores = onnx_scores(matrix, vectors)
    assert scores is not None and scores.shape == (queries, 3_000)
    assert np.allclose(scores, np.stack(vectors) @ matrix.T, atol=1e-4)


def test_the_shipped_product_graph_is_the_one_onnx_makes() -> None:
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    from datasette_imgsearch.vectors.onnxproduct import GRAPH, product_graph

    assert GRAPH.read_bytes() == product_graph()


SCORES_WITHOUT_TORCH = """
import sys
import numpy as np
{hide}
from datasette_imgsearch.vectors.onnxproduct import product_session
from datasette_imgsearch.vectors.ranking import exact_scores
matrix = np.random.default_rng(0).normal(size=(500, 32)).astype(np.float32)
scores = exact_scores(matrix, [matrix[3], matrix[7]])
assert np.allclose(scores, matrix[[3, 7]] @ matrix.T, atol=1e-4) and "torch" not in sys.modules
print("onnx" if product_session() is not None else "numpy")
"""


@pytest.mark.slow
@pytest.mark.parametrize("onnxruntime_there, scored_by", [(True, "onnx"), (False, "numpy")])
def test_a_process_without_torch_scores_on_onnx_runtime_or_else_numpy(onnxruntime_there: bool, scored_by: str) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    hide = "" if onnxruntime_there else "sys.modules['onnxruntime'] = None  # as if not installed"
    found = subprocess.run([sys.executable, "-c", SCORES_WITHOUT_TORCH.format(hide=hide)], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == scored_by


def unit_rows(
    rows: int, width: int, seed: int, outliers: bool = False, clustered: bool = False, dead: bool = False
) -> np.ndarray:
    """Unit vectors: plain random ones; with a few dimensions much larger than the rest (as CLIP's have);
    in tight clusters, where many rows score close to the k-th best; or with a dimension always zero."""
    rng = np.random.default_rng(seed)
    if clustered:
        centres = rng.normal(size=(20, width))
        matrix = centres[rng.integers(0, 20, rows)] + 0.05 * rng.normal(size=(rows, width))
    else:
        matrix = rng.normal(size=(rows, width))
    if outliers:
        matrix[:, :3] *= 12
    if dead:
        matrix[:, 5] = 0
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


INT8_CASES = {"random": {}, "outlier dimensions": {"outliers": True}, "clustered": {"clustered": True},
              "a dimension always zero": {"dead": True}}


@pytest.mark.parametrize("query", [
    "one dimension far above the rest", "every dimension alike", "negative", "a rounding error left", "zero",
])
def test_a_querys_bytes_keep_any_pair_of_products_within_16_bits(query: str) -> None:
    """ONNX Runtime's x86 kernels without VNNI or AMX add each pair of byte products (the query's unsigned
    bytes times the table's signed codes, at most 127 either way) in 16 bits before widening: bytes above
    127 saturate there, and the scores leave their bound. Seven bits keep any pair within 32,767."""
    from datasette_imgsearch.vectors.int8pass import ZERO_POINT, query_codes

    values = {"one dimension far above the rest": [40.0] + [0.01] * 511, "every dimension alike": [1.0] * 512,
              "negative": [-3.0, 2.0, -1.0] * 170 + [-3.0, 2.0], "a rounding error left": [0.49, -0.51] * 256,
              "zero": [0.0] * 512}[query]
    codes, step = query_codes(np.array([values]))
    as_bytes = codes + ZERO_POINT
    assert as_bytes.min() >= 0
    assert 2 * as_bytes.max() * 127 <= 2 ** 15 - 1
    assert np.abs(codes * step - values).max() <= step.max() / 2 + 1e-12  # and still the query, to half a step


@pytest.mark.parametrize("case", INT8_CASES)
@pytest.mark.parametrize("queries", [1, 5])
def test_an_8_bit_pass_stays_within_the_bound_it_gives(case: str, queries: int) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from datasette_imgsearch.vectors.int8pass import table_for

    matrix = unit_rows(5_000, 128, 1, **INT8_CASES[case])
    vectors = [matrix[i * 97] for i in range(queries)]
    table = table_for(matrix)
    assert table is not None
    rough, margins = table.scores(vectors)
    errors = np.abs(rough - np.stack(vectors) @ matrix.T).max(axis=1)
    assert (errors < margins).all(), (errors, margins)
    assert (margins < 0.02).all()  # as tight as a bfloat16 pass's: few rows are left to re-score


@pytest.mark.parametrize("case", INT8_CASES)
def test_codes_packed_in_a_session_of_their_own_score_exactly_as_the_shipped_product(case: str) -> None:
    """Packed (the onnx package there) or not (a serving install without it), the integer products are
    the same whole numbers, so the rough scores and their bounds are the same to the bit."""
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    from datasette_imgsearch.vectors.int8pass import table_for

    matrix = unit_rows(3_000, 96, 5, **INT8_CASES[case])
    table = table_for(matrix)
    assert table is not None and not table.packed
    vectors = [matrix[i * 31] for i in range(4)]
    shipped = table.scores(vectors)
    assert table.pack()
    for found, expected in zip(table.scores(vectors), shipped):
        assert np.array_equal(found, expected)


def test_codes_are_packed_in_the_background_from_a_tables_second_pass() -> None:
    """A one-off search makes one pass and never pays for packing (importing onnx takes 0.6 s); a server
    makes many."""
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    from datasette_imgsearch.vectors.int8pass import table_for

    matrix = unit_rows(2_000, 32, 6)
    table = table_for(matrix)
    assert table is not None
    table.scores([matrix[0]])
    assert table.packer is None and not table.packed
    rough, margins = table.scores([matrix[1]])
    assert table.packer is not None
    table.packer.join(30)
    assert table.packed and all(np.array_equal(a, b) for a, b in zip(table.scores([matrix[1]]), (rough, margins)))


@pytest.mark.parametrize("case", INT8_CASES)
def test_an_8_bit_first_pass_never_changes_the_exact_top_k(case: str) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from datasette_imgsearch.vectors.int8pass import table_for
    from datasette_imgsearch.vectors.ranking import rescored_top_k, score_batch, scores_of

    matrix = unit_rows(20_000, 64, 3, **INT8_CASES[case])
    ids = np.arange(100, 20_100)
    table = table_for(matrix)
    assert table is not None
    hidden = np.arange(0, 20_000, 7)  # rows a later change hides: -inf in the pass
    for seed in range(10):
        vector = matrix[seed * 7 + 1] + 0.05 * np.random.default_rng(seed).normal(size=64).astype(np.float32)
        vector /= np.linalg.norm(vector)
        [(rough, margin)] = score_batch([(vector, matrix, table)])
        exact = scores_of(matrix, vector)
        rough[hidden], exact[hidden] = -np.inf, -np.inf
        for k, exclude in ((1, set()), (10, set()), (50, {int(ids[seed * 7 + 1])})):
            found = rescored_top_k(ids, matrix, vector, rough, margin, k, exclude, None)
            assert [h.id for h in found] == [h.id for h in top_k(ids, exact, k, exclude, None)]


@pytest.mark.parametrize("damage", [np.nan, np.inf])
def test_no_8_bit_codes_are_made_of_a_matrix_with_a_damaged_row(damage: float) -> None:
    from datasette_imgsearch.vectors.int8pass import table_for

    matrix = unit_rows(3_000, 32, 4)
    matrix[1_234, 7] = damage  # no scale or bound could be worked out: the float32 pass ranks it instead
    assert table_for(matrix) is None


def test_the_shipped_8_bit_product_graph_is_the_one_onnx_makes() -> None:
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    from datasette_imgsearch.vectors.int8pass import GRAPH, int8_product_graph

    assert GRAPH.read_bytes() == int8_product_graph()


STORE_WITHOUT_TORCH = """
import sys
import numpy as np
{hide}
from datasette_imgsearch.catalog.schema import from_blob
from datasette_imgsearch.vectors.ranking import top_k
from datasette_imgsearch.vectors.store import VectorStore
import sqlite3
store = VectorStore(sys.argv[1])
store.int8_pass_rows = 1  # as if it held millions of rows
rows = sqlite3.connect(sys.argv[1]).execute("select id, embedding from images order by id").fetchall()
ids = np.array([r[0] for r in rows]); matrix = np.stack([from_blob(r[1]) for r in rows])
for i in range(0, len(ids), 7):
    found = store.search(matrix[i], 10, {{int(ids[i])}}, None)
    assert [h.id for h in found] == [h.id for h in top_k(ids, matrix @ matrix[i], 10, {{int(ids[i])}}, None)]
    among = store.search(matrix[i], 5, set(), None, candidates=ids[1::2])  # a filter that passed half the rows
    assert [h.id for h in among] == [h.id for h in top_k(ids[1::2], matrix[1::2] @ matrix[i], 5, set(), None)]
assert "torch" not in sys.modules
rough = store.current().base.rough
if getattr(rough, "packer", None) is not None:
    rough.packer.join(30)
print(type(rough).__name__, getattr(rough, "packed", None))
"""


@pytest.mark.slow
@pytest.mark.parametrize("hidden, first_pass", [
    (None, "Int8Table True"),  # codes packed in a session of their own
    ("onnx", "Int8Table False"),  # a serving install without the onnx package: the shipped product
    ("onnxruntime", "NoneType None"),  # no ONNX Runtime: the float32 pass, in numpy
])
def test_a_process_without_torch_reads_8_bit_codes_first_and_ranks_exactly(
    shared_catalog: Path, hidden: str | None, first_pass: str
) -> None:
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    hide = f"sys.modules[{hidden!r}] = None  # as if not installed" if hidden else ""
    found = subprocess.run([sys.executable, "-c", STORE_WITHOUT_TORCH.format(hide=hide), str(shared_catalog)],
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == first_pass
