"""A catalog's vectors as one consistent snapshot, kept in step with the file on disk.

A snapshot is a *base* read in full once (the sibling FAISS index when it is the file this catalog
wrote, else the stored embeddings) and a *delta*: the rows the change log (catalog/migrations.py) names
as changed since, read on their own, which hide their old vectors in the base. Whatever changes on
disk (a build commits, a re-embed switches models, the index is rewritten) changes the *fingerprint*;
the next reader then catches up from the change log instead of reading every vector again. A new index
file, a new model, or a delta that has outgrown its share of the base is a full load. Connections are
read-only (``immutable`` for files Datasette serves with ``-i``): nothing here writes, or creates a file
beside the catalog.
"""

from __future__ import annotations

import itertools
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasette_imgsearch.catalog.catalog import Catalog
from datasette_imgsearch.catalog.schema import index_path
from datasette_imgsearch.errors import CatalogError
from datasette_imgsearch.lru import LRU
from datasette_imgsearch.vectors import int8pass
from datasette_imgsearch.vectors.index import flat_vectors, index_state, read_index
from datasette_imgsearch.vectors.ranking import unique_ids

# A delta is carried until it outgrows this share of its base (and this many rows): past that, reading
# everything once is cheaper than carrying it.
CATCH_UP_SHARE = 0.25
CATCH_UP_MIN_ROWS = 20_000
# Row ids are looked up through a table from id to position when there are at most this many possible
# ids per row, else by binary search.
ID_TABLE_SLACK = 4


@dataclass
class Base:
    """Vectors read in full once: from the index file, or from the stored embeddings, as of ``version``.

    A base outlives many catalog versions: the rows changed since are a :class:`Delta` beside it."""

    version: int
    vectors_from: str
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    matrix: np.ndarray | None = None
    faiss: Any = None
    index_type: str = "flat"
    largest_id: int | None = None  # no row with a larger id is in the base (None: not known)
    best: LRU[np.ndarray] = field(default_factory=lambda: LRU(4))  # best scores over the base, per probe set
    rough: Any = None  # the copy of ``matrix`` a first pass reads, made by :meth:`first_pass` when a search wants it
    rough_made: bool = False  # whether :meth:`first_pass` tried to (8-bit codes cannot be made of every matrix)
    row_of_id: np.ndarray | None = None  # id -> position in ``ids`` (-1: none), for ids dense enough to index
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def size(self) -> int:
        return int(self.faiss.ntotal) if self.faiss is not None else len(self.ids)

    def first_pass(self, bfloat16_from_rows: int, int8_from_rows: int) -> Any:
        """The copy of the matrix that a search reads first, or None to read the matrix itself: in a process
        that has loaded torch, a bfloat16 tensor from ``bfloat16_from_rows`` rows; in one on ONNX Runtime,
        which a bfloat16 pass would make import torch, 8-bit codes from ``int8_from_rows`` rows."""
        torch = sys.modules.get("torch")
        from_rows = int8_from_rows if torch is None else bfloat16_from_rows
        if self.matrix is None or len(self.matrix) < from_rows or (torch is None and not int8pass.available()):
            return None
        with self._lock:
            if not self.rough_made:
                self.rough = int8pass.table_for(self.matrix) if torch is None else torch.from_numpy(self.matrix).bfloat16()
                self.rough_made = True
            return self.rough

    def positions(self, wanted: np.ndarray, hidden_positions: np.ndarray | None = None) -> np.ndarray:
        """Where the wanted row ids (any order, repeats allowed) sit in ``ids``, ascending and unique; ids
        that are not there, and ``hidden_positions``, are left out.

        Repeats go by a mask over the rows, never by sorting the candidates, which was slow for ids in
        the order an index on another column gives them."""
        ids = self.ids
        if len(ids) == 0 or len(wanted) == 0:
            return np.zeros(0, dtype=np.int64)
        table = self._id_table()
        if table is not None:
            inside = wanted[(wanted >= 0) & (wanted <= int(ids[-1]))]
            found = table[inside]
            found = found[found >= 0]
        else:
            found = np.searchsorted(ids, wanted)
            inside = found < len(ids)
            found = found[inside]
            found = found[ids[found] == wanted[inside]]
        chosen = np.zeros(len(ids), dtype=bool)
        chosen[found] = True
        if hidden_positions is not None:
            chosen[hidden_positions] = False
        return np.flatnonzero(chosen)

    def _id_table(self) -> np.ndarray | None:
        """The table from id to position, made once, where ids are dense enough (``ID_TABLE_SLACK``)."""
        ids = self.ids
        largest = int(ids[-1])
        if self.row_of_id is None and 0 <= int(ids[0]) and largest < ID_TABLE_SLACK * len(ids):
            with self._lock:
                if self.row_of_id is None:
                    table = np.full(largest + 1, -1, dtype=np.int32 if len(ids) < 2**31 else np.int64)
                    table[ids] = np.arange(len(ids))
                    self.row_of_id = table
        return self.row_of_id


