"""An 8-bit copy of a catalog's matrix that a process on ONNX Runtime scores first, and a bound on how
far its scores can be from the exact ones, so that re-scoring the rows within that bound in float32
(ranking.rescored_top_k) gives exactly the float32 top k.

A pass over 100,000 float32 vectors reads 200 MB; over their 8-bit codes, 51 MB, and ONNX Runtime's
integer product (MatMulInteger) scores one query in about 4 ms where its float32 MatMul takes 9 on two
AMD EPYC cores without native bfloat16 (docs/onnx.md). The codes are stored transposed (width x rows),
the layout ONNX Runtime's integer product is fast with for a few queries; the other took as long as
float32. From a table's second pass on (a process that searches more than once: a server, not a
one-off ``search``), the codes move into a session of their own, where ONNX Runtime packs them once
for its kernel instead of at every pass: 2.3 ms a pass over 100,000 rows instead of 4.1.

Each dimension has a scale of its own (CLIP's vectors have a few dimensions much larger than the
rest), folded into the query before it is rounded to eight bits, so the product of the codes needs no
scales at all. The error bound, per query, is exact arithmetic rather than a statistical estimate:
``|q| * max_row |m - scale*codes| + max_row |codes| * |scale*q - its codes' value|`` (Cauchy-Schwarz on
each of the two rounding errors), plus a little for float32's own rounding."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from datasette_imgsearch.vectors.onnxproduct import one_node_graph, resting_options, shipped_session

GRAPH = Path(__file__).with_name("int8product.onnx")  # made by int8_product_graph(), which a test checks it is
ROWS_AT_A_TIME = 2_048  # rows quantised at once: a block transposes within the cache (seven times faster)
FLOAT_SLACK = 1e-4  # float32 rounding: the exact scores sum 512 products in float32 (at most 3e-5 off)
# A query's codes go in as unsigned bytes (ONNX Runtime is fast with u8 x s8, not s8 x s8), and in seven
# bits: without VNNI or AMX, ONNX Runtime's x86 kernels add each pair of byte products in 16 bits, where
# two of 255 x 127 saturate (measured on an AVX2 CPU: scores off by up to 0.28 against a bound of 0.01).
# Two of 127 x 127 fit, so the products are exact on every CPU; the bound grows by 1 to 25%.
QUERY_LEVELS = 63  # codes from -63 to 63
ZERO_POINT = 64  # so that the bytes run from 1 to 127


def int8_session() -> Any:
    """The integer product's session (None where ONNX Runtime is not installed)."""
    return shipped_session(GRAPH)


def available() -> bool:
    """Whether this process can make an 8-bit pass (ONNX Runtime is installed)."""
    return int8_session() is not None


def table_for(matrix: np.ndarray) -> "Int8Table | None":
    """The 8-bit codes of ``matrix``, or None for a matrix with a value that is not finite (a damaged row),
    which the float32 pass ranks as it always did: no scale or bound could be worked out for it."""
    largest = np.zeros(matrix.shape[1], dtype=np.float32)
    for start in range(0, len(matrix), ROWS_AT_A_TIME):
        largest = np.maximum(largest, np.abs(matrix[start:start + ROWS_AT_A_TIME]).max(axis=0))
    return Int8Table(matrix, largest) if np.isfinite(largest).all() else None


