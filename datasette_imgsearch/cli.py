"""The ``datasette-imgsearch`` command line (also ``datasette imgsearch ...``): thin doors onto the library."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import click

from datasette_imgsearch.build.engines import ENGINES
from datasette_imgsearch.build.options import BuildOptions, Interrupted, RayOptions, Summary
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.duplicates.collapse import Collapsed, collapsed, group_facts, has_groups, uncollapsed
from datasette_imgsearch.duplicates.listing import MEMBER_COLUMNS, duplicate_groups
from datasette_imgsearch.errors import ImgsearchError
from datasette_imgsearch.images import pixels
from datasette_imgsearch.images.scan import video_available
from datasette_imgsearch.images.video import VIDEO_INSTALL, at_moment, clock
from datasette_imgsearch.models.choice import RUNTIMES, ModelChoice
from datasette_imgsearch.models.embedder import Embedder
from datasette_imgsearch.models.hardware import DEVICES, PRECISIONS
from datasette_imgsearch.models.languages import MULTILINGUAL, ROUTES, multilingual_model
from datasette_imgsearch.models.names import DEFAULT_MODEL
from datasette_imgsearch.search.arguments import check_k, check_min_score
from datasette_imgsearch.search.fusion import text_query_of
from datasette_imgsearch.search.registry import searcher_for
from datasette_imgsearch.search.strength import STRONG
from datasette_imgsearch.status import catalog_status
from datasette_imgsearch.text.matching import explanations
from datasette_imgsearch.vectors.index import write_index
from datasette_imgsearch.vectors.kinds import KINDS

MAX_K = 10_000
HIDDEN_INFO_KEYS = ("index_fresh", "index_type", "schema_version", "schema_version_written", "package_version")
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors into one-line messages instead of tracebacks."""
    try:
        yield
    except ImgsearchError as error:
        raise click.ClickException(str(error)) from None


def model_options(model_help: str) -> Callable[[F], F]:
    """--model, --text-model, --multilingual-model and --device, the same on every command that loads a model."""

    def decorate(command: F) -> F:
        command = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                               help="where the model runs")(command)
        multilingual_help = ("the text model for terms that are not plain ASCII, trained into the image model's space "
                             "(name, folder or 'none')  [default: clip-ViT-B-32-multilingual-v1 for clip-ViT-B-32]")
        command = click.option("--multilingual-model", help=multilingual_help)(command)
        text_help = "replaces the image model's own text tower for English-like terms"
        command = click.option("--text-model", help=text_help)(command)
        return click.option("--model", help=model_help)(command)

    return decorate


@click.group()
@click.version_option(package_name="datasette-imgsearch")
def cli() -> None:
    """Semantic image search (CLIP + FAISS) in a SQLite catalog that Datasette serves.

    \b
        datasette-imgsearch build photos.db ./images
        datasette-imgsearch search photos.db "a dog on a beach"
        datasette photos.db
    """


@cli.command(name="build")
@click.argument("database", type=click.Path(dir_okay=False))
@click.argument("folder", required=False, type=click.Path(file_okay=False))
@model_options("sentence-transformers model name or local folder  [default: clip-ViT-B-32, or the catalog's]")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="bf16 runs the model under autocast (fp16 on CUDA): faster where the CPU has native bfloat16, "
                   "vectors at cosine >= 0.999; auto picks it only there")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), help="decoding threads  [default: one per CPU]")
@click.option("--max-megapixels", type=click.FloatRange(min=0.01), default=pixels.DEFAULT_MAX_MEGAPIXELS,
              show_default=True, help="larger images are recorded as errors, never decoded")
@click.option("--thumbnail-size", type=click.IntRange(16, 2048), default=pixels.DEFAULT_THUMBNAIL_SIZE, show_default=True)
@click.option("--no-thumbnails", is_flag=True, help="store no thumbnail BLOBs")
@click.option("--reembed", is_flag=True, help="re-embed every image (with --model: switch the catalog to that model)")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="local", show_default=True,
              help="ray: read, decode and embed on a Ray cluster (pip install 'datasette-imgsearch[ray]'); "
                   "this process still writes the catalog")
