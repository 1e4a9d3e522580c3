"""An exported graph's files on ONNX Runtime: opening a session on one, and optimising one once, at
export time, with its weights in a file beside it; and what every export's checks share (unit vectors,
a quieted logger). Used by every export (onnxclip.py's two towers, onnxtext.py's text model,
int8text.py's 8-bit text graphs)."""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from datasette_imgsearch.errors import ModelError

WEIGHTS_SUFFIX = ".data"  # text.onnx's weights are in text.onnx.data


# A larger batch of texts (what chance finds: 200 random texts) is cut into parts of this many, encoded
# side by side on every core, each padded only to its own longest text.
TEXTS_A_PART = 16


def side_by_side(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    """``encode(texts)``, in parts of ``TEXTS_A_PART`` run at once on every core where there are at least
    two: ONNX Runtime runs one session from several threads at once, and each part is padded only to its
    own longest text. 200 random texts on ViT-B/32's 8-bit text graph, two cores: 0.6 s instead of 2.3-2.5
    in one call on its one thread (1.6 on two); on the float32 graph, on every core, 2.3 s instead of
    3.9 (an AMD EPYC with AVX2 only)."""
    if len(texts) < 2 * TEXTS_A_PART:
        return encode(texts)
    parts = [texts[start:start + TEXTS_A_PART] for start in range(0, len(texts), TEXTS_A_PART)]
    with ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="encode texts") as pool:
        return np.concatenate(list(pool.map(encode, parts)))


def weights_of(graph: Path) -> Path:
    """The file beside ``graph`` that holds its weights."""
    return graph.with_name(graph.name + WEIGHTS_SUFFIX)


def open_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime session on an exported graph. The graphs were optimised when they were exported,
    so opening one does no optimisation again."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    # ONNX Runtime's threads spin for a while after each run by default, taking the cores from the
    # pass over the vectors (and from concurrent queries) that follows every encoding.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime's own exception types, for a damaged or foreign file
        raise ModelError(f"the ONNX export in {path.parent} cannot be read ({error}): make it again "
                         "with export-onnx") from None


def optimise_graph(source: Path, graph: Path) -> None:
    """``source`` optimised once, here, as ONNX Runtime would at every load (the fusions of its extended
    level, which hold on any CPU; not the layouts of the level above, which are tied to one), and written
    to ``graph`` (which may be ``source``): a query process opens it without that work, about half a
    second less for ViT-B/32's two towers.

    The weights go in a file of their own beside the graph (``text.onnx.data``), which ONNX Runtime maps
    instead of parsing: ViT-B/32's text tower opens in a quarter of a second instead of 0.8, and a query
    process holds about 190 MB less."""
    import onnxruntime

    weights = weights_of(graph)
    weights.unlink(missing_ok=True)  # a graph exported whole does not read it; ONNX Runtime writes it anew
    optimised = graph.with_name(graph.name.removesuffix(".onnx") + ".optimised.onnx")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimised)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights.name)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    os.replace(optimised, graph)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length one, for the cosines an export is checked by."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """The logger ``name`` (the root logger for "") at errors only, while an exporter or quantiser runs."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
