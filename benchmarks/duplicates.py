"""Near-duplicate grouping against known truth: toy-world originals and their copies (every transform of
images/toycopies.py), built into a catalog with a model, then scored from the catalog's columns.

    python benchmarks/duplicates.py --model tests/fixtures/toy-clip --originals 240

Prints pair precision and recall overall and the recall of each transform (a copy counts as found when
it shares its original's group), and how long the build (without reading words) and the grouping took.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from datasette_imgsearch.build.builder import build
from datasette_imgsearch.build.options import BuildOptions
from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import META_TABLE, TABLE
from datasette_imgsearch.duplicates.listing import groups_by_path
from datasette_imgsearch.duplicates.stage import update_groups
from datasette_imgsearch.images.toycopies import score_groups, write_copies
from datasette_imgsearch.models.choice import ModelChoice


def groups_in(db_path: Path, folder: Path) -> dict[Path, int | None]:
    with Catalog(db_path) as catalog:
        return {folder / path: group for path, group in groups_by_path(catalog.db.conn).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tests/fixtures/toy-clip")
    parser.add_argument("--originals", type=int, default=240)
    parser.add_argument("--copies-each", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        originals, copies = write_copies(folder, args.originals, args.copies_each, args.seed)
        started = time.perf_counter()
        summary = build(Path(tmp) / "photos.db", folder, BuildOptions(ModelChoice(model=args.model), ocr=False))
        elapsed = time.perf_counter() - started
        with Catalog(Path(tmp) / "photos.db", write=True) as catalog:  # the grouping alone, again from scratch
            catalog.db.execute(f"update [{TABLE}] set duplicate_group = null, duplicate_keeper = null")
            catalog.db.execute(f"delete from [{META_TABLE}] where key = 'duplicates_version'")
            catalog.db.conn.commit()
            started = time.perf_counter()
            update_groups(catalog)
            grouping = time.perf_counter() - started
        result = score_groups(groups_in(Path(tmp) / "photos.db", folder), originals, copies)
    print(f"{len(originals)} originals, {len(copies)} copies; build with grouping {elapsed:.1f} s, the grouping alone "
          f"{grouping:.1f} s ({summary.duplicates})")
    print(f"pair precision {result.precision:.3f}  recall {result.recall:.3f}  "
          f"({result.predicted_pairs} pairs predicted, {result.true_pairs} true)")
    print("| transform | copies found |")
    print("|---|---|")
    for name, recall in result.per_transform.items():
        print(f"| {name} | {recall:.2f} |")


if __name__ == "__main__":
    main()
