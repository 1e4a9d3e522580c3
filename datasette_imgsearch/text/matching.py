"""Finding rows by the words in their pictures (and their EXIF description and keywords).

A query's plain words rank the rows whose text holds them; ``"quoted words"`` must appear in a picture's
text. Both match substrings in any script: the catalog's full-text index uses SQLite's trigram
tokenizer, so ``咖啡`` finds ``咖啡店`` and ``open`` finds ``OPEN 24 HOURS``. The trigram index answers
words of three characters or more. A shorter word is looked for only when it is not plain ASCII (a
two-character Chinese word means something, ``a`` or ``of`` does not), by a scan of the partial indexes
that hold only the rows with words; where a catalog has no trigram index (SQLite without it, or without
FTS5), every word and phrase is looked for that way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasette_imgsearch.catalog.catalog import Catalog, image_columns
from datasette_imgsearch.catalog.schema import FTS_TABLE, TABLE

MATCHED_ROWS = 20_000  # the most text matches a query ranks
SEARCHED_COLUMNS = ("text", "description", "keywords")
_QUOTED = re.compile(r'"([^"]*)"')
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


@dataclass(frozen=True)
class TextQuery:
    """The text side of a query: words that rank (any may match) and phrases every hit must contain."""

    words: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.words or self.phrases)


def split_query(query: str) -> tuple[str, tuple[str, ...]]:
    """``query`` without its double quotes (what the picture model reads), and the quoted phrases."""
    if not isinstance(query, str):
        return query, ()
    phrases = tuple(phrase.strip() for phrase in _QUOTED.findall(query) if phrase.strip())
    return " ".join(query.replace('"', " ").split()) if '"' in query else query, phrases


def words_of(text: str) -> tuple[str, ...]:
    """The words of a query term that can be looked for in text: three characters or more, or any
    length in a script other than ASCII."""
    return tuple(word for word in _WORD.findall(text) if len(word) >= 3 or not word.isascii())


def text_search_columns(catalog: Catalog) -> tuple[bool, str | None]:
    """Whether a catalog has the words of its pictures (schema 6), and its full-text index's tokenizer
    (``trigram``, ``unicode61``) or None where it has none; read again only after its schema changed."""
    return catalog.by_schema("text search", _text_search_columns)


def _text_search_columns(conn: Any) -> tuple[bool, str | None]:
    if "text" not in image_columns(conn):
        return False, None
    row = conn.execute("select sql from sqlite_master where name = ?", [FTS_TABLE]).fetchone()
    if not row:
        return True, None
    return True, "trigram" if "trigram" in row[0] else "unicode61"


def matches(catalog: Catalog, words: tuple[str, ...], tokenizer: str | None, candidates: np.ndarray | None) -> dict[int, int]:
    """Rows whose text, description or keywords hold any of ``words``, with how many of the words each
    holds; only among ``candidates`` when given, and at most ``MATCHED_ROWS`` (those holding the most,
    then the lowest ids), so that scoring them afterwards stays bounded when every picture holds a word."""
    counts: dict[int, int] = {}
    for word in dict.fromkeys(word.lower() for word in words):
        for id_ in _containing(catalog, word, tokenizer, SEARCHED_COLUMNS):
            counts[id_] = counts.get(id_, 0) + 1
    found = np.fromiter(counts, dtype=np.int64, count=len(counts))
    if candidates is not None:
        found = found[np.isin(found, candidates)]
    kept = sorted(found.tolist(), key=lambda id_: (-counts[id_], id_))[:MATCHED_ROWS]
    return {id_: counts[id_] for id_ in kept}


def containing(catalog: Catalog, phrases: tuple[str, ...], tokenizer: str | None) -> np.ndarray:
    """The ids of rows whose picture's text holds every one of ``phrases`` (case aside for ASCII)."""
    found: set[int] | None = None
    for phrase in phrases:
        ids = set(_containing(catalog, phrase, tokenizer, ("text",)))
        found = ids if found is None else found & ids
    return np.array(sorted(found or ()), dtype=np.int64)


def _containing(catalog: Catalog, phrase: str, tokenizer: str | None, columns: tuple[str, ...]) -> set[int]:
    """Rows with ``phrase`` in any of ``columns``, case aside: the trigram index answers a phrase of three
    characters or more; anything shorter, or a catalog without that index, is a scan of each column's
    partial index (which holds only the rows with a value there, and nothing else of them)."""
    if tokenizer == "trigram" and len(phrase) >= 3:
        match = "{" + " ".join(columns) + "} : " + '"' + phrase.replace('"', '""') + '"'
        return {row[0] for row in catalog.db.execute(f"select rowid from [{FTS_TABLE}] where [{FTS_TABLE}] match ?", [match])}
    found: set[int] = set()
    cased = any(letter.isascii() and letter.isalpha() for letter in phrase)  # SQLite's lower() folds ASCII only
    for column in columns:
        condition = f"instr(lower([{column}]), lower(?))" if cased else f"instr([{column}], ?)"
        found.update(row[0] for row in catalog.db.execute(
            f"select id from [{TABLE}] where [{column}] != '' and {condition} > 0", [phrase]))
    return found


def snippet(text: str | None, query: TextQuery, width: int = 80) -> str | None:
    """The part of ``text`` around the first word or phrase of ``query`` it holds, for a result's caption."""
    if not text:
        return None
    lowered = text.lower()
    for needle in query.phrases + query.words:
        at = lowered.find(needle.lower())
        if at >= 0:
            start = max(0, at - width // 2)
            piece = text[start:start + width].replace("\n", " · ")
            return ("…" if start else "") + piece + ("…" if start + width < len(text) else "")
    return None


def matched_lines(lines: list[dict[str, Any]], query: TextQuery) -> list[dict[str, Any]]:
    """The lines (as stored in ``text_lines``) that hold a word or phrase of ``query``: what a page outlines."""
    needles = [needle.lower() for needle in query.phrases + query.words]
    return [line for line in lines if any(needle in str(line.get("text", "")).lower() for needle in needles)]


def explanation(text: str | None, lines_json: str | None, query: TextQuery) -> dict[str, Any]:
    """Why a row matched a query by its text, for every door: a snippet of the text around the match, and
    the matching lines with their boxes (in the upright picture's pixels)."""
    try:
        lines = json.loads(lines_json) if lines_json else []
    except ValueError:
        lines = []
    return {"text_snippet": snippet(text, query), "text_boxes": matched_lines(lines if isinstance(lines, list) else [], query)}


def explanations(conn: Any, ids: list[int], query: TextQuery) -> dict[int, dict[str, Any]]:
    """:func:`explanation` of each of ``ids`` (rows matched by their text), with the row's whole ``text``."""
    if not ids:
        return {}
    rows = conn.execute(f"select id, text, text_lines from [{TABLE}] where id in ({', '.join('?' for _ in ids)})", ids)
    return {id_: {"text": text, **explanation(text, lines, query)} for id_, text, lines in rows}