_delta_serials = itertools.count(1)


@dataclass(frozen=True)
class Delta:
    """The rows whose embedding changed since the base was read: their vectors now (rows that were
    removed have none), and the base rows they hide."""

    ids: np.ndarray  # ascending
    matrix: np.ndarray
    hidden: np.ndarray  # ids of base rows changed or removed since, ascending
    hidden_positions: np.ndarray  # where those sit in ``Base.ids`` (a base held as a matrix)
    # A build adds rows at the end: a delta that only appended rows to another names it, so what was
    # computed over that one's rows (the calibration's best scores) is extended, not redone.
    appended_to: int = 0  # the serial of that delta (0: none)
    serial: int = field(default_factory=lambda: next(_delta_serials))

    @classmethod
    def empty(cls, dimension: int) -> "Delta":
        none = np.zeros(0, dtype=np.int64)
        return cls(none, np.zeros((0, dimension), dtype=np.float32), none, none)

    @property
    def rows(self) -> int:
        return len(self.ids) + len(self.hidden)

    def updated(self, base: Base, changed: np.ndarray, catalog: Catalog) -> "Delta":
        """This delta with the rows in ``changed`` read again from ``catalog`` (rows removed since have
        no vector), hiding their old vectors in ``base``."""
        if not len(changed):
            return self
        found_ids, found_matrix = catalog.embeddings_of(changed)  # in id order
        keep = ~np.isin(self.ids, changed)
        kept = bool(keep.all())
        # Appended: every row of the delta kept, every row found after them, so they stay its first rows.
        appended = kept and (not len(self.ids) or not len(found_ids) or int(found_ids[0]) > int(self.ids[-1]))
        ids, matrix = in_id_order(np.concatenate([self.ids if kept else self.ids[keep], found_ids]),
                                  np.concatenate([self.matrix if kept else self.matrix[keep], found_matrix]))
        if base.matrix is not None:
            positions = unique_ids(self.hidden_positions, base.positions(changed))
            hidden = base.ids[positions]
        else:
            in_base = changed if base.largest_id is None else changed[changed <= base.largest_id]
            hidden, positions = unique_ids(self.hidden, in_base), self.hidden_positions
        return Delta(ids, matrix, hidden, positions, appended_to=self.serial if appended else 0)


