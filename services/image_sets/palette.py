"""Colours and random picks shared by the label generator's tables and scene."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Color = tuple[int, int, int]
Rect = tuple[int, int, int, int]  # x1, y1, x2 (exclusive), y2 (exclusive)

PAPERS: tuple[Color, ...] = ((255, 255, 255), (250, 248, 240), (255, 253, 228), (245, 245, 245),
                              (236, 240, 232))
INKS: tuple[Color, ...] = ((0, 0, 0), (20, 20, 20), (45, 30, 20), (10, 40, 20), (15, 25, 70))


def pick(rng: np.random.Generator, seq: Sequence):  # type: ignore[no-untyped-def]
    return seq[int(rng.integers(len(seq)))]


def rand_color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> Color:
    c = rng.integers(lo, hi, size=3)
    return (int(c[0]), int(c[1]), int(c[2]))


def luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def contrast_ink(rng: np.random.Generator, bg: Sequence[float]) -> Color:
    if luma(bg) > 128:
        return pick(rng, INKS)
    return pick(rng, ((255, 255, 255), (250, 245, 220), (255, 230, 120)))
