"""A perceptual hash that sees a picture turned or mirrored as the same picture.

The hash is the sign of the 63 lowest non-constant frequencies of the picture's 2-D cosine transform
(its 32 × 32 grey version), one bit each: like the well-known pHash, but thresholded at zero rather than
at the median. That choice makes the hash of a turned or mirrored picture a function of the hash alone:
mirroring a picture left to right negates exactly the coefficients of odd horizontal frequency (so it
flips those bits), and transposing it swaps the two frequency axes (so it transposes the 8 × 8 bit
block). The eight turns and mirrors of a picture are therefore eight bit operations on one stored
integer, and no picture has to be decoded again to compare it with a turned copy. Brightness and
contrast edits leave the signs as they are, and resizing or re-compression move few of them.

The cosine transform is a product of two 32 × 32 matrices, written out with numpy rather than taken
from SciPy, which this package does not otherwise need.

The hash only proposes pairs. :func:`pixel_likeness` measures, from the two thumbnails: their colours
at 32 × 32 after each is centred and scaled (so brightness and contrast edits do not count), compared in
every turn and across the trims of up to a tenth that a person makes when cropping a picture.
:func:`corner_likeness` measures the same with one corner left out, where a caption or a watermark goes.
"""

from __future__ import annotations

import functools
from typing import Iterable

import numpy as np
import numpy.typing as npt
from PIL import Image

from datasette_imgsearch.images import pixels

SIDE = 32  # the grey picture the transform reads
BLOCK = 8  # the lowest frequencies kept, per axis: 64 bits, the first (the mean) always 0
BITS = BLOCK * BLOCK
_x = np.arange(SIDE)
_TRANSFORM = np.cos(np.pi * (2 * _x[None, :] + 1) * np.arange(BLOCK)[:, None] / (2 * SIDE))  # (BLOCK, SIDE)
_WEIGHTS = (1 << np.arange(BITS, dtype=np.uint64)).reshape(BLOCK, BLOCK)
# Mirroring left to right negates the coefficients of odd horizontal frequency v; top to bottom, odd u.
_ODD_V = int(sum(1 << (u * BLOCK + v) for u in range(BLOCK) for v in range(BLOCK) if v % 2))
_ODD_U = int(sum(1 << (u * BLOCK + v) for u in range(BLOCK) for v in range(BLOCK) if u % 2))
TURNS = ("as is", "mirrored", "upside down", "turned 180°", "transposed", "turned 90° clockwise", "turned 90° anticlockwise",
         "transverse")


def likeness_hash(image: Image.Image) -> int:
    """The picture's 64-bit hash, as a signed integer (the form SQLite stores)."""
    grey = np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float64)
    coefficients = _TRANSFORM @ grey @ _TRANSFORM.T
    bits = coefficients > 1e-6 * max(1.0, float(np.abs(coefficients).max()))
    bits[0, 0] = False  # the mean brightness: always positive, so it carries nothing
    return int(np.sum(_WEIGHTS[bits], dtype=np.uint64).astype(np.int64))


def turned(codes: np.ndarray) -> np.ndarray:
    """The hashes of each picture turned and mirrored in all eight ways, as an (n, 8) int64 array; the
    first column is the picture as it is (see ``TURNS`` for the order)."""
    codes = np.asarray(codes, dtype=np.int64).view(np.uint64).reshape(-1)
    transposed = _transpose(codes)
    columns = []
    for base in (codes, transposed):
        for mask in (0, _ODD_V, _ODD_U, _ODD_V ^ _ODD_U):  # turning by 180° is both mirrorings
            columns.append(base ^ np.uint64(mask))
    return np.stack(columns, axis=1).view(np.int64)


def distance(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """How many of the bits differ between the hashes ``a`` and ``b`` (broadcast)."""
    differing = np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)).view(np.uint64)
    return np.unpackbits(differing[..., None].view(np.uint8), axis=-1).sum(axis=-1)