def packed_session(codes: np.ndarray) -> Any:
    """A session of the integer product whose table is ``codes`` itself, a constant that ONNX Runtime packs
    once for its kernel: the shipped graph takes the table as an input and packs it at every call (a pass
    over 100,000 rows, two AMD EPYC cores: 2.3 ms against 4.1). ONNX Runtime copies the codes in, so the
    caller's can go. None where this process cannot make one: the graph, whose shape is the table's, is
    made with the ``onnx`` package (whose import takes about 0.6 s), and this ONNX Runtime must take
    values when a session opens."""
    try:
        import onnx  # noqa: F401  (one_node_graph makes the graph with it)
        import onnxruntime
    except ImportError:
        return None
    options = resting_options()
    if not hasattr(options, "add_external_initializers"):
        return None
    width, rows = codes.shape
    graph = one_node_graph(
        "MatMulInteger", "int8_products_of_one_table",
        [("queries", "UINT8", ["batch", width]), ("table", "INT8", [width, rows]), ("zero", "UINT8", [])],
        ("products", "INT32", ["batch", rows]), constants=("table",),
    )
    options.add_external_initializers(["table"], [onnxruntime.OrtValue.ortvalue_from_numpy(codes)])
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class Int8Table:
    """A matrix of unit vectors as 8-bit codes with a scale per dimension, and the bounds its scores need;
    made by :func:`table_for` from the matrix and each dimension's largest magnitude."""

    def __init__(self, matrix: np.ndarray, largest: np.ndarray) -> None:
        rows, width = matrix.shape
        self.scale = np.where(largest > 0, largest / 127, 1).astype(np.float32)
        codes = np.empty((width, rows), dtype=np.int8)  # transposed: see the module's docstring
        squared_scale = self.scale.astype(np.float64) ** 2
        row_error = code_norm = 0.0
        for start in range(0, rows, ROWS_AT_A_TIME):
            scaled = matrix[start:start + ROWS_AT_A_TIME] / self.scale
            rounded = np.rint(scaled)
            codes[:, start:start + len(scaled)] = rounded.astype(np.int8).T
            left = scaled - rounded  # in steps of the scale: squares of the error itself would be subnormal, and slow
            row_error = max(row_error, float(np.einsum("ij,ij,j->i", left, left, squared_scale).max(initial=0)))
            code_norm = max(code_norm, float(np.einsum("ij,ij->i", rounded, rounded).max(initial=0)))
        self.row_error = float(np.sqrt(row_error))  # the largest distance of a row from its codes times the scales
        self.code_norm = float(np.sqrt(code_norm))  # the largest length of a row's codes
        self.nbytes = int(codes.nbytes + self.scale.nbytes)
        # (a session of their own, None) once packed, else (None, the codes): swapped whole, so a pass
        # under way in another thread reads one or the other, never half of each
        self._product: tuple[Any, np.ndarray | None] = (None, codes)
        self._passes = 0
        self._lock = threading.Lock()
        self.packer: threading.Thread | None = None  # packing the codes, from the second pass on

    @property
    def packed(self) -> bool:
        """Whether the codes are in a session of their own (:func:`packed_session`)."""
        return self._product[0] is not None

    def pack(self) -> bool:
        """Move the codes into a session of their own, now; whether they are there (not where this process
        cannot make one, or ONNX Runtime refused it: the shipped product goes on scoring them)."""
        codes = self._product[1]
        if codes is not None:
            try:
                session = packed_session(codes)
            except Exception:  # ONNX Runtime's own exception types: a speed-up missed, nothing lost
                session = None
            if session is not None:
                self._product = (session, None)  # ONNX Runtime holds its own copy of the codes
        return self.packed

    def _pack_from_the_second_pass(self) -> None:
        with self._lock:
            self._passes += 1
            if self._passes != 2:
                return
            self.packer = threading.Thread(target=self.pack, name="pack 8-bit codes", daemon=True)
        self.packer.start()

    def scores(self, vectors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Rough scores of each vector against every row (queries x rows), and per query how far from its
        exact scores they can be.

        A query goes in as two rows of seven-bit codes (see ``QUERY_LEVELS``), the second the first's
        rounding error at a finer step, in one product (two rows cost about what one does): with one, a
        query with a few large dimensions lost its small ones to rounding, and its bound grew up to
        fourteenfold (to 0.14)."""
        queries = np.stack(vectors).astype(np.float64)
        scaled = queries * self.scale
        coarse, coarse_step = query_codes(scaled)
        left = scaled - coarse * coarse_step
        fine, fine_step = query_codes(left)
        as_bytes = (np.concatenate([coarse, fine]) + ZERO_POINT).astype(np.uint8)
        self._pack_from_the_second_pass()
        session, codes = self._product
        feeds = {"queries": as_bytes, "zero": np.array(ZERO_POINT, dtype=np.uint8)}
        products = (session.run(None, feeds) if codes is None
                    else int8_session().run(None, {**feeds, "table": codes}))[0]
        count = len(queries)  # products are whole numbers under 2**24 up to 1,040 dimensions: exact in float32
        rough = (products[:count].astype(np.float32) * coarse_step.astype(np.float32)
                 + products[count:].astype(np.float32) * fine_step.astype(np.float32))
        margins = (np.linalg.norm(queries, axis=1) * self.row_error
                   + self.code_norm * np.linalg.norm(left - fine * fine_step, axis=1) + FLOAT_SLACK)
        return rough, margins


def query_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``values`` as whole numbers from -``QUERY_LEVELS`` to ``QUERY_LEVELS`` and the step (a
    column) they count in."""
    step = np.abs(values).max(axis=1, keepdims=True) / QUERY_LEVELS
    step[step == 0] = 1
    return np.clip(np.rint(values / step), -QUERY_LEVELS, QUERY_LEVELS), step


def int8_product_graph() -> bytes:
    """The graph :data:`GRAPH` holds: ``products = (queries - zero) @ table`` in integers, for any batch,
    width and row count."""
    return one_node_graph(
        "MatMulInteger", "int8_products",
        [("queries", "UINT8", ["batch", "width"]), ("table", "INT8", ["width", "rows"]), ("zero", "UINT8", [])],
        ("products", "INT32", ["batch", "rows"]),
    )
