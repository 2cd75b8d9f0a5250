"""Differences between two versions' values, with bootstrap confidence intervals.

Every difference is B minus A. Its 95 % confidence interval is a percentile bootstrap
(:func:`services.bench.stats.bootstrap_ci`, 2000 resamples, seed 0): of the pairs when the
comparison is paired, of each side independently otherwise. A difference is *significant*
when its interval excludes 0. Latency, TTFT and TPOT compare medians; accuracy compares means.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from services.bench.stats import bootstrap_ci

CONFIDENCE = 0.95
N_BOOT = 2000
BOOT_SEED = 0
MIN_VALUES_FOR_CI = 2


@dataclass
class Difference:
    """``statistic(B) - statistic(A)`` of one metric with its bootstrap confidence interval.

    ``a``/``b``: the statistic of each side over the values the difference used (the pairs where
    both sides have a value, when paired). ``rel``: ``diff / a`` (None when ``a`` is 0 or unknown).
    ``lo``/``hi``: the interval (None when there are too few values: ``note`` says why).
    """

    metric: str
    statistic: str
    unit: str
    a: float | None
    b: float | None
    diff: float | None
    rel: float | None
    lo: float | None
    hi: float | None
    n_a: int
    n_b: int
    paired: bool
    confidence: float = CONFIDENCE
    n_boot: int = N_BOOT
    note: str | None = None

    @property
    def significant(self) -> bool | None:
        """Whether the interval excludes 0 (None without an interval)."""
        if self.lo is None or self.hi is None:
            return None
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["significant"] = self.significant
        return d


def _stat(values: np.ndarray, statistic: str) -> float:
    return float(np.median(values) if statistic == "median" else np.mean(values))


def difference(
    metric: str,
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    statistic: str = "median",
    unit: str = "",
    paired: bool = False,
    n_boot: int = N_BOOT,
    seed: int | None = BOOT_SEED,
    confidence: float = CONFIDENCE,
) -> Difference:
    """The difference ``statistic(b) - statistic(a)`` and its bootstrap interval.

    ``paired=True``: ``a`` and ``b`` are aligned (``a[i]`` and ``b[i]`` belong to the same image
    and repeat); only positions where both are known are used, and pairs are resampled together.
    Otherwise None values are dropped from each side and the sides are resampled independently.
    With fewer than :data:`MIN_VALUES_FOR_CI` values (pairs) there is no interval.
    """
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired values must be aligned ({len(a)} != {len(b)})")
        both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
                and not (math.isnan(x) or math.isnan(y))]
        xa = np.asarray([x for x, _ in both], dtype=float)
        xb = np.asarray([y for _, y in both], dtype=float)
    else:
        xa = np.asarray([x for x in a if x is not None and not math.isnan(x)], dtype=float)
        xb = np.asarray([y for y in b if y is not None and not math.isnan(y)], dtype=float)
    base = dict(metric=metric, statistic=statistic, unit=unit, n_a=int(xa.size), n_b=int(xb.size),
                paired=paired, confidence=confidence, n_boot=n_boot)
    if xa.size == 0 or xb.size == 0:
        what = "pairs with a value on both sides" if paired else "values on both sides"
        return Difference(a=_stat(xa, statistic) if xa.size else None,
                          b=_stat(xb, statistic) if xb.size else None, diff=None, rel=None,
                          lo=None, hi=None, note=f"no {what}", **base)
    sa, sb = _stat(xa, statistic), _stat(xb, statistic)
    diff = sb - sa
    rel = diff / sa if sa != 0 else None
    if min(xa.size, xb.size) < MIN_VALUES_FOR_CI:
        return Difference(a=sa, b=sb, diff=diff, rel=rel, lo=None, hi=None,
                          note=f"no interval: at least {MIN_VALUES_FOR_CI} "
                               f"{'pairs' if paired else 'values per side'} are needed", **base)
    observed, lo, hi = bootstrap_ci(xa, xb, statistic, n=n_boot, seed=seed, paired=paired,
                                    confidence=confidence)
    note = None
    if min(xa.size, xb.size) < 10:
        note = f"only {min(xa.size, xb.size)} {'pairs' if paired else 'values'}: the interval is rough"
    return Difference(a=sa, b=sb, diff=observed, rel=rel, lo=lo, hi=hi, note=note, **base)


def ratio_difference(
    metric: str,
    num_a: Sequence[float], den_a: Sequence[float],
    num_b: Sequence[float], den_b: Sequence[float],
    *,
    unit: str = "",
    paired: bool = False,
    n_boot: int = N_BOOT,
    seed: int | None = BOOT_SEED,
    confidence: float = CONFIDENCE,
) -> Difference:
    """``sum(num_b)/sum(den_b) - sum(num_a)/sum(den_a)`` (e.g. tokens per second of request time)
    with a percentile-bootstrap interval; ``paired``: index ``i`` of A and B resampled together."""
    na, da = np.asarray(num_a, float), np.asarray(den_a, float)
    nb, db = np.asarray(num_b, float), np.asarray(den_b, float)
    if na.shape != da.shape or nb.shape != db.shape:
        raise ValueError("numerators and denominators must be aligned")
    if paired and na.size != nb.size:
        raise ValueError("paired values must be aligned")
    base = dict(metric=metric, statistic="ratio of sums", unit=unit, n_a=int(na.size),
                n_b=int(nb.size), paired=paired, confidence=confidence, n_boot=n_boot)
    ra = float(na.sum() / da.sum()) if na.size and da.sum() > 0 else None
    rb = float(nb.sum() / db.sum()) if nb.size and db.sum() > 0 else None
    if ra is None or rb is None:
        return Difference(a=ra, b=rb, diff=None, rel=None, lo=None, hi=None,
                          note="no values on both sides", **base)
    diff = rb - ra
    rel = diff / ra if ra else None
    if min(na.size, nb.size) < MIN_VALUES_FOR_CI:
        return Difference(a=ra, b=rb, diff=diff, rel=rel, lo=None, hi=None,
                          note=f"no interval: at least {MIN_VALUES_FOR_CI} values are needed", **base)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, na.size, size=(n_boot, na.size))
    ib = ia if paired else rng.integers(0, nb.size, size=(n_boot, nb.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        diffs = nb[ib].sum(axis=1) / db[ib].sum(axis=1) - na[ia].sum(axis=1) / da[ia].sum(axis=1)
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = (float(v) for v in np.percentile(diffs, [alpha, 100.0 - alpha]))
    return Difference(a=ra, b=rb, diff=diff, rel=rel, lo=lo, hi=hi, **base)
