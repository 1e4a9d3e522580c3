"""Scores of a few query vectors against a catalog's matrix on ONNX Runtime's threads, for a process
that answers queries on ONNX Runtime (never importing torch).

numpy's BLAS is a poor fit there: its product for two to sixteen queries takes three times as long
as for one (a pass over 100,000 vectors: 26 ms against 8 on two AMD EPYC cores), and its threads
spin after each product, taking the cores from the text tower. ONNX Runtime's MatMul scores eight
queries in 12 ms, and its threads sleep once done. The graph is one MatMul, ``matrix @ queries``,
which reads the matrix in place: nothing is copied."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

GRAPH = Path(__file__).with_name("product.onnx")  # made by product_graph(), which a test checks it is


@functools.cache
def shipped_session(graph: Path) -> Any:
    """A session on one of the small graphs shipped in this folder (this product, int8pass's), opened once
    per process at its first use; None where ONNX Runtime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(graph.read_bytes(), options, providers=["CPUExecutionProvider"])


def product_session() -> Any:
    """The float32 product's session (None where ONNX Runtime is not installed: numpy scores instead)."""
    return shipped_session(GRAPH)


def onnx_scores(matrix: np.ndarray, vectors: list[np.ndarray]) -> np.ndarray | None:
    """One row of scores per vector against ``matrix``, or None where ONNX Runtime cannot do it."""
    session = product_session()
    if session is None:
        return None
    queries = np.ascontiguousarray(np.stack(vectors).T, dtype=np.float32)
    table = np.ascontiguousarray(matrix, dtype=np.float32)
    return np.ascontiguousarray(session.run(None, {"matrix": table, "queries": queries})[0].T)


def product_graph() -> bytes:
    """The graph :data:`GRAPH` holds: ``scores = matrix @ queries`` for any row count, width and batch."""
    return shipped_graph("MatMul", "scores", [("matrix", "FLOAT", ["rows", "width"]), ("queries", "FLOAT", ["width", "batch"])],
                         ("scores", "FLOAT", ["rows", "batch"]))


Tensor = tuple[str, str, list[Any]]  # a graph's input or output: name, ONNX element type, shape


def shipped_graph(operator: str, name: str, inputs: list[Tensor], output: Tensor) -> bytes:
    """A graph of one ``operator`` node, as shipped in this folder: made with the ``onnx`` package, which a
    serving install lacks (hence the files, which a test checks are what this makes)."""
    from onnx import TensorProto, helper

    def value(name: str, element: str, shape: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, getattr(TensorProto, element), shape)

    graph = helper.make_graph([helper.make_node(operator, [spec[0] for spec in inputs], [output[0]])], name,
                              [value(*spec) for spec in inputs], [value(*output)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="datasette-imgsearch")
    model.ir_version = 8  # readable by every ONNX Runtime this package accepts
    return model.SerializeToString()
