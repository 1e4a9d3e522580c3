"""An export's text graph with its weights in eight bits, made when asked for (``export-onnx
--int8-text``): every text query then encodes on it, about 1.5 times as fast as on the float32 graph
(ViT-B/32's text tower, a short query on two cores: 5.6 ms against 8.5), because a query that short
spends most of its time reading the weights, and eight bits are a quarter of the bytes.

It is asked for, not made by default, because its vectors are not the float32 ones to the 0.9999 that
every export is held to: it is kept only when every probe text's vector is within cosine ``AGREEMENT``
of the float32 graph's, and ``export.json`` records the worst cosine it reached. Only text graphs: an
image tower encodes only uploads, and a catalog's own vectors are always made in full precision.

The weights are ONNX Runtime's dynamic quantisation of every MatMul (``quantize_dynamic``), a scale per
output channel. They are signed bytes where the exporting CPU multiplies them exactly
(:func:`~.hardware.exact_signed_bytes`: VNNI or AMX on x86, any Arm), which ONNX Runtime's fastest
kernels take (on a Xeon with AMX a short query's text graph takes 4.6 ms against 7.0, a batch of
eight 13 ms against 26); elsewhere unsigned, as an x86 CPU without VNNI adds pairs of products of
signed weights in 16 bits, which can saturate (ONNX Runtime's own advice). ``export.json`` records
which, and a server whose CPU cannot take signed ones runs its queries on the float32 graph instead:
the 8-bit graph was not checked on such a CPU.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Callable

import numpy as np

from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.models.hardware import cpu_multiplies_signed_bytes
from datasette_imgsearch.models.onnxgraph import optimise_graph, quiet_logger, unit, weights_of

FLOAT_GRAPH = "text.onnx"
INT8_GRAPH = "text.int8.onnx"
FACT = "int8_text"  # export.json's record of the 8-bit graph: {"worst_cosine": ..., "weights": "signed"}
AGREEMENT = 0.999  # the least cosine between the 8-bit graph's vectors and the float32 graph's
PROBE_TEXTS = [
    "a photo of a dog", "a red circle", "two people walking on a beach at sunset", "x", "the", "IMG_2041.JPG",
    "a black and white photograph of an old street with cars", "🙂 a smiling face", "3 apples, 2 pears & a knife",
    "红色的圆", "синий квадрат", "ein Hund im Schnee", "a very long description of a street at night " * 6,
]

Encode = Callable[[str, list[str]], np.ndarray]  # a text graph's file name and texts → their vectors


def text_graph(facts: dict[str, Any]) -> str:
    """The text graph an export's queries run on: its 8-bit one where it was made with one, unless its
    weights are signed and this CPU's products of them are not exact (exports made before weights were
    recorded have unsigned ones)."""
    if FACT not in facts or (signed_weights(facts) and not cpu_multiplies_signed_bytes()):
        return FLOAT_GRAPH
    return INT8_GRAPH


def threads_for(graph: str) -> int | None:
    """The threads an export's graph's session runs on (None: a thread per core, ONNX Runtime's default).

    The 8-bit text graph runs on one: a query's handful of tokens makes products too small to share out, and a
    server's concurrent queries keep the other cores busy (one short query, one thread against two: 6.0
    ms against 6.7, at 6.0 ms of CPU against 9.3, on an AMD EPYC with VNNI; 6.3 against 8.8 on one with
    AVX2 only). The float32 text graph, four times the bytes and products, runs on every core, as the
image tower does (uploads, builds): on the AVX2
    EPYC one short query took 10.8 ms on two threads against 15.7 on one, a new query at 100,000 rows
    12.3-13.7 ms against 17.2, and eight clients' distinct queries the same either way."""
    return 1 if graph == INT8_GRAPH else None


def signed_weights(facts: dict[str, Any]) -> bool:
    """Whether an export's 8-bit text graph (``facts`` are its ``export.json``) has signed weights."""
    return bool(facts.get(FACT, {}).get("weights") == "signed")


def graph_files() -> tuple[str, ...]:
    """The 8-bit graph and its weights, as named in an export folder."""
    return INT8_GRAPH, weights_of(Path(INT8_GRAPH)).name


def remove(folder: Path) -> None:
    """Take an 8-bit graph out of ``folder``: one left from an earlier export belongs to other weights."""
    for name in graph_files():
        (folder / name).unlink(missing_ok=True)


def make(folder: Path, encode: Encode, probe_texts: list[str]) -> dict[str, Any]:
    """Write the 8-bit copy of ``folder``'s float32 text graph beside it and check it against that graph
    (``encode`` runs either on the probe texts); its fact for ``export.json``. One that drifts further than
    ``AGREEMENT`` is removed again, and refused with a ModelError that says so."""
    staged = folder / "text.int8.quantised.onnx"
    signed = cpu_multiplies_signed_bytes()
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_logger(""):  # its log line for every node it passes
            from onnxruntime.quantization import QuantType, quantize_dynamic

            weights = QuantType.QInt8 if signed else QuantType.QUInt8
            quantize_dynamic(folder / FLOAT_GRAPH, staged, weight_type=weights, per_channel=True,
                             op_types_to_quantize=["MatMul"], use_external_data_format=True)
        optimise_graph(staged, folder / INT8_GRAPH)
    finally:
        staged.unlink(missing_ok=True)
        weights_of(staged).unlink(missing_ok=True)
    texts = [*PROBE_TEXTS, *probe_texts]
    worst = float(np.sum(unit(encode(FLOAT_GRAPH, texts)) * unit(encode(INT8_GRAPH, texts)), axis=1).min())
    if worst < AGREEMENT:
        remove(folder)
        raise ModelError(f"the 8-bit text graph drifts from the float32 one (cosine {worst:.5f} < {AGREEMENT}): not "
                         "kept; the float32 export is in place and queries use it")
    return {"worst_cosine": round(worst, 6), "weights": "signed" if signed else "unsigned"}

