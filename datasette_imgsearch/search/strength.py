"""How strong a match is, in terms a person can read: measured against what random text finds in this catalog.

A raw cosine between a text and a picture means little on its own. CLIP puts every text-picture pair
in a narrow band that differs from model to model and from catalog to catalog, so a cut-off that suits
one query is wrong for the next, and the spread of a query's own scores does not help either: in the
toy world a nonsense query's best match stood out from its other scores as much as a real query's did.

So each catalog is asked a fixed set of random strings (``NULL_TEXT_COUNT`` of them, the same every
time), and each string's best score anywhere in the catalog is kept. Those best scores are what chance
finds here. A result's **strength** is the share of them its score beats: 0.5 is as good as the best
match of a typical random string, 1.0 better than every one. **Strong** (``STRONG``, 0.99) therefore
means the same in every catalog and for every query: fewer than one random string in a hundred finds a
match this good anywhere in the catalog. A nonsense query is random text too, so its best result sits
near 0.5 and is strong about one time in a hundred.

A query with a term that the multilingual model reads is measured against random text in both: the
strings above through CLIP's tower, and strings of CJK characters, Cyrillic and accented words through
the multilingual model, their best scores pooled (so its nonsense has to beat that model's chance too).

Strength is given for text queries only; a picture compared with pictures (an upload or a ``row:``
term) scores on another scale.

Encoding the random strings costs about a second with a full-size text tower, so their vectors are
kept in a small file per model and precision in the user's cache folder (``IMGSEARCH_CACHE``, else
``$XDG_CACHE_HOME/datasette-imgsearch``); a one-off ``search`` then reads them instead. Where that
folder cannot be written (a read-only deployment), they are simply encoded each time the process
starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from datasette_imgsearch.models.names import cache_folder
from datasette_imgsearch.vectors.ranking import Hit

NULL_TEXT_COUNT = 200
STRONG = 0.99
NPY_HEADER_LIMIT = 4096  # the most a .npy header of a plain 2-d array takes
SEED = 20260101
ASCII = string.ascii_lowercase + string.digits + "!?.,'-"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
ACCENTED = "abcdefghijklmnopqrstuvwxyzéèàùçäöüßñ"


def random_texts(count: int = NULL_TEXT_COUNT, seed: int = SEED, foreign: bool = False) -> list[str]:
    """``count`` strings of one to four random "words" of letters, digits and punctuation; with
    ``foreign``, in the scripts the multilingual model reads instead: runs of CJK characters, Cyrillic
    and accented Latin words, in turn."""
    rng = random.Random(seed)

    def word(kind: int) -> str:
        if not foreign:
            return "".join(rng.choice(ASCII) for _ in range(rng.randint(1, 9)))
        if kind == 0:
            return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 6)))
        alphabet = CYRILLIC if kind == 1 else ACCENTED
        letters = [rng.choice(alphabet) for _ in range(rng.randint(2, 9))]
        if kind == 2 and letters[0].isascii():
            letters[0] = rng.choice("éèàùçäöüßñ")  # so that it is never plain ASCII
        return "".join(letters)

    texts = []
    for number in range(count):
        words = [word(number % 3) for _ in range(rng.randint(1, 4 if number % 3 else 2))]
        texts.append(("" if foreign and number % 3 == 0 else " ").join(words))
    return texts


@dataclass(frozen=True)
class Calibration:
    """The best score each random string finds in one catalog, sorted."""

    best: np.ndarray

    def strength(self, score: float) -> float:
        """The share of random strings whose best match in the catalog scores below ``score``."""
        return float(np.searchsorted(self.best, score, side="left")) / len(self.best)

    def rated(self, hit: Hit) -> Hit:
        """``hit`` with its strength, and whether that is strong."""
        strength = self.strength(hit.score)
        return Hit(hit.id, hit.score, strength, strength >= STRONG, hit.text_match)

    @property
    def strong_score(self) -> float:
        """The lowest cosine that is strong: above the best match of ``STRONG`` of the random strings."""
        return float(np.nextafter(float(self.best[int(np.ceil(STRONG * len(self.best))) - 1]), np.inf))


def random_text_vectors(
    identity: object, encode: Callable[[list[str]], np.ndarray], dimension: int, texts: list[str] | None = None
) -> np.ndarray:
    """The vectors of ``texts`` (the random strings) from the model ``identity`` names, ``dimension`` wide:
    from the cache file when it holds exactly such vectors, else encoded with ``encode`` and written there
    (silently skipped where that fails). A cache file is never trusted: see :func:`cached_vectors`."""
    texts = texts if texts is not None else random_texts()
    key = hashlib.sha256(json.dumps([repr(identity), texts]).encode()).hexdigest()[:32]
    path = cache_folder() / f"random-text-{key}.npy"
    vectors = cached_vectors(path, (len(texts), dimension))
    if vectors is not None:
        return vectors
    vectors = np.ascontiguousarray(encode(texts), dtype=np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            np.save(handle, vectors)
        os.replace(handle.name, path)
    except OSError:
        pass
    return vectors


def cached_vectors(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The unit vectors of ``shape`` in the ``.npy`` file at ``path``; None for anything else: no file, not a
    regular file (a FIFO would block the reader), another size than such an array has, another shape or
    type, or values that are not finite unit vectors."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    payload = shape[0] * shape[1] * 4
    if not stat.S_ISREG(info.st_mode) or not payload < info.st_size <= payload + NPY_HEADER_LIMIT:
        return None
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, MemoryError):
        return None
    if vectors.shape != shape or vectors.dtype != np.float32 or not np.isfinite(vectors).all():
        return None
    if not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
        return None
    return vectors