def _transpose(codes: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(codes[:, None].view(np.uint8), axis=1, bitorder="little").reshape(-1, BLOCK, BLOCK)
    return np.packbits(bits.transpose(0, 2, 1).reshape(-1, BITS), axis=1, bitorder="little").view(np.uint64).reshape(-1)


SIGNATURE_SIDE = 32
BASE_SIDE = 128  # a thumbnail is first resized to this square, once; every window is averaged from it
# The spans of one side that a crop of up to a tenth leaves: the whole, then 5% and 10% trims at four
# offsets each. A window is a span across by a span down, both of one trim.
_TRIMS = (0.05, 0.1)
_OFFSETS = (0.0, 1 / 3, 2 / 3, 1.0)
_SPANS = [(0.0, 1.0)] + [(offset * trim, offset * trim + 1 - trim) for trim in _TRIMS for offset in _OFFSETS]
_WINDOWS = [(0, 0)] + [
    (1 + t * len(_OFFSETS) + x, 1 + t * len(_OFFSETS) + y)
    for t in range(len(_TRIMS)) for x in range(len(_OFFSETS)) for y in range(len(_OFFSETS))
]  # (span across, span down)


def _averaging(start: float, end: float) -> np.ndarray:
    """The (SIGNATURE_SIDE, BASE_SIDE) matrix that averages the base pixels of a span into cells, each
    base pixel weighted by how much of it falls in the cell (what a box resize of a fractional box does)."""
    edges = (start + (end - start) * np.arange(SIGNATURE_SIDE + 1) / SIGNATURE_SIDE) * BASE_SIDE
    pixel = np.arange(BASE_SIDE)
    overlap = np.clip(np.minimum(edges[1:, None], pixel[None, :] + 1) - np.maximum(edges[:-1, None], pixel[None, :]), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


_AVERAGING = np.stack([_averaging(start, end) for start, end in _SPANS])  # (spans, SIGNATURE_SIDE, BASE_SIDE)
_DOWN = [y for _, y in _WINDOWS]
_ACROSS = np.ascontiguousarray(_AVERAGING[[x for x, _ in _WINDOWS]].transpose(0, 2, 1))  # (windows, BASE_SIDE, SIDE)


class Signatures:
    """One thumbnail's small colour signatures: each turn of the whole, and (made when first needed) each
    window a trim of up to a tenth leaves, as centred unit vectors. Computed once per picture, compared
    with many."""

    def __init__(self, thumbnail: bytes) -> None:
        image = pixels.decode(thumbnail).image.resize((BASE_SIDE, BASE_SIDE), Image.Resampling.BOX)
        self._base = np.asarray(image, dtype=np.float32).reshape(BASE_SIDE, BASE_SIDE * 3)  # (down, across × colour)
        whole = (_AVERAGING[0] @ self._base).reshape(SIGNATURE_SIDE, BASE_SIDE, 3).transpose(0, 2, 1) @ _AVERAGING[0].T
        whole = whole.transpose(0, 2, 1)  # (down, across, colour)
        turns = [variant for upright in (whole, whole.transpose(1, 0, 2))
                 for variant in (upright, upright[:, ::-1], upright[::-1, :], upright[::-1, ::-1])]
        self.turns = _unit(np.stack(turns))

    @functools.cached_property
    def windows(self) -> np.ndarray:
        # Each span down averaged into cells, then each window's span across: (windows, down, colour, across).
        down = (_AVERAGING @ self._base).reshape(len(_SPANS), SIGNATURE_SIDE, BASE_SIDE, 3).transpose(0, 1, 3, 2)
        rows = np.ascontiguousarray(down[_DOWN]).reshape(len(_WINDOWS), SIGNATURE_SIDE * 3, BASE_SIDE)
        cells = (rows @ _ACROSS).reshape(len(_WINDOWS), SIGNATURE_SIDE, 3, SIGNATURE_SIDE).transpose(0, 1, 3, 2)
        return _unit(cells)


def _unit(cells: np.ndarray) -> np.ndarray:
    """Each signature centred on its mean and scaled to length 1, flattened: (n, SIDE * SIDE * 3)."""
    flat = cells.reshape(len(cells), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.ascontiguousarray(flat / np.maximum(norms, 1e-6))


_INVERSE = (0, 1, 2, 3, 4, 6, 5, 7)  # undoing a turn: only the two quarter turns swap


def pixel_likeness(first: Signatures, second: Signatures, turns: Iterable[int] = range(8),
                   enough: float = 2.0) -> tuple[float, float]:
    """How alike two pictures look where they align best (over the ``turns`` of the second, as numbered
    in ``TURNS``, and every trim of up to a tenth of either): the correlation of their centred colours,
    from -1 to 1, over the whole picture and over all but the twentieth that differs most (what a small
    overlay or a crop's edge covers). Whole pictures that already correlate at ``enough`` are not trimmed."""
    allowed = sorted(set(turns))
    whole = first.turns[0] @ second.turns[allowed].T
    if whole.max() >= enough:
        a, b = first.turns[0], second.turns[allowed[int(np.argmax(whole))]]
        return float(a @ b), _correlation_leaving_out(a, b, 0.05)
    forward = first.windows @ second.turns[allowed].T  # windows of the first against turns of the second
    backward = second.windows @ first.turns[[_INVERSE[t] for t in allowed]].T
    if forward.max() >= backward.max():
        window, turn = np.unravel_index(int(np.argmax(forward)), forward.shape)
        a, b = first.windows[window], second.turns[allowed[turn]]
    else:
        window, turn = np.unravel_index(int(np.argmax(backward)), backward.shape)
        a, b = second.windows[window], first.turns[_INVERSE[allowed[turn]]]
    return float(a @ b), _correlation_leaving_out(a, b, 0.05)


# A caption, a watermark or a logo sits in a corner, and covers up to about a third of the width and a sixth
# of the height: more than the twentieth of cells that pixel_likeness leaves out, and in one block.
CORNER_ACROSS, CORNER_DOWN = 12, 5  # cells of SIGNATURE_SIDE


def _corner_block(top: bool, left: bool) -> np.ndarray:
    """The positions, in a flattened signature, of one corner's block of cells (each cell's three colours)."""
    block = np.zeros((SIGNATURE_SIDE, SIGNATURE_SIDE), dtype=bool)
    rows = slice(0, CORNER_DOWN) if top else slice(SIGNATURE_SIDE - CORNER_DOWN, SIGNATURE_SIDE)
    columns = slice(0, CORNER_ACROSS) if left else slice(SIGNATURE_SIDE - CORNER_ACROSS, SIGNATURE_SIDE)
    block[rows, columns] = True
    return np.flatnonzero(np.repeat(block.reshape(-1), 3))


_CORNER_BLOCKS = np.stack([_corner_block(top, left) for top in (True, False) for left in (True, False)])  # (4, 180)


def corner_likeness(first: Signatures, second: Signatures, turns: Iterable[int] = range(8)) -> float:
    """How alike two pictures look with one corner left out, in the best of the ``turns`` of the second:
    the correlation of their centred colours outside a ``CORNER_ACROSS`` × ``CORNER_DOWN`` block of cells
    in any corner. So a picture with a caption or a watermark added still matches itself, however much the
    block changed its colours; a different photo of the same scene does not gain from it, since its
    differences are not all in one corner. Trims are not tried with it (they would triple the cost of
    every pair left unconfirmed): a caption added to a cropped copy is not found this way."""
    allowed = sorted(set(turns))
    return float(_correlations_without_corners(first.turns[:1], second.turns[allowed]).max())


def _correlations_without_corners(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The correlations of centred unit signatures ``rows`` and ``columns`` with each corner's block left
    out, (corners, rows, columns), from sums over the blocks alone: a corner costs products of its 180
    values, not a copy of every signature without it."""
    kept = rows.shape[1] - _CORNER_BLOCKS.shape[1]
    rows_block, columns_block = rows[:, _CORNER_BLOCKS], columns[:, _CORNER_BLOCKS]  # (n, corners, 180)
    # Unit signatures sum to 0 and square-sum to 1, so what is kept sums to minus the block's sums.
    rows_sum, columns_sum = -rows_block.sum(axis=2).T, -columns_block.sum(axis=2).T  # (corners, n)
    rows_var = 1 - np.einsum("nck,nck->cn", rows_block, rows_block) - rows_sum ** 2 / kept
    columns_var = 1 - np.einsum("nck,nck->cn", columns_block, columns_block) - columns_sum ** 2 / kept
    blocks = rows_block.transpose(1, 0, 2) @ columns_block.transpose(1, 2, 0)  # (corners, n, m), as a batched product
    products = ((rows @ columns.T)[None] - blocks
                - rows_sum[:, :, None] * columns_sum[:, None, :] / kept)
    return products / np.sqrt(np.maximum(rows_var[:, :, None] * columns_var[:, None, :], 1e-12))


def _correlation_leaving_out(a: np.ndarray, b: np.ndarray, share: float) -> float:
    """The correlation of two signatures without the ``share`` of cells where they differ most."""
    cells_a, cells_b = a.reshape(-1, 3), b.reshape(-1, 3)
    residual = np.linalg.norm(cells_a - cells_b, axis=1)
    keep = np.argsort(residual)[: int(len(residual) * (1 - share))]
    kept_a, kept_b = cells_a[keep] - cells_a[keep].mean(), cells_b[keep] - cells_b[keep].mean()
    norm = float(np.linalg.norm(kept_a) * np.linalg.norm(kept_b))
    return float((kept_a * kept_b).sum() / norm) if norm > 1e-12 else 0.0
