"""``build --engine ray``: read, decode and embed on a Ray cluster while this process stays the catalog's
only writer.

The driver (``build``) scans and plans exactly as a local build does and sends out only the files whose
bytes it has to read. Ray Data reads, hashes and decodes them on CPU workers (``Decode`` actors, which
skip the decoding of bytes the catalog already holds), embeds the pixels on GPU or CPU workers
(``Encode`` actors, each loading the model once), and streams the results back in the order they were
sent, so the driver commits the same rows under the same ids as a local build would.

Every worker must see the image folder at the same path (a shared file system) and have
datasette-imgsearch installed; the model is loaded on each worker (a hub name, or a folder every worker
sees).
"""

from __future__ import annotations

import pickle
import socket
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from datasette_imgsearch.build.engines.base import EngineJob
from datasette_imgsearch.build.inspect import Inspected, inspect_file, split_rows
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.images.scan import FoundFile
from datasette_imgsearch.models.names import looks_like_path

if TYPE_CHECKING:
    from datasette_imgsearch.build.options import BuildOptions
    from datasette_imgsearch.models.preprocessing import PixelsOnly, Preprocessor

INSTALL_HINT = "--engine ray needs Ray: pip install 'datasette-imgsearch[ray]'"


class Decode:
    """Ray actor: read, hash, decode and preprocess files (see :func:`build.inspect_file`)."""

    def __init__(
        self, model: str, options: "BuildOptions", reusable: frozenset[str], folder: str, pixels: "PixelsOnly | None"
    ) -> None:
        if not Path(folder).is_dir():  # else every file would be recorded as unreadable
            import socket

            raise CatalogError(
                f"the image folder {folder} is not there on the Ray worker {socket.gethostname()}: every worker must "
                "see the images at the same path (a shared file system)"
            )
        self.model = model
        self.options = options
        self.reusable = reusable
        self.pixels = pixels

    def preprocessor(self) -> "Preprocessor":
        """The model's preprocessing: as the driver sent it (a CLIP model's, without weights), else the model
        loaded at the first new picture for its processor (the network stays idle)."""
        if self.pixels is not None:
            return self.pixels
        from datasette_imgsearch.models.cache import load_embedder

        return load_embedder(self.model, "cpu", "fp32")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {"number": [], "hash": [], "facts": [], "error": [], "features": []}
        for number, path, absolute, size, mtime_ns in zip(
            batch["number"], batch["path"], batch["absolute"], batch["size"], batch["mtime_ns"]
        ):
            found = FoundFile(str(path), Path(str(absolute)), int(size), int(mtime_ns))
            result = inspect_file(found, self.reusable, self.preprocessor, self.options)
            out["number"].append(int(number))
            out["hash"].append(result.hash)
            out["facts"].append(pickle.dumps(result.facts))
            out["error"].append(pickle.dumps(result.error) if result.error is not None else b"")
            out["features"].append(pickle.dumps(result.features) if result.features is not None else b"")
        return _columns(out)


