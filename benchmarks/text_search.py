"""Text search against known truth: the toy text world (images/toytext.py), built with the toy CLIP and the
real OCR model, then queried through every door.

    python benchmarks/text_search.py --count 240          # about a minute on two cores

Prints, for single-word queries (English and Chinese) and for mixed queries ("a red circle" plus a word
written on that picture), the picture-only (CLIP), the text-only and the fused rankings side by side, and
checks that the CLI, SQL, the page's JSON and the page itself list exactly the fused ranking's rows.
Writes benchmarks/results/text_search.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from click.testing import CliRunner
from common import TOY_MODEL, save_results, table

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.cli import cli
from datasette_imgsearch.images.toytext import mixed_queries, shown_and_said_first, write_text_world
from datasette_imgsearch.models.choice import ModelChoice
from datasette_imgsearch.search.fusion import text_query_of
from datasette_imgsearch.search.searcher import Searcher
from datasette_imgsearch.text.matching import matches, text_search_columns

Ranking = Callable[[str, int], list[int]]


def rankings(searcher: Searcher) -> dict[str, Ranking]:
    """The three rankings compared: what the picture shows, what it says, and both fused (the product)."""
    catalog = searcher.store.catalog()
    _, tokenizer = text_search_columns(catalog)

    def picture(query: str, k: int) -> list[int]:
        vector, _ = searcher.query_vector(query)
        return [hit.id for hit in searcher.store.search(vector, k, set(), None)]

    def text(query: str, k: int) -> list[int]:
        found = matches(catalog, text_query_of(query).words, tokenizer, None)
        return sorted(found, key=lambda id_: (-found[id_], id_))[:k]  # the words alone: ties by id

    return {"picture only (CLIP)": picture, "text only": text,
            "fused": lambda query, k: [hit.id for hit in searcher.search(query, k)]}


def precision(ids: list[int], relevant: set[int], k: int = 5) -> float:
    """Precision at ``k``, out of as many relevant rows as exist when fewer than ``k``."""
    wanted = min(k, len(relevant))
    return sum(1 for id_ in ids[:wanted] if id_ in relevant) / wanted


def door_rankings(db: Path, queries: list[str], k: int) -> dict[str, dict[str, list[int]]]:
    """Each query's ranking through the CLI, SQL, the JSON API and the page (its result links)."""
    from datasette.app import Datasette

    runner = CliRunner()
    found: dict[str, dict[str, list[int]]] = {"CLI": {}, "SQL": {}, "JSON": {}, "page": {}}
    with Catalog(db) as catalog:
        ids_of = {path: id_ for id_, path in catalog.db.execute("select id, path from images")}
    for query in queries:
        output = runner.invoke(cli, ["search", str(db), query, "-k", str(k), "--json", "--model", str(TOY_MODEL)]).output
        found["CLI"][query] = [ids_of[hit["path"]] for hit in json.loads(output)]

    async def served() -> None:
        config = {"plugins": {"datasette-imgsearch": {"model": str(TOY_MODEL)}}}
        try:
            ds = Datasette([str(db)], config=config)
        except TypeError:
            ds = Datasette([str(db)], metadata=config)
        await ds.invoke_startup()
        for query in queries:
            sql = f"select json_extract(value, '$.id') as id from json_each(imgsearch(:q, {k}))"
            rows = (await ds.client.get("/photos.json", params={"sql": sql, "q": query, "_shape": "array"},
                                        follow_redirects=True)).json()
            found["SQL"][query] = [row["id"] for row in rows]
            data = (await ds.client.get("/photos/images/-/imgsearch.json", params={"q": query, "k": str(k)})).json()
            found["JSON"][query] = [row["id"] for row in data["results"]]
            page = (await ds.client.get("/photos/images/-/imgsearch", params={"q": query, "k": str(k)})).text
            found["page"][query] = [int(id_) for id_ in re.findall(r'class="thumb" href="/photos/images/(\d+)"', page)]

    asyncio.run(served())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=240, help="pictures in the toy text world (half carry words)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, db = Path(tmp) / "images", Path(tmp) / "photos.db"
        write_text_world(folder, args.count, args.seed)
        truth = json.loads((folder / "truth.json").read_text())
        build(db, folder, BuildOptions(ModelChoice(model=str(TOY_MODEL)), ocr=True))
        results = measure(db, truth)
    save_results("text_search", results)


def measure(db: Path, truth: dict[str, Any]) -> dict[str, Any]:
    with Catalog(db) as catalog:
        id_of = {path: id_ for id_, path in catalog.db.execute("select id, path from images")}
    holding: dict[str, set[int]] = {}
    for name, facts in truth.items():
        for word in facts["words"]:
            holding.setdefault(word, set()).add(id_of[name])
    searcher = Searcher(db, ModelChoice(model=str(TOY_MODEL)))
    ways = rankings(searcher)
    words = sorted(holding)
    rows, results = [], {}
    for language, chosen in (("English", [w for w in words if w.isascii()]), ("Chinese", [w for w in words if not w.isascii()])):
        scores = {name: sum(precision(way(word, 5), holding[word]) for word in chosen) / len(chosen)
                  for name, way in ways.items()}
        rows.append([f"one word, {language} ({len(chosen)} words)", *(f"{score:.3f}" for score in scores.values())])
        results[f"p_at_5_{language.lower()}"] = scores
    cases = mixed_queries(truth, id_of)
    wins = {name: sum(shown_and_said_first(way(query, 10), both, one) for query, both, one in cases) / len(cases)
            for name, way in ways.items()}
    rows.append([f"mixed: shows and says it ranks first ({len(cases)} queries)", *(f"{w:.3f}" for w in wins.values())])
    results["mixed_first"] = wins
    table("Text search on the toy text world (P@5; share of mixed queries won)", ["queries", *ways], rows)
    queries = words + [query for query, _, _ in cases[:40]]
    fused = {query: ways["fused"](query, 10) for query in queries}
    doors = door_rankings(db, queries, 10)
    agree = {door: sum(found[q] == fused[q] for q in queries) / len(queries) for door, found in doors.items()}
    table("The doors list the fused ranking", ["door", "queries listed exactly as the core ranks them"],
          [[door, f"{share:.3f}"] for door, share in agree.items()])
    results["doors_agree"] = agree
    return results


if __name__ == "__main__":
    main()
