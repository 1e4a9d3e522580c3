"""Which text model reads each term of a query: CLIP's own text tower for English, a multilingual one otherwise.

CLIP's text tower learned English: in Chinese it is close to noise (docs/query-language.md),
while a multilingual student distilled into the same space (sentence-transformers'
``clip-ViT-B-32-multilingual-v1``) reads fifty languages and needs no re-embedded images. The
student is a little weaker in English than the tower it copies, so each term goes where it reads
best, and terms of both kinds add up in one query: ``红色的圆 - 红色 + blue``.
"""

from __future__ import annotations

from datasette_imgsearch.errors import QueryError

ROUTES = ("auto", "clip", "multilingual")
NO_MODEL = "none"  # recorded (or given) to switch the multilingual model off
DEFAULT_MULTILINGUAL = {"clip-ViT-B-32": "clip-ViT-B-32-multilingual-v1"}
CLIP = "clip"
MULTILINGUAL = "multilingual"


def english_like(text: str) -> bool:
    """Whether a term is written in plain ASCII, the script CLIP's tokenizer and training text are made of.

    A rule a person can predict beats a language guess on two-word queries, which guessers get wrong
    often. Other alphabets, CJK, and Latin letters with accents (``café``, ``Straße``) go to the
    multilingual model; accentless text in other languages (``un chien``) reads as English unless
    the route is ``multilingual``."""
    return text.isascii()


def check_route(route: str) -> str:
    if route not in ROUTES:
        raise QueryError(f"unknown route {route!r}: use one of {', '.join(ROUTES)}")
    return route


def multilingual_model(image_model: str, recorded: str | None, override: str | None = None) -> str | None:
    """The multilingual text model of a catalog: the override, else what the catalog records, else the
    default for its image model (only ``clip-ViT-B-32`` has one); ``none`` at any step means none."""
    chosen = override or recorded or DEFAULT_MULTILINGUAL.get(image_model)
    return None if chosen in (None, "", NO_MODEL) else chosen


def reader_of(text: str, route: str, multilingual: str | None) -> str:
    """``clip`` or ``multilingual``: which model reads the term ``text`` under ``route``."""
    if route == CLIP:
        return CLIP
    if route == MULTILINGUAL:
        if multilingual is None:
            raise QueryError(
                "the route is 'multilingual', but this catalog has no multilingual text model: "
                "set one with --multilingual-model (or the multilingual_model setting)"
            )
        return MULTILINGUAL
    return CLIP if multilingual is None or english_like(text) else MULTILINGUAL
