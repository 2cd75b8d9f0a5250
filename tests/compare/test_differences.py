"""Differences and their bootstrap intervals against hand-computed cases."""

from __future__ import annotations

import pytest

from services.bench.stats import distribution
from services.compare.differences import difference, ratio_difference


def test_paired_shift_has_a_degenerate_interval_that_excludes_zero():
    # b = a + 2 in every pair: every paired resample has median(b) - median(a) = 2 exactly
    d = difference("latency_ms", [10.0, 20.0, 30.0, 40.0], [12.0, 22.0, 32.0, 42.0], paired=True)
    assert (d.a, d.b, d.diff) == (25.0, 27.0, 2.0)
    assert d.lo == pytest.approx(2.0) and d.hi == pytest.approx(2.0)
    assert d.rel == pytest.approx(2.0 / 25.0)
    assert d.significant is True


def test_two_pair_bootstrap_matches_the_hand_computed_distribution():
    # pairs (0, 0) and (0, 4): resampled means of b - a are 0 (p 1/4), 2 (p 1/2), 4 (p 1/4),
    # so the 2.5 and 97.5 percentiles are 0 and 4: the interval touches 0, not significant
    d = difference("x", [0.0, 0.0], [0.0, 4.0], statistic="mean", paired=True)
    assert d.diff == 2.0
    assert (d.lo, d.hi) == (0.0, 4.0)
    assert d.significant is False
    assert "rough" in (d.note or "")


def test_identical_sides_are_not_significant():
    d = difference("x", [5.0, 5.0, 5.0], [5.0, 5.0, 5.0], statistic="mean")
    assert (d.diff, d.lo, d.hi, d.significant) == (0.0, 0.0, 0.0, False)


def test_paired_difference_uses_only_pairs_known_on_both_sides():
    d = difference("x", [1.0, None, 3.0, 10.0], [2.0, 7.0, None, 12.0], statistic="mean", paired=True)
    assert (d.n_a, d.n_b) == (2, 2)
    assert (d.a, d.b) == (5.5, 7.0)


def test_too_few_values_give_no_interval_and_say_why():
    d = difference("x", [1.0], [2.0], paired=True)
    assert d.diff == 1.0 and d.lo is None and d.significant is None
    assert "at least 2" in d.note
    empty = difference("x", [None, None], [1.0, 2.0], paired=True)
    assert empty.diff is None and empty.note == "no pairs with a value on both sides"


def test_paired_values_must_be_aligned():
    with pytest.raises(ValueError):
        difference("x", [1.0, 2.0], [1.0], paired=True)


def test_bootstrap_is_deterministic_for_a_seed():
    a = [float(v) for v in range(30)]
    b = [v * 1.1 for v in a]
    assert difference("x", a, b, paired=True) == difference("x", a, b, paired=True)


def test_ratio_difference_by_hand():
    # A: 10 tokens in 1 s and 10 in 2 s -> 20/3 tok/s; B: 10 in 1 s twice -> 10 tok/s.
    # Paired resamples: (0,0): 10 - 10 = 0; (1,1): 10 - 5 = 5; mixed: 10 - 20/3. Interval [0, 5].
    d = ratio_difference("tok/s", [10, 10], [1.0, 2.0], [10, 10], [1.0, 1.0], paired=True)
    assert d.a == pytest.approx(20 / 3) and d.b == 10.0 and d.diff == pytest.approx(10 / 3)
    assert (d.lo, d.hi) == (pytest.approx(0.0), pytest.approx(5.0))
    assert d.significant is False


def test_percentiles_are_linear_interpolation():
    dist = distribution([1.0, 2.0, 3.0, 4.0])
    assert (dist.p50, dist.p90, dist.p99) == (2.5, pytest.approx(3.7), pytest.approx(3.97))
    assert (dist.mean, dist.min, dist.max, dist.count) == (2.5, 1.0, 4.0, 4)
