"""services.bench.request_plan: the interleaved plan of a run and the seeded Poisson arrivals."""

from __future__ import annotations

import numpy as np

from services.bench.request_plan import poisson_offsets, request_plan


def test_request_plan_interleaves_versions_on_the_same_image_order() -> None:
    plan = request_plan(("1", "2"), n_images=3, requests=4, warmup=2)
    assert [p.seq for p in plan] == list(range(12))
    assert [(p.version, p.image_index, p.warmup) for p in plan[:4]] == [
        ("1", 0, True), ("2", 0, True), ("1", 1, True), ("2", 1, True)]
    measured = [p for p in plan if not p.warmup]
    assert [p.version for p in measured] == ["1", "2"] * 4
    assert [p.image_index for p in measured] == [0, 0, 1, 1, 2, 2, 0, 0]  # starts again at image 0, cycles
    assert all(a.pair == b.pair for a, b in zip(measured[::2], measured[1::2]))
    assert [p.version for p in request_plan(("2",), 1, 3, 0)] == ["2", "2", "2"]


def test_poisson_offsets_are_seeded_start_at_zero_and_have_the_asked_rate() -> None:
    a = poisson_offsets(20_000, rate=20.0, seed=7)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    assert np.array_equal(a, poisson_offsets(20_000, 20.0, 7))
    assert not np.array_equal(a[:50], poisson_offsets(50, 20.0, 8))
    gaps = np.diff(a)
    assert abs(gaps.mean() - 1 / 20) < 0.05 * (1 / 20)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential gaps: coefficient of variation 1
    assert len(poisson_offsets(0, 1.0, 0)) == 0
