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

Strength is given for text queries only; a picture compared with pictures (an upload or a ``row:``
term) scores on another scale.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import numpy as np

NULL_TEXT_COUNT = 200
STRONG = 0.99
SEED = 20260101


def random_texts(count: int = NULL_TEXT_COUNT, seed: int = SEED) -> list[str]:
    """``count`` strings of one to four random "words" of letters, digits and punctuation."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits + "!?.,'-"
    return [" ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(rng.randint(1, 4)))
            for _ in range(count)]


@dataclass(frozen=True)
class Calibration:
    """The best score each random string finds in one catalog, sorted."""

    best: np.ndarray

    def strength(self, score: float) -> float:
        """The share of random strings whose best match in the catalog scores below ``score``."""
        return float(np.searchsorted(self.best, score, side="left")) / len(self.best)

    @property
    def strong_score(self) -> float:
        """The lowest cosine that is strong: above the best match of ``STRONG`` of the random strings."""
        return float(np.nextafter(float(self.best[int(np.ceil(STRONG * len(self.best))) - 1]), np.inf))
