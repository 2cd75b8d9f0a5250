"""The requests of a benchmark run and when they are sent.

:func:`request_plan`: warm-up then measured requests, the versions interleaved on the same image
order, so drift hits every version alike. :func:`poisson_offsets`: the send times of an open
loop's Poisson arrivals, seeded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PlannedRequest:
    """One request of a run: ``seq`` is its place in sending order; ``pair`` its place in the image
    order (the same for every version: v1 and v2 of one image share it)."""

    seq: int
    version: str
    image_index: int
    pair: int
    warmup: bool
    level: int | None = None  # a sweep's level (``services.bench.sweep``)


def request_plan(versions: Sequence[str], n_images: int, requests: int, warmup: int) -> list[PlannedRequest]:
    """Warm-up then measured requests, the versions interleaved on the same image order.

    ``[(v1, img0), (v2, img0), (v1, img1), (v2, img1), ...]``; images repeat cyclically; the
    measured requests start again at image 0.
    """
    if n_images < 1:
        raise ValueError("need at least one image")
    plan: list[PlannedRequest] = []
    seq = itertools.count()
    for is_warm, count in ((True, warmup), (False, requests)):
        for i in range(count):
            for v in versions:
                plan.append(PlannedRequest(next(seq), str(v), i % n_images, i, is_warm))
    return plan


def poisson_offsets(n: int, rate: float, seed: int) -> np.ndarray:
    """Send times (seconds from the start) of ``n`` Poisson arrivals at ``rate`` per second.

    The first request goes at 0; the gaps are exponential with mean ``1 / rate``, drawn from
    ``numpy.random.default_rng(seed)`` (the same seed gives the same schedule).
    """
    if n <= 0:
        return np.zeros(0)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])