@click.option("--ray-address", help="the Ray cluster to use, as for ray.init  [default: RAY_ADDRESS, else a local Ray]")
@click.option("--ray-encoders", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="model workers on Ray (each takes a GPU with --device cuda)")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True,
              help="what runs the image model: auto picks ONNX Runtime (fp32) on a CPU without native bfloat16, where it "
                   "is faster, and torch elsewhere")
@click.option("--ocr/--no-ocr", default=None,
              help="read the words in the pictures, for text search  [default: when the ocr extra is installed]")
@click.option("--watch", is_flag=True, help="then follow the folder and keep the catalog current until Ctrl-C")
@click.option("--silent", is_flag=True, help="no progress bar")
def build_command(
    database: str, folder: str | None, model: str | None, text_model: str | None, multilingual_model: str | None,
    device: str, precision: str, batch_size: int, workers: int | None, max_megapixels: float, thumbnail_size: int,
    no_thumbnails: bool, reembed: bool, engine: str, ray_address: str | None, ray_encoders: int, runtime: str,
    ocr: bool | None, watch: bool, silent: bool,
) -> None:
    """Catalog the images under FOLDER into DATABASE, with CLIP embeddings and a FAISS index.

    Re-running it is incremental: unchanged files are skipped, moved files keep their rows, and an
    interrupted run carries on where it stopped. FOLDER may be left out once the catalog knows it.

    \b
        datasette-imgsearch build photos.db ~/Pictures
        datasette-imgsearch build photos.db ./images --model ./my-clip-folder --precision bf16
        datasette-imgsearch build photos.db /shared/photos --engine ray --ray-address auto --device cuda
        datasette-imgsearch build photos.db ~/Pictures --watch
    """
    # The builder is imported here, not with this module: every other command starts 50 ms sooner without it.
    from datasette_imgsearch.build.builder import build
    from datasette_imgsearch.build.watch import watch as watch_folder

    if engine == "local" and (ray_address or ray_encoders != 1):
        raise click.UsageError("--ray-address and --ray-encoders go with --engine ray")
    options = BuildOptions(
        ModelChoice(model=model, text_model=text_model, multilingual_model=multilingual_model, device=device,
                    precision=precision, runtime=runtime),
        batch_size=batch_size,
        max_megapixels=max_megapixels, thumbnail_size=None if no_thumbnails else thumbnail_size, reembed=reembed,
        engine=engine, ray=RayOptions(ray_address, ray_encoders), ocr=ocr, **({"workers": workers} if workers else {}),
    )
    show_progress = not silent and sys.stderr.isatty()
    with user_errors(), _progress(show_progress) as progress, _progress(show_progress, "Reading text") as text_progress:
        with _interruptible():
            summary = build(database, folder, options, progress, text_progress=text_progress)
    _echo_summary(summary, silent)
    if watch and summary.folder is not None:
        click.echo(f"Watching {summary.folder} for changes (Ctrl-C stops)", err=True)
        with user_errors(), _interruptible(watching=True):
            watch_folder(database, summary.folder, options, lambda passed: _echo_summary(passed, silent, when=True))


@contextlib.contextmanager
def _interruptible(watching: bool = False) -> Iterator[None]:
    """Ctrl-C as a message that says what was kept. While watching, Ctrl-C is the way out (exit 0)."""
    try:
        yield
    except Interrupted as interrupted:
        if watching:
            click.echo(f"Stopped watching during a pass; {interrupted_message(interrupted.batches)}", err=True)
            return
        raise click.ClickException(interrupted_message(interrupted.batches)) from None
    except KeyboardInterrupt:
        if watching:
            click.echo("Stopped watching: the catalog is up to date with the folder as of the last pass", err=True)
            return
        raise click.ClickException(interrupted_message(0)) from None


def _echo_summary(summary: Summary, silent: bool, when: bool = False) -> None:
    """A build's summary line (with the time, for a watching build's passes), then its notes and stages."""
    click.echo(f"{time.strftime('%H:%M:%S')} {summary.line()}" if when else summary.line())
    for note in summary.notes:
        click.echo(f"note: {note}", err=True)
    if not silent and not when:
        if summary.runtime:
            click.echo(summary.runtime, err=True)
        click.echo(summary.duplicates, err=True)
        click.echo(summary.index, err=True)
        click.echo(summary.text, err=True)


