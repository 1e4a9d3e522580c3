"""The query language: one code path for the CLI, SQL functions, the page and JSON.

A query is plain text, ``row:123`` ("more like row 123", the row itself left out of the results), or
a weighted sum and difference of such terms: ``2:dog + beach - night``. Signs must stand apart with
spaces, so ``t-shirt`` stays one word; a weight is a number and a colon in front of a term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datasette_imgsearch.errors import QueryError

MAX_QUERY_LENGTH = 1000
MAX_TERMS = 16
MAX_WEIGHT = 1000.0
MAX_ROW_ID = 2**63 - 1  # SQLite's largest integer
_SIGN = re.compile(r"(?:(?<=\s)|^)([+-])(?=\s|$)")
_WEIGHT = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*:\s*(.*)$", re.S)
_ROW = re.compile(r"^row:\s*(\S*)$", re.I)


@dataclass(frozen=True)
class Term:
    weight: float
    text: str | None = None
    row: int | None = None


def parse(query: str) -> list[Term]:
    """Split a query into weighted terms, or raise :class:`QueryError` saying what is wrong."""
    if not isinstance(query, str):
        raise QueryError("the query must be text, for example imgsearch('a red circle')")
    query = query.strip()
    if not query:
        raise QueryError("the query is empty: type what to look for, e.g. 'a dog on a beach' or 'row:12'")
    if len(query) > MAX_QUERY_LENGTH:
        raise QueryError(f"the query is {len(query)} characters long; the limit is {MAX_QUERY_LENGTH}")
    pieces = _SIGN.split(query)
    chunks = [("+", pieces[0])] + list(zip(pieces[1::2], pieces[2::2]))
    terms: list[Term] = []
    for sign, chunk in chunks:
        chunk = chunk.strip()
        if not chunk:
            if sign == "+" and len(terms) == 0 and len(chunks) > 1:
                continue  # a query that starts with a sign
            raise QueryError(f"a '{sign}' in {query!r} has no term after it")
        weight = 1.0
        match = _WEIGHT.match(chunk)
        if match:
            weight, chunk = float(match.group(1)), match.group(2).strip()
            if not chunk:
                raise QueryError(f"the weight {match.group(1)}: has no term after it")
            if weight > MAX_WEIGHT:
                raise QueryError(f"the weight {match.group(1)[:20]}: is too large; weights go up to {MAX_WEIGHT:g}")
        if sign == "-":
            weight = -weight
        row = _ROW.match(chunk)
        if row:
            if not (row.group(1).isascii() and row.group(1).isdigit()):
                raise QueryError(f"row: takes a row id, as in row:12, not {row.group(1)!r}")
            if int(row.group(1)) > MAX_ROW_ID:
                raise QueryError(f"row:{row.group(1)[:30]} is not in the catalog (row ids go up to {MAX_ROW_ID})")
            terms.append(Term(weight, row=int(row.group(1))))
        else:
            terms.append(Term(weight, text=chunk))
    if len(terms) > MAX_TERMS:
        raise QueryError(f"the query has {len(terms)} terms; the limit is {MAX_TERMS}")
    return terms
