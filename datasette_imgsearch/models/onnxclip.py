"""CLIP's two towers exported to ONNX and run on ONNX Runtime: a query answered without importing torch.

``import torch`` takes most of a cold ``search`` (about 1.6 s here, against 0.2 s for ``import
onnxruntime``), and a server that only answers searches carries it for nothing. :func:`export` writes
the towers this package already runs (fastclip.py's, with torch present, as at build time) to two ONNX
files with ``torch.onnx`` (its current, torch.export-based exporter: no other converter, and the graph
is exactly the one the build runs), checks them against torch in fp32 (cosine ≥ ``FAITHFUL``) and
records what model they came from. :class:`OnnxClip` reads them back with the tokenizer and the image
processor's settings from the model's own folder, through ``tokenizers`` and numpy alone.

Exports live in the user's cache (``IMGSEARCH_CACHE``, else ``$XDG_CACHE_HOME/datasette-imgsearch``),
under ``onnx/`` in a folder named after the model and a digest of its files, or in any folder named by
``--onnx`` / the ``onnx`` setting, which a read-only server can be given.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import re
import shutil
import threading
import warnings
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np

from datasette_imgsearch.errors import ModelError
from datasette_imgsearch.models import fastclip, int8text
from datasette_imgsearch.models.names import cache_folder, looks_like_path
from datasette_imgsearch.models.onnxgraph import (
    WEIGHTS_SUFFIX,
    open_session,
    optimise_graph,
    quiet_logger,
    side_by_side,
    unit,
)

EXPORT_FORMAT = 1
CLIP_KIND, TEXT_KIND = "clip", "text"  # export.json's kind: two towers (older exports say none), or a text model's one graph
TEXT_SUBFOLDER = "multilingual"  # where export-onnx --to puts a catalog's multilingual text model, in its folder
FAITHFUL = 0.9999  # the least cosine between an exported tower's vectors and torch's, in fp32
ONNX_INSTALL = "pip install 'datasette-imgsearch[onnx]'"


def model_folder(name: str) -> Path | None:
    """The CLIP folder of a model (a local folder, or a hub name already in the cache); None otherwise."""
    folder = Path(name).expanduser() if looks_like_path(name) else fastclip.hub_folder(name)
    return fastclip.clip_folder(folder) if folder is not None and folder.is_dir() else None


def digest(folder: Path) -> str:
    """What names a model's exact files: their names, sizes and modification times, hashed."""
    entries = [(str(file.relative_to(folder)), file.stat().st_size, file.stat().st_mtime_ns)
               for file in sorted(folder.rglob("*")) if file.is_file()]
    return hashlib.sha256(json.dumps([str(folder.resolve()), entries]).encode()).hexdigest()[:16]