def interrupted_message(batches: int) -> str:
    if not batches:
        return "interrupted before anything was committed: the catalog is as it was; run the same command again"
    return (f"interrupted: the {batches} batch{'es' * (batches != 1)} committed so far {'are' if batches != 1 else 'is'} "
            "kept; run the same command again to carry on")


class Progress:
    """A progress bar with count, images/s and time left, drawn on stderr."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.started = time.monotonic()
            self.bar = click.progressbar(
                length=total, label=self.label, file=sys.stderr, show_pos=True, show_eta=True,
                item_show_func=lambda rate: rate,
            )
            self.bar.__enter__()
        rate = done / max(time.monotonic() - self.started, 1e-6)
        self.bar.update(done - self.bar.pos, f"{rate:.1f} images/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@contextlib.contextmanager
def _progress(enabled: bool, label: str = "Cataloguing") -> Iterator[Progress | None]:
    """A :class:`Progress` on a terminal, or nothing."""
    if not enabled:
        yield None
        return
    progress = Progress(label)
    try:
        yield progress
    finally:
        progress.close()


@cli.command(name="index")
@click.argument("database", type=click.Path(exists=True, dir_okay=False))
@click.option("--type", "kind", type=click.Choice(list(KINDS)), help="index type  [default: the catalog's, or flat]")
def index_command(database: str, kind: str | None) -> None:
    """Rebuild DATABASE's sibling FAISS index (DATABASE.faiss) from the stored embeddings.

    \b
        datasette-imgsearch index photos.db
        datasette-imgsearch index photos.db --type hnsw
    """
    with user_errors(), Catalog(database, write=True) as catalog:
        started = time.monotonic()
        path = write_index(catalog, kind)
        click.echo(f"wrote {path} ({catalog.meta('index_type')}, {catalog.meta('index_count')} vectors) "
                   f"in {time.monotonic() - started:.1f}s")


@cli.command(name="search")
@click.argument("database", type=click.Path(exists=True, dir_okay=False))
@click.argument("query", required=False)
@click.option("--image", "image_path", type=click.Path(dir_okay=False), help="search by a reference image instead")
@click.option("-k", "k", default="10", show_default=True, help="how many results")
@click.option("--min-score", help="leave out results scoring below this cosine similarity (-1 to 1), or 'strong' for "
                                   "strong matches only")
@click.option("--json", "as_json", is_flag=True, help="print a JSON array of {id, path, score, ...}")
@click.option("--all", "every_copy", is_flag=True, help="list every near-copy (by default a group shows once)")
@model_options("override the catalog's image model (a moved local folder, say)")
@click.option("--route", type=click.Choice(ROUTES), default="auto", show_default=True,
              help="which text model reads each term: auto sends plain-ASCII terms to CLIP's text tower and the "
                   "rest to the multilingual model")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="how the query is encoded: auto uses bf16 only where the CPU computes it natively")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True,
              help="what encodes the query: auto uses ONNX Runtime (no torch import) where the model has an export")
@click.option("--onnx", type=click.Path(file_okay=False), help="the folder of the model's ONNX export  [default: the cache's]")
def search_command(
    database: str, query: str | None, image_path: str | None, k: str, min_score: str | None, as_json: bool,
    every_copy: bool, model: str | None, text_model: str | None, multilingual_model: str | None, device: str, route: str,
    precision: str, runtime: str, onnx: str | None,
) -> None:
    """Search DATABASE by text QUERY, or by a reference image with --image.

    QUERY may be plain text in any language, row:ID for "more like this row", or a weighted mix
    such as '2:dog + beach - night' or '红色的圆 - 红色 + blue'.

    \b
        datasette-imgsearch search photos.db "a red bicycle"
        datasette-imgsearch search photos.db "海滩上的狗"
        datasette-imgsearch search photos.db --image holiday.jpg -k 5 --json
    """
    if (query is None) == (image_path is None):
        raise click.UsageError("give either a QUERY or --image FILE")
    with user_errors():
        count, cutoff = check_k(k, MAX_K), check_min_score(min_score)
        choice = ModelChoice(model=model, text_model=text_model, multilingual_model=multilingual_model, route=route,
                             device=device, precision=precision, runtime=runtime, onnx=onnx)
        searcher = searcher_for(database, choice)
        if image_path is not None:
            ranking = searcher.image_ranking(pixels.read_bytes(image_path), cutoff)
        else:
            ranking = functools.partial(searcher.search, query or "", min_score=cutoff)
            multilingual = [r for r in searcher.readings(query or "") if r.reader == MULTILINGUAL]
            if multilingual and not as_json:
                click.echo(f"read by {multilingual[0].model}: {', '.join(r.text or '' for r in multilingual)}", err=True)
        with Catalog(database) as catalog:
            facts_of = functools.partial(group_facts, catalog)
            if not has_groups(catalog.db.conn):  # a catalog of an earlier schema: no groups, no videos
                results = uncollapsed(ranking(count), {})
            elif every_copy:
                hits = ranking(count)
                results = uncollapsed(hits, facts_of([hit.id for hit in hits]))
            else:
                results, _ = collapsed(ranking, facts_of, count, MAX_K)
            paths = catalog.paths([result.hit.id for result in results])
            moments = {id_: time for result in results for id_, time in result.times.items()}
            matched = [result.hit.id for result in results if result.hit.text_match]
            why = explanations(catalog.db.conn, matched, text_query_of(query or "")) if matched else {}
    if as_json:
        click.echo(json.dumps([{**r.hit.as_dict(), "path": paths.get(r.hit.id), "near_copies": r.near_copies,
                                **_moments_of(r, moments), **why.get(r.hit.id, {})} for r in results],
                              indent=2, ensure_ascii=False))
        return
    labels = {id_: at_moment(path, moments.get(id_)) for id_, path in paths.items()}
    _echo_ranking(results, labels, why)


def _moments_of(result: Collapsed, moments: dict[int, float]) -> dict[str, Any]:
    """A video hit's time, and its other moments that ranked, for the JSON; nothing for a picture."""
    if result.hit.id not in moments:
        return {}
    return {"frame_time": moments[result.hit.id],
            "moments": [{"id": hit.id, "frame_time": moments.get(hit.id), "score": hit.score} for hit in result.moments]}