@dataclass(frozen=True)
class ModelFacts:
    """What a snapshot's vectors mean, as the catalog records it; a change of any of it is a full load."""

    model: str
    text_model: str | None
    dimension: int
    multilingual_model: str | None  # as recorded; languages.multilingual_model resolves the default

    @classmethod
    def of(cls, meta: dict[str, Any]) -> "ModelFacts":
        return cls(meta["model"], meta.get("text_model"), int(meta["dimension"]), meta.get("multilingual_model"))


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of a catalog at ``version``: what its vectors mean, a base and the delta since.

    A query takes one snapshot and uses it throughout, so a query that runs while a re-embed switches
    models never mixes the old model with the new vectors."""

    fingerprint: tuple[Any, ...]
    facts: ModelFacts
    version: int
    base: Base
    delta: Delta

    @property
    def model(self) -> str:
        return self.facts.model

    @property
    def text_model(self) -> str | None:
        return self.facts.text_model

    @property
    def dimension(self) -> int:
        return self.facts.dimension

    @property
    def multilingual_model(self) -> str | None:
        return self.facts.multilingual_model

    @property
    def size(self) -> int:
        return self.base.size - len(self.delta.hidden) + len(self.delta.ids)

    @property
    def vectors_from(self) -> str:
        if not self.delta.rows:
            return self.base.vectors_from
        changed = len(unique_ids(self.delta.ids, self.delta.hidden))
        return f"{self.base.vectors_from}, caught up with {changed} row{'s' * (changed != 1)} changed since"

    def caught_up(self, fingerprint: tuple[Any, ...], version: int, changed: np.ndarray, catalog: Catalog) -> "Snapshot | None":
        """This snapshot moved to ``version`` by the rows in ``changed``; None when the delta would outgrow
        its base, so that a full load is cheaper."""
        delta = self.delta.updated(self.base, changed, catalog)
        if delta.rows > max(CATCH_UP_MIN_ROWS, CATCH_UP_SHARE * self.base.size):
            return None
        return Snapshot(fingerprint, self.facts, version, self.base, delta)


class Snapshots:
    """The current snapshot of one catalog, caught up (or reloaded) whenever the catalog has changed."""

    def __init__(self, db_path: str | Path, immutable: bool = False) -> None:
        self.db_path = Path(db_path)
        self.immutable = immutable
        self._lock = threading.Lock()
        self._local = threading.local()
        self._current: Snapshot | None = None

    def catalog(self) -> Catalog:
        """This thread's read-only connection to the catalog."""
        catalog = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = Catalog(self.db_path, immutable=self.immutable)
        return catalog

    def fingerprint(self) -> tuple[Any, ...]:
        version = self.catalog().catalog_version
        try:
            info = index_path(self.db_path).stat()
            return version, info.st_mtime_ns, info.st_size, info.st_ino
        except OSError:
            return (version,)

    def current(self) -> Snapshot:
        """The snapshot of the catalog as it is now."""
        fingerprint = self.fingerprint()
        current = self._current
        if current is not None and current.fingerprint == fingerprint:
            return current
        with self._lock:
            if self._current is None or self._current.fingerprint != fingerprint:
                self._current = self._caught_up(self._current, fingerprint) or self._load(fingerprint)
            return self._current

    def _load(self, fingerprint: tuple[Any, ...]) -> Snapshot:
        """Read a base (the index file if it is this catalog's, else the stored embeddings) and the delta
        since it, all from one snapshot of the catalog."""
        with Catalog(self.db_path, immutable=self.immutable) as catalog, catalog.snapshot():
            meta = catalog.all_meta()
            if not meta.get("model") or not meta.get("dimension"):
                raise CatalogError(f"{self.db_path} has no embeddings yet: run 'datasette-imgsearch build' on it first")
            facts = ModelFacts.of(meta)
            version = catalog.catalog_version
            empty = Delta.empty(facts.dimension)
            state = index_state(catalog)
            reason = state.reason
            if state.written_by_catalog:
                base = self._base_from_index(meta)
                changed = np.zeros(0, dtype=np.int64) if state.fresh else catalog.changed_since(base.version)
                if changed is not None:
                    found = Snapshot(fingerprint, facts, base.version, base, empty).caught_up(
                        fingerprint, version, changed, catalog)
                    if found is not None:
                        return found
                    reason = "stale by more changed rows than a catch-up carries"
            base = _base_from_embeddings(catalog, version, f"stored embeddings (exact; index {reason})")
            return Snapshot(fingerprint, facts, version, base, empty)

    def _base_from_index(self, meta: dict[str, Any]) -> Base:
        path = index_path(self.db_path)
        index = read_index(path, meta.get("index_type"))
        largest = meta.get("index_largest_id")
        base = Base(int(meta["index_version"]), "", index_type=meta.get("index_type") or "flat",
                    largest_id=None if largest is None else int(largest))
        flat = flat_vectors(index)
        if flat is not None:  # exact search is fastest as one BLAS matrix-vector product
            base.ids, base.matrix = in_id_order(*flat)
            base.vectors_from = f"{path.name} (exact)"
        else:
            base.faiss = index
            base.vectors_from = f"{path.name} ({base.index_type})"
        return base

    def _caught_up(self, current: Snapshot | None, fingerprint: tuple[Any, ...]) -> Snapshot | None:
        """``current`` brought up to the catalog's version from the change log, or None where a full load
        is needed: the index file changed, the model changed, the log does not reach back, or the delta
        would outgrow its base."""
        if current is None or current.fingerprint[1:] != fingerprint[1:]:
            return None
        catalog = self.catalog()  # this thread's connection: opening one at every commit of a build was slow
        with catalog.snapshot():
            if ModelFacts.of(catalog.all_meta()) != current.facts:
                return None
            changed = catalog.changed_since(current.version)
            if changed is None:
                return None
            return current.caught_up(fingerprint, catalog.catalog_version, changed, catalog)


def _base_from_embeddings(catalog: Catalog, version: int, vectors_from: str) -> Base:
    ids, matrix = catalog.embeddings()
    return Base(version, vectors_from, ids, matrix, largest_id=int(ids[-1]) if len(ids) else 0)


def in_id_order(ids: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by id: filtered search looks rows up by binary search, and a delta keeps its rows so."""
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        order = np.argsort(ids, kind="stable")
        return ids[order], matrix[order]
    return ids, matrix