def default_export_folder(folder: Path, folder_digest: str) -> Path:
    """Where the cache keeps the export of the model in ``folder``, whose files hash to ``folder_digest``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name)[:40] or "model"
    return cache_folder() / "onnx" / f"{slug}-{folder_digest}"


def find_export(name: str, named: str | Path | None = None, kind: str = CLIP_KIND,
                folder_of: Callable[[str], Path | None] | None = None) -> Path | None:
    """The export of model ``name`` to use, or None. Where the model's folder is here (``folder_of``,
    else :func:`model_folder`), an export of exactly its files: the folder ``named`` (or, for a text
    model's export, its ``multilingual`` subfolder), else the cache's. Where it is not (a server given
    only the export), such a folder when it was exported from a model of that name. ``kind`` is
    ``clip`` (two towers) or ``text`` (onnxtext.py's one)."""
    folder = _model_folder_if_here(name, folder_of or model_folder)
    wanted = digest(folder) if folder is not None else None
    candidates = [Path(named).expanduser()] if named else []
    if named and kind == TEXT_KIND:
        candidates.append(Path(named).expanduser() / TEXT_SUBFOLDER)
    if folder is not None and wanted is not None:
        candidates.append(default_export_folder(folder, wanted))
    for candidate in candidates:
        try:
            facts = json.loads((candidate / "export.json").read_text())
        except (OSError, ValueError):
            continue
        if facts.get("format") != EXPORT_FORMAT or facts.get("kind", CLIP_KIND) != kind:
            continue
        if (facts.get("model_digest") == wanted) if wanted is not None else facts.get("name") == name:
            return candidate
    return None


def _model_folder_if_here(name: str, folder_of: Callable[[str], Path | None]) -> Path | None:
    try:
        return folder_of(name)
    except ImportError:  # a serving install without huggingface_hub cannot look in the hub's cache
        return None


def runtime_available() -> bool:
    """Whether ONNX Runtime is installed (what queries on an export need)."""
    return importlib.util.find_spec("onnxruntime") is not None


def can_export() -> bool:
    """Whether an export can be made and run here: ONNX Runtime, onnx and onnxscript installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "onnxscript"))


class Sessions:
    """An export's graphs on ONNX Runtime, each opened once, at its first use and in a thread of its own:
    ONNX Runtime lets go of the GIL while it reads a graph, so the tokenizer loads meanwhile (a cold
    text search about 0.1 s sooner)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._opening: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def opening(self, graph: str) -> Future[Any]:
        """The graph's session, opening (or open) on the threads that graph runs on
        (:func:`int8text.threads_for`): its ``result()`` is the session, or the error."""
        with self._lock:
            if graph not in self._opening:
                future: Future[Any] = Future()
                threading.Thread(target=self._open, args=(graph, future), name=f"open {graph}", daemon=True).start()
                self._opening[graph] = future
            return self._opening[graph]

    def _open(self, graph: str, future: Future[Any]) -> None:
        try:
            future.set_result(open_session(self.folder / graph, int8text.threads_for(graph)))
        except BaseException as error:  # handed to the thread that waits for the session
            future.set_exception(error)


class OnnxClip:
    """A CLIP model's towers on ONNX Runtime, with its tokenizer and image processor settings. Each tower's
    session opens at its first use, and the tokenizer at the first text: a text query never loads the
    image tower (a third of a second and 350 MB for ViT-B/32), nor an upload the text tower."""

    def __init__(self, export: Path, dimension: int, max_positions: int, text_graph: str = int8text.FLOAT_GRAPH) -> None:
        self.folder = export
        self.dimension = dimension
        self.max_positions = max_positions
        self.text_graph = text_graph  # text.onnx, or the 8-bit text.int8.onnx where the export has one
        processor = fastclip.image_processor(export)
        if not fastclip.has_text_tokenizer(export) or processor is None:
            raise ModelError(f"{export} holds no CLIP tokenizer or image processor beside its towers")
        self.image_processor: SimpleNamespace = processor
        self.sessions = Sessions(export)
        for tower in TOWERS:
            if not (export / f"{tower}.onnx").is_file():
                raise ModelError(f"{export} has no {tower}.onnx")

    @functools.cached_property
    def tokenizer(self) -> Any:
        """CLIP's tokenizer, read at the first text (while the graph opens): an upload never reads it."""
        try:
            return fastclip.text_tokenizer(self.folder, self.max_positions)
        except Exception as error:  # tokenizers' own exception, for a damaged file
            raise ModelError(f"the tokenizer in {self.folder} cannot be read ({error}): make the export "
                             "again with export-onnx") from None

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return side_by_side(self._encode_texts, texts)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        session = self.sessions.opening(self.text_graph)
        ids = np.array([encoding.ids for encoding in self.tokenizer.encode_batch(texts)], dtype=np.int64)
        return session.result().run(None, {"input_ids": ids})[0]

    def encode_pixels(self, pixel_values: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        return self.sessions.opening("image.onnx").result().run(None, {"pixel_values": pixels})[0]


def read_facts(export: Path) -> dict[str, Any]:
    """What ``export.json`` records of an export, once every graph it lists is there at its exported size:
    a cut-off copy is found when the export is opened, not at a query."""
    facts: dict[str, Any] = json.loads((export / "export.json").read_text())
    for name, size in facts.get("sizes", {}).items():
        if not (export / name).is_file() or (export / name).stat().st_size != size:
            raise ModelError(f"{export / name} is not the file that was exported (missing, or another size)")
    return facts


def check_faithful(name: str, worst: float) -> None:
    """Refuse an export whose vectors drift from torch's: ``worst`` is the least cosine over the probes."""
    if worst < FAITHFUL:
        raise ModelError(f"the ONNX export of {name} drifts from torch (cosine {worst:.6f} < {FAITHFUL}): not used")


def load_export(export: Path) -> OnnxClip:
    """The export in ``export`` (see :func:`find_export`)."""
    facts = read_facts(export)
    return OnnxClip(export, int(facts["dimension"]), int(facts["max_positions"]), int8text.text_graph(facts))


EXPORTING = threading.Lock()


def export(name: str, to: Path | None = None, int8_text: bool = False) -> Path:
    """Export model ``name``'s towers to ONNX (``to``, else the cache), check them against torch, and
    return the folder; with ``int8_text``, an 8-bit text graph beside them too (int8text.py), which the
    queries then use. Needs torch, onnx and onnxscript: it runs where ``build`` runs."""
    folder = model_folder(name)
    clip = fastclip.load(name, "cpu", looks_like_path(name)) if folder is not None else None
    if folder is None or clip is None:
        raise ModelError(f"{name} is not a CLIP model this package runs on its own towers: it cannot be exported "
                         "(its queries stay on torch)")
    folder_digest = digest(folder)
    target = Path(to).expanduser() if to else default_export_folder(folder, folder_digest)
    with EXPORTING:
        target.mkdir(parents=True, exist_ok=True)
        (target / "export.json").unlink(missing_ok=True)  # until it is checked, this folder holds no export
        int8text.remove(target)
        for file in COPIED_FILES:  # the tokenizer and the image processor: the export needs nothing else
            if (folder / file).is_file():
                shutil.copyfile(folder / file, target / file)
        _write_towers(clip, target)
        optimise(target)
        dimension, max_positions = clip.towers.dimension, clip.towers.max_positions
        worst = _check(clip, OnnxClip(target, dimension, max_positions))
        check_faithful(name, worst)
        facts = {"format": EXPORT_FORMAT, "kind": CLIP_KIND, "name": name, "model": str(folder.resolve()),
                 "model_digest": folder_digest, "dimension": dimension, "max_positions": max_positions,
                 "worst_cosine": round(worst, 7)}

        def encode(graph: str, texts: list[str]) -> np.ndarray:
            return OnnxClip(target, dimension, max_positions, text_graph=graph).encode_texts(texts)

        write_export(target, facts, tuple(f"{tower}.onnx" for tower in TOWERS), COPIED_FILES,
                     encode if int8_text else None, PROBE_TEXTS)
    return target


def write_export(target: Path, facts: dict[str, Any], graphs: tuple[str, ...], copied: tuple[str, ...],
                 int8_encode: int8text.Encode | None, probe_texts: list[str]) -> None:
    """A checked export's ``export.json`` (:func:`write_facts`); then, where ``int8_encode`` is given (it
    encodes texts on a text graph of the export), its 8-bit text graph, recorded in it too."""
    write_facts(target, facts, graphs, copied)
    if int8_encode is not None:
        facts = {**facts, int8text.FACT: int8text.make(target, int8_encode, probe_texts)}
        write_facts(target, facts, (*graphs, int8text.INT8_GRAPH), copied)


def write_facts(target: Path, facts: dict[str, Any], graphs: tuple[str, ...], copied: tuple[str, ...]) -> None:
    """``export.json``, with the size of every graph, its weights and each copied file: :func:`read_facts`
    finds a cut-off or missing one when the export is opened, so a query never meets it."""
    names = [*(name for graph in graphs for name in (graph, graph + WEIGHTS_SUFFIX)), *copied]
    sizes = {name: (target / name).stat().st_size for name in names if (target / name).is_file()}
    (target / "export.json").write_text(json.dumps({**facts, "sizes": sizes}, indent=2))


TOWERS = ("text", "image")
COPIED_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                "preprocessor_config.json", "processor_config.json")
PROBE_TEXTS = ["a photo of a dog", "a red circle", "红色的圆", "x", "a very long description of a street at night " * 6]


def _write_towers(clip: fastclip.FastClip, target: Path) -> None:
    """The two towers as ONNX files, for any batch size and text length."""
    import torch

    towers = clip.towers

    class Text(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return towers.encode_text(input_ids)

    class Picture(torch.nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return towers.encode_images(pixel_values)

    ids = torch.tensor([encoding.ids for encoding in clip.tokenizer.encode_batch(PROBE_TEXTS[:2])])
    side = int(clip.image_processor.crop_size["height"])
    pixels = torch.zeros(2, 3, side, side)
    batch, length = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("length", min=2, max=towers.max_positions)
    with torch.inference_mode(), exporter_quiet():
        torch.onnx.export(Text(), (ids,), str(target / "text.onnx"), dynamo=True, external_data=False, verbose=False,
                          input_names=["input_ids"], output_names=["vectors"],
                          dynamic_shapes={"input_ids": {0: batch, 1: length}})
        torch.onnx.export(Picture(), (pixels,), str(target / "image.onnx"), dynamo=True, external_data=False, verbose=False,
                          input_names=["pixel_values"], output_names=["vectors"], dynamic_shapes={"pixel_values": {0: batch}})


def optimise(target: Path, towers: tuple[str, ...] = TOWERS) -> None:
    """Each tower's graph in ``target`` optimised in place (onnxgraph.optimise_graph)."""
    for tower in towers:
        optimise_graph(target / f"{tower}.onnx", target / f"{tower}.onnx")


@contextlib.contextmanager
def exporter_quiet() -> Iterator[None]:
    """torch's ONNX exporter without the progress it prints, its warnings, or its log of what it skips."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        yield


def _check(clip: fastclip.FastClip, exported: OnnxClip) -> float:
    """The least cosine between torch's fp32 vectors and the export's, over probe texts and pictures."""
    import torch

    side = int(clip.image_processor.crop_size["height"])
    pixels = np.random.default_rng(0).standard_normal((3, 3, side, side)).astype(np.float32)
    with torch.inference_mode():
        ids = torch.tensor([encoding.ids for encoding in clip.tokenizer.encode_batch(PROBE_TEXTS)])
        expected = [clip.towers.encode_text(ids).numpy(), clip.towers.encode_images(torch.from_numpy(pixels)).numpy()]
    found = [exported.encode_texts(PROBE_TEXTS), exported.encode_pixels(pixels)]
    cosines = [np.sum(unit(a) * unit(b), axis=1) for a, b in zip(expected, found)]
    return float(np.concatenate(cosines).min())

