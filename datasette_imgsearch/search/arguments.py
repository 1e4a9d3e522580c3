"""The arguments beside a query, checked the same way at every door: how many results (``k``), the
cut-off (``min_score``), and the rows to rank among (``candidates``)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Final, Literal, Union

import numpy as np

from datasette_imgsearch.errors import QueryError
from datasette_imgsearch.search.parse import MAX_ROW_ID

STRONG_ONLY: Final = "strong"


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
    ids = _strict_ids(text[1:-1])
    if ids is None:
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}: whole numbers in JSON, such as [3, 17, 42]")
    clamped = len(ids) and int(ids.max()) == MAX_ROW_ID and str(MAX_ROW_ID) not in text  # numpy clamps overflow
    if clamped:
        raise QueryError(f"candidates must be {CANDIDATES_WANTED}")
    return ids


# What each byte of a JSON array of whole numbers may be: 1 a digit, 2 a comma, 3 white space, 0 nothing.
_ID_TEXT = np.zeros(256, dtype=np.uint8)
_ID_TEXT[ord("0"):ord("9") + 1] = 1
_ID_TEXT[ord(",")] = 2
_ID_TEXT[[ord(" "), ord("\t"), ord("\n"), ord("\r")]] = 3


def _strict_ids(inner: str) -> np.ndarray | None:
    """The numbers between the brackets of a JSON array of whole numbers, or None when it is anything else
    (``1,2,``, ``+1``, ``007``, ``1 2``, a sign, a fraction, a digit of another script). Checked a byte
    at a time with numpy, then read by numpy: JSON's parser takes several times as long."""
    try:
        raw = np.frombuffer(inner.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        return None
    kind = _ID_TEXT[raw]
    if not kind.all():
        return None
    digit = kind == 1
    starts = digit.copy()
    starts[1:] &= ~digit[:-1]
    numbers = int(np.count_nonzero(starts))
    commas = inner.count(",")
    if numbers != (commas + 1 if numbers or commas else 0):  # one comma between each two numbers, no more
        return None
    before_digit = np.zeros_like(digit)
    before_digit[:-1] = digit[1:]
    if (starts & (raw == ord("0")) & before_digit).any():  # a leading zero
        return None
    return np.fromstring(inner, dtype=np.int64, sep=",") if numbers else np.zeros(0, dtype=np.int64)


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
    if isinstance(value, str) and not value.isascii():
        raise QueryError(f"{name} must be {wanted} in ASCII digits, not {value[:20]!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise QueryError(f"{name} must be {wanted}, not {value!r}") from None
    if not math.isfinite(number):
        raise QueryError(f"{name} must be {wanted}, not {value!r}")
    return number
