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

    return onnxruntime.InferenceSession(graph.read_bytes(), resting_options(), providers=["CPUExecutionProvider"])


def resting_options() -> Any:
    """Session options whose threads sleep once a product is done, instead of spinning against the text
    tower's (ONNX Runtime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


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
    return one_node_graph("MatMul", "scores", [("matrix", "FLOAT", ["rows", "width"]), ("queries", "FLOAT", ["width", "batch"])],
                         ("scores", "FLOAT", ["rows", "batch"]))


Tensor = tuple[str, str, list[Any]]  # a graph's input or output: name, ONNX element type, shape


def one_node_graph(operator: str, name: str, inputs: list[Tensor], output: Tensor, constants: tuple[str, ...] = ()) -> bytes:
    """A graph of one ``operator`` node, made with the ``onnx`` package: those shipped in this folder (a
    serving install may lack onnx: a test checks the files are what this makes), and int8pass's graph of
    one catalog's codes. The inputs named in ``constants`` are the graph's own values, given when a
    session opens (``SessionOptions.add_external_initializers``): their shape is fixed here, and ONNX
    Runtime prepares such a value for its kernel once, not at every call."""
    from onnx import TensorProto, helper

    def value(name: str, element: str, shape: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, getattr(TensorProto, element), shape)

    def given_at_opening(name: str, element: str, shape: list[Any]) -> Any:
        tensor = TensorProto(name=name, data_type=getattr(TensorProto, element), dims=shape,
                             data_location=TensorProto.EXTERNAL)
        tensor.external_data.add(key="location", value=name)
        return tensor

    graph = helper.make_graph([helper.make_node(operator, [spec[0] for spec in inputs], [output[0]])], name,
                              [value(*spec) for spec in inputs if spec[0] not in constants], [value(*output)],
                              [given_at_opening(*spec) for spec in inputs if spec[0] in constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="datasette-imgsearch")
    model.ir_version = 8  # readable by every ONNX Runtime this package accepts
    return model.SerializeToString()