class Encode:
    """Ray actor: embed the preprocessed pixels of a batch with the model, loaded once per actor."""

    def __init__(self, model: str, device: str, precision: str) -> None:
        from datasette_imgsearch.models.cache import load_embedder

        self.embedder = load_embedder(model, device, precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = [pickle.loads(blob) for blob in batch["features"] if len(blob)]
        rows = iter(split_rows(self.embedder.encode_preprocessed(features), features) if features else [])
        out = {key: batch[key] for key in ("number", "hash", "facts", "error")}
        out["vector"] = _object_column([next(rows).astype("<f4").tobytes() if len(blob) else b""
                                        for blob in batch["features"]])
        out["precision"] = _object_column([self.embedder.precision] * len(batch["number"]))
        return out


def _object_column(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _columns(values: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    return {key: np.asarray(column) if key == "number" else _object_column(column) for key, column in values.items()}


class RayEngine:
    """Runs the read-decode-embed part of a build on Ray (see :class:`base.Engine`)."""

    def __init__(self, job: EngineJob) -> None:
        job.embedder()  # the model is checked here (images, dimension) before any worker starts
        options = job.options.ray
        try:
            import ray
        except ImportError:
            raise CatalogError(INSTALL_HINT) from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        check_reachable(options.address)
        if self.started_here:
            try:
                ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise CatalogError(f"could not reach the Ray cluster {options.address or '(local)'}: {error}") from None
        self.job = job
        self.precision: str | None = None  # as the Encode actors ran the model

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()

    def results(self, items: list[FoundFile], reusable: set[str]) -> Iterator[Inspected]:
        if not items:
            return
        model, options, folder = self.job.model, self.job.options, self.job.folder
        pixels = self.job.embedder().pixels_only()  # the decode workers' preprocessing, when it needs no weights
        if looks_like_path(model):  # workers start in folders of their own: a relative path would miss
            model = str(Path(model).expanduser().resolve())
        ray = self.ray
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the driver assigns ids in scan order
        context.enable_progress_bars = False  # build draws its own
        if hasattr(context, "print_on_execution_start"):  # Ray Data's plan, printed at every start (Ray >= 2.4x)
            context.print_on_execution_start = False
        gpus = 1 if options.models.device.startswith("cuda") or (
            options.models.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0
        ) else 0
        rows = [{"number": number, "path": item.path, "absolute": str(item.absolute), "size": item.size,
                 "mtime_ns": item.mtime_ns} for number, item in enumerate(items)]
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        decoders = max(1, min(options.workers, cpus - (0 if gpus else options.ray.encoders)))
        dataset = (
            ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // options.batch_size, 4 * decoders)))
            .map_batches(Decode, fn_constructor_kwargs={"model": model, "options": options,
                                                        "reusable": frozenset(reusable), "folder": str(folder),
                                                        "pixels": pixels},
                         batch_size=options.batch_size, num_cpus=1,
                         compute=ray.data.ActorPoolStrategy(min_size=1, max_size=decoders))
            .map_batches(Encode, fn_constructor_kwargs={"model": model, "device": "cuda" if gpus else "cpu",
                                                        "precision": options.models.precision},
                         batch_size=options.batch_size, num_gpus=gpus, num_cpus=0 if gpus else 1,
                         compute=ray.data.ActorPoolStrategy(size=options.ray.encoders))
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for number, hash_, facts, error, vector, precision in zip(
                    batch["number"], batch["hash"], batch["facts"], batch["error"], batch["vector"], batch["precision"]
                ):
                    self.precision = self.precision or str(precision)
                    result = Inspected(items[int(number)], str(hash_), facts=pickle.loads(facts),
                                       error=pickle.loads(error) if len(error) else None)
                    if len(vector):
                        result.take_vectors(np.frombuffer(vector, dtype="<f4"))
                    yield result
        except ray.exceptions.RayError as error:
            raise CatalogError(f"the Ray build failed on a worker: {_last_line(error)}") from None


REACH_SECONDS = 10.0


def check_reachable(address: str | None) -> None:
    """Refuse, within ``REACH_SECONDS``, a cluster address whose host and port answer no connection: Ray
    itself retries an unreachable address for minutes, with warnings of its own and none of ours."""
    if not address or address in ("auto", "local"):
        return
    location = urllib.parse.urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = location.hostname, location.port
    except ValueError:
        raise CatalogError(f"--ray-address {address!r} is not host:port or ray://host:port") from None
    if not host or not port:
        return
    try:
        socket.create_connection((host, port), timeout=REACH_SECONDS).close()
    except OSError as error:
        raise CatalogError(
            f"cannot reach the Ray cluster at {address}: {error.strerror or error}. Start it (ray start --head), "
            "check --ray-address, or leave it out for a local Ray"
        ) from None


def _last_line(error: Exception) -> str:
    """A worker's error arrives with its traceback; its last line says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
