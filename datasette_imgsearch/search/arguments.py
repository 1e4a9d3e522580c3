"""The arguments beside a query, checked the same way at every door: how many results (``k``), the
cut-off (``min_score``), and the rows to rank among (``candidates``)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal, Union

import numpy as np

from datasette_imgsearch.errors import QueryError
from datasette_imgsearch.search.parse import MAX_ROW_ID

STRONG_ONLY = "strong"


def check_k(k: Any, limit: int) -> int:
    """How many results were asked for: a whole number (or its text) from 1 to ``limit``."""
    value = _number(k, "k", f"a whole number of results from 1 to {limit}")
    if not value.is_integer():
        raise QueryError(f"k must be a whole number of results, not {k!r}")
    if not 1 <= value <= limit:
        raise QueryError(f"k must be between 1 and {limit}, not {k!r}")
    return int(value)


MinScore = Union[float, Literal["strong"], None]


def check_min_score(min_score: Any) -> MinScore:
    """The cut-off: empty means none; ``strong`` means strong matches only (see strength.py); otherwise a
    cosine, as a number (or its text) from -1 to 1."""
    if min_score is None or min_score == "":
        return None
    if isinstance(min_score, str) and min_score.strip().lower() == STRONG_ONLY:
        return STRONG_ONLY
    value = _number(min_score, "min_score", "a number from -1 to 1, or 'strong'")
    if not -1.0 <= value <= 1.0:
        raise QueryError(f"min_score must be between -1 and 1, not {min_score!r}")
    return value


CANDIDATES_WANTED = "a JSON array of row ids, such as (select json_group_array(id) from images where taken >= '2020')"


class Candidates:
    """The rows a search may return: row ids from a JSON array, read only when a search needs them.

    A repeated filtered query is answered from the cache by the digest of the array's text, without
    parsing tens of thousands of ids again."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        self.key = hashlib.blake2b(self.text.encode(), digest_size=16).digest()
        self._ids: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        """The ids as given: in any order (an index on the filtered column decides it), repeats allowed."""
        if self._ids is None:
            self._ids = _parse_ids(self.text)
        return self._ids


def _parse_ids(text: str) -> np.ndarray:
    if not (text.startswith("[") and text.endswith("]")):
        try:
            json.loads(text)
        except ValueError:
            raise QueryError(f"candidates must be {CANDIDATES_WANTED}; this is not JSON: {text[:40]!r}") from None
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}")
    try:  # numpy reads a plain list of integers four times faster than json.loads
        ids = np.fromstring(text[1:-1], dtype=np.int64, sep=",")
    except ValueError:
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}") from None
    clamped = len(ids) and int(ids.max()) == MAX_ROW_ID and str(MAX_ROW_ID) not in text  # numpy clamps overflow
    if clamped or (len(ids) and int(ids.min()) < 0):
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}")
    return ids


def check_candidates(candidates: Any) -> Candidates | None:
    """The rows to rank among, from SQL (what ``json_group_array(id)`` gives); None means every row."""
    if candidates is None:
        return None
    if isinstance(candidates, (bytes, bytearray)):
        candidates = candidates.decode("utf-8", "replace")
    if not isinstance(candidates, str):
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}, not {candidates!r}")
    return Candidates(candidates)


def _number(value: Any, name: str, wanted: str) -> float:
    """A finite number from an int, a float or numeric text (Datasette passes named parameters as text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise QueryError(f"{name} must be {wanted}, not {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise QueryError(f"{name} must be {wanted}, not {value!r}") from None
    if not math.isfinite(number):
        raise QueryError(f"{name} must be {wanted}, not {value!r}")
    return number