def _echo_ranking(results: list[Collapsed], paths: dict[int, str], why: dict[int, dict[str, Any]]) -> None:
    """One line per result: rank, score, strength (starred when strong), path (with a video's moment),
    and its near-copies."""
    if not results:
        click.echo("no results", err=True)
    for rank, result in enumerate(results, 1):
        hit = result.hit
        strength = [] if hit.strength is None else [f"{hit.strength:4.0%}{'*' if hit.strong else ' '}"]
        copies = [f"(+{result.near_copies} near-cop{'y' if result.near_copies == 1 else 'ies'})"] if result.near_copies else []
        said = why.get(hit.id, {}).get("text_snippet")
        words = [f"“{said}”"] if said else []
        click.echo("  ".join([f"{rank:4d}", f"{hit.score:.4f}", *strength, str(paths.get(hit.id)), *copies, *words]))
    if results and results[0].hit.strength is not None:
        click.echo(f"strength: the share of random texts whose best match in this catalog scores lower; "
                   f"* marks strong matches (at least {STRONG:.0%})", err=True)


@cli.command(name="info")
@click.argument("database", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def info_command(database: str, as_json: bool) -> None:
    """Show what DATABASE holds: images, model, index state and errors.

    \b
        datasette-imgsearch info photos.db
    """
    with user_errors(), Catalog(database) as catalog:
        facts = catalog_status(catalog)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    shown = {**facts, "schema": f"{facts['schema_version']} (this datasette-imgsearch {facts['package_version']} writes "
                                f"{facts['schema_version_written']})"}
    for key, value in shown.items():
        if key not in HIDDEN_INFO_KEYS and value is not None:
            click.echo(f"{key + ':':<12} {value}")


@cli.command(name="duplicates")
@click.argument("database", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print a JSON array of groups")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV, one row per picture")
def duplicates_command(database: str, as_json: bool, as_csv: bool) -> None:
    """List the groups of near-duplicate pictures in DATABASE, largest first, the suggested keeper of
    each (the largest picture, then the oldest) marked with *. Nothing is ever deleted.

    \b
        datasette-imgsearch duplicates photos.db
        datasette-imgsearch duplicates photos.db --csv > duplicates.csv
    """
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    with user_errors(), Catalog(database) as catalog:
        groups = duplicate_groups(catalog.db.conn)
    if as_json:
        click.echo(json.dumps([group.as_dict() for group in groups], indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["group", *MEMBER_COLUMNS[:-1], "keeper"])
        for group in groups:
            for m in group.members:
                writer.writerow([group.id, m.id, m.path, m.width, m.height, m.size, m.taken, m.modified, int(m.keeper)])
    else:
        for group in groups:
            click.echo(f"group {group.id}: {len(group.members)} pictures")
            for m in group.members:
                when = m.taken or m.modified
                click.echo(f"  {'*' if m.keeper else ' '} {m.path}  {m.width}×{m.height}  {_bytes(m.size)}  {when}")
        copies = sum(len(group.members) - 1 for group in groups)
        click.echo(f"{len(groups)} groups, {copies} copies beside their keepers" if groups else "no near-duplicates")


def _bytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{max(1, round(size / 1e3))} KB"


@cli.command(name="fetch-model")
@click.argument("name", default=DEFAULT_MODEL)
@click.option("--save-to", type=click.Path(file_okay=False),
              help="also write the model to this folder, to copy to another machine")
def fetch_model_command(name: str, save_to: str | None) -> None:
    """Download a model once (clip-ViT-B-32 by default, about 600 MB), so builds and searches run offline.

    With --save-to, the model is also written to a folder that works as --model FOLDER anywhere,
    for example on a machine without internet.

    \b
        datasette-imgsearch fetch-model
        datasette-imgsearch fetch-model clip-ViT-B-32 --save-to ./clip-ViT-B-32
    """
    from huggingface_hub import constants

    with user_errors():
        embedder = Embedder(name, "cpu", plain=False)  # sentence-transformers downloads it, and can save it
        if save_to:
            embedder.model.save(save_to)
    where = f"saved to {save_to}" if save_to else f"cached under {constants.HF_HUB_CACHE}"
    click.echo(f"{name}: {embedder.dimension}-dimensional, handles {' and '.join(embedder.modalities)}; {where}")


@cli.command(name="export-onnx")
@click.argument("database", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--model", help="the model to export  [default: DATABASE's image, text and multilingual models]")
@click.option("--to", "to", type=click.Path(file_okay=False),
              help="the folder to write (a catalog's multilingual model goes in its 'multilingual' folder)  "
                   "[default: the cache's]")
@click.option("--int8-text", is_flag=True,
              help="also write each text graph with 8-bit weights, which text queries then run on: 1.5-2.7x as "
                   "fast, vectors within cosine 0.999 of fp32 (checked; recorded in export.json). Weights are "
                   "signed where this CPU has VNNI or AMX, and such a graph runs only on CPUs that have them")
def export_onnx_command(database: str | None, model: str | None, to: str | None, int8_text: bool) -> None:
    """Export a catalog's models to ONNX, so that searches run on ONNX Runtime without importing torch.

    A CLIP model's two towers are exported, and a catalog's multilingual text model (which reads
    non-English query terms) where it is on this machine. Searches use the exports by themselves once
    they exist (found in the cache, or in the folder named with --onnx or the onnx setting); each is
    checked against torch (cosine >= 0.9999) before it is kept. Exporting again without --int8-text
    takes the 8-bit text graphs away.

    \b
        datasette-imgsearch export-onnx photos.db
        datasette-imgsearch export-onnx photos.db --to /srv/clip-onnx
        datasette-imgsearch export-onnx photos.db --int8-text
        datasette-imgsearch export-onnx --model ./my-clip --to /srv/clip-onnx
    """
    from datasette_imgsearch.models.onnxclip import TEXT_SUBFOLDER, export, model_folder
    from datasette_imgsearch.models.onnxtext import export_text

    with user_errors():
        names = [(model, False)] if model else catalog_models(database)
        for name, optional in names:
            if model_folder(name) is not None:
                folder = export(name, Path(to) if to else None, int8_text)
                click.echo(f"{name}: exported to {folder}{_int8_said(folder)}")
                continue
            target = None if not to else Path(to) if model else Path(to) / TEXT_SUBFOLDER
            try:
                folder = export_text(name, target, int8_text)
                click.echo(f"{name}: exported to {folder}{_int8_said(folder)}")
            except ImgsearchError as error:
                if not optional:
                    raise
                click.echo(f"{name}: not exported ({error}); terms it reads need torch", err=True)


def _int8_said(folder: Path) -> str:
    """What an export's 8-bit text graph is, if it has one: signed weights run only where the CPU's products
    of them are exact."""
    from datasette_imgsearch.models import int8text
    from datasette_imgsearch.models.onnxclip import read_facts

    facts = read_facts(folder)
    if int8text.FACT not in facts:
        return ""
    if int8text.signed_weights(facts):
        return (", with an 8-bit text graph of signed weights that text queries run on where the CPU has VNNI or "
                "AMX (x86) or is not x86; elsewhere on the float32 graph")
    return ", with an 8-bit text graph that text queries run on"


def catalog_models(database: str | None) -> list[tuple[str, bool]]:
    """The image model, the text model where it differs, and the multilingual text model a catalog records
    or has by default, each with whether it may be missing here (only the multilingual one may)."""
    if database is None:
        raise click.UsageError("name a catalog (DATABASE) or a model (--model)")
    with Catalog(database) as catalog:
        image_model, text_model, recorded = catalog.meta("model"), catalog.meta("text_model"), catalog.meta("multilingual_model")
    found = [(name, False) for name in dict.fromkeys(name for name in (image_model, text_model) if name)]
    multilingual = multilingual_model(image_model, recorded) if image_model else None
    return found + ([(multilingual, True)] if multilingual else [])


@cli.command(name="toy-world")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--count", type=click.IntRange(1, 1_000_000), default=120, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=click.IntRange(16, 4096), help="side in pixels  [default: 128; with --words 480 high, 4:3]")
@click.option("--words", is_flag=True, help="every other picture with English or Chinese words on it, for the ocr extra")
@click.option("--videos", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="also write this many short videos of three scenes each (the video extra)")
def toy_world_command(folder: str, count: int, seed: int, size: int | None, words: bool, videos: int) -> None:
    """Write a folder of generated pictures of coloured shapes, to try everything offline.

    Pair it with the small model in tests/fixtures/toy-clip, which understands this world. With --words,
    half the pictures carry signs and labels (truth.json says which), which the OCR model reads. With
    --videos, short videos whose scenes show shapes from known times.

    \b
        datasette-imgsearch toy-world ./shapes --count 200
        datasette-imgsearch build shapes.db ./shapes --model tests/fixtures/toy-clip
        datasette-imgsearch toy-world ./signs --words --count 60
        datasette-imgsearch toy-world ./clips --count 20 --videos 6
    """
    if videos and not video_available():
        raise click.ClickException(f"--videos needs PyAV: {VIDEO_INSTALL}")
    from datasette_imgsearch.images.toytext import fonts, write_text_world
    from datasette_imgsearch.images.toyworld import write_world

    if words:
        if not all(fonts()):
            raise click.ClickException("--words needs the fonts fonts-dejavu (or fonts-liberation) and fonts-wqy-zenhei: "
                                       "apt-get install fonts-dejavu-core fonts-wqy-zenhei")
        height = size or 480
        written: list[Any] = write_text_world(Path(folder), count=count, seed=seed, size=(height * 4 // 3, height))
    else:
        written = write_world(Path(folder), count=count, seed=seed, size=size or 128)
    click.echo(f"wrote {len(written)} images to {folder}")
    if videos:
        from datasette_imgsearch.images.toyvideo import write_videos

        for video in write_videos(Path(folder), count=videos, seed=seed):
            scenes = ", ".join(f"{scene.colour} {scene.shape} @ {clock(scene.start)}" for scene in video.scenes)
            click.echo(f"wrote {video.path.name}: {scenes}")
