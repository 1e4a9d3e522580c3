"""A sentence-transformers text model exported to ONNX and run on ONNX Runtime: the multilingual model
that reads a query's non-English terms, answered without importing torch like CLIP's own towers.

:func:`export_text` writes the model's whole forward pass (its transformer, pooling and dense layers, as
sentence-transformers runs them) to one graph for any batch and length, checks it against
sentence-transformers in fp32 (cosine ≥ ``FAITHFUL``) and copies ``tokenizer.json`` beside it.
:class:`OnnxText` reads it back with ``tokenizers`` and numpy alone, cutting texts at the model's own
``max_seq_length`` as sentence-transformers does. Exports are found as CLIP's are (onnxclip.py), with
``kind`` ``text`` in ``export.json``.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.models import fastclip, int8text
from datasette_imgsearch.models.names import looks_like_path
from datasette_imgsearch.models.onnxclip import (
    EXPORT_FORMAT,
    EXPORTING,
    TEXT_KIND,
    Sessions,
    check_faithful,
    default_export_folder,
    digest,
    exporter_quiet,
    find_export,
    optimise,
    read_facts,
    write_export,
)
from datasette_imgsearch.models.onnxgraph import side_by_side, unit

TOKENIZER = "tokenizer.json"
PROBE_TEXTS = ["一只红色的圆", "синий квадрат", "a red circle", "x", "ein sehr langer Satz über eine Straße bei Nacht " * 40]


def text_model_folder(name: str) -> Path | None:
    """The folder of a sentence-transformers text model with a fast tokenizer (``tokenizer.json``): a local
    folder, or a hub name already in the cache; None for anything else, CLIP folders included."""
    folder = Path(name).expanduser() if looks_like_path(name) else fastclip.hub_folder(name)
    if folder is None or not (folder / "modules.json").is_file() or not (folder / TOKENIZER).is_file():
        return None
    return None if fastclip.clip_folder(folder) is not None else folder


def find_text_export(name: str, named: str | Path | None = None) -> Path | None:
    """The export of text model ``name`` to use, or None (see :func:`onnxclip.find_export`)."""
    return find_export(name, named, TEXT_KIND, text_model_folder)


class OnnxText:
    """A text model's one graph on ONNX Runtime, with its tokenizer; opened at its first query."""

    image_processor = None

    def __init__(self, export: Path, dimension: int, max_length: int, text_graph: str = int8text.FLOAT_GRAPH) -> None:
        self.folder = export
        self.dimension = dimension
        self.max_length = max_length
        self.text_graph = text_graph  # text.onnx, or the 8-bit text.int8.onnx where the export has one
        self.sessions = Sessions(export)
        for name in (text_graph, TOKENIZER):
            if not (export / name).is_file():
                raise ModelError(f"{export} has no {name}")

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The model's tokenizer, read at the first text (while the graph opens)."""
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER))
        except Exception as error:  # tokenizers' own exception, for a damaged or foreign file
            raise ModelError(f"{self.folder / TOKENIZER} cannot be read ({error}): make the export again") from None
        tokenizer.no_padding()  # padded below, with an attention mask, to the longest text of a batch
        tokenizer.enable_truncation(self.max_length)
        return tokenizer

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return side_by_side(self._encode_texts, texts)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        session = self.sessions.opening(self.text_graph)
        encodings = self.tokenizer.encode_batch(texts)
        length = max(len(encoding.ids) for encoding in encodings)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return session.result().run(None, {"input_ids": ids, "attention_mask": mask})[0]


def load_text_export(export: Path) -> OnnxText:
    """The text model's export in ``export`` (see :func:`find_text_export`)."""
    facts = read_facts(export)
    return OnnxText(export, int(facts["dimension"]), int(facts["max_length"]), int8text.text_graph(facts))


def export_text(name: str, to: Path | None = None, int8_text: bool = False) -> Path:
    """Export text model ``name`` to ONNX (``to``, else the cache), check it against sentence-transformers,
    and return the folder; with ``int8_text``, an 8-bit copy of the graph beside it too (int8text.py),
    which the queries then use. Needs torch, sentence-transformers, onnx and onnxscript, as a build has."""
    from datasette_imgsearch.models.hub import load_sentence_transformer

    folder = text_model_folder(name)
    if folder is None:
        raise ModelError(f"{name} is neither a CLIP model nor a sentence-transformers text model with a "
                         "tokenizer.json on this machine: it cannot be exported (its queries stay on torch)")
    model = load_sentence_transformer(str(folder), "cpu")
    folder_digest = digest(folder)
    target = Path(to).expanduser() if to else default_export_folder(folder, folder_digest)
    with EXPORTING:
        target.mkdir(parents=True, exist_ok=True)
        (target / "export.json").unlink(missing_ok=True)  # until it is checked, this folder holds no export
        int8text.remove(target)
        shutil.copyfile(folder / TOKENIZER, target / TOKENIZER)
        _write_graph(model, target / int8text.FLOAT_GRAPH)
        optimise(target, ("text",))
        dimension, max_length = int(model.encode(["x"]).shape[1]), int(model.max_seq_length)
        exported = OnnxText(target, dimension, max_length)
        worst = float(np.sum(unit(model.encode(PROBE_TEXTS)) * unit(exported.encode_texts(PROBE_TEXTS)), axis=1).min())
        check_faithful(name, worst)
        facts = {"format": EXPORT_FORMAT, "kind": TEXT_KIND, "name": name, "model": str(folder.resolve()),
                 "model_digest": folder_digest, "dimension": dimension, "max_length": max_length,
                 "worst_cosine": round(worst, 7)}

        def encode(graph: str, texts: list[str]) -> np.ndarray:
            return OnnxText(target, dimension, max_length, text_graph=graph).encode_texts(texts)

        write_export(target, facts, (int8text.FLOAT_GRAPH,), (TOKENIZER,), encode if int8_text else None, PROBE_TEXTS)
    return target


def _write_graph(model: Any, path: Path) -> None:
    """The model's forward pass, ids and attention mask in, its sentence vectors out, for any batch and length."""
    import torch

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

    probe = model.tokenizer(PROBE_TEXTS[:2], padding=True, return_tensors="pt")
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=2, max=int(model.max_seq_length))
    with torch.inference_mode(), exporter_quiet():
        torch.onnx.export(Text().eval(), (probe["input_ids"], probe["attention_mask"]), str(path), dynamo=True,
                          external_data=False, verbose=False, input_names=["input_ids", "attention_mask"],
                          output_names=["vectors"],
                          dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}})
