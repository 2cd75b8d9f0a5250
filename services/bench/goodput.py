"""Latency targets, goodput and the numbers of one load level, as vLLM's and AIPerf's benchmarks define them.

Goodput (vLLM ``benchmark_serving --goodput``, AIPerf's goodput): the requests per second that met
*every* latency target, over the same measured window as throughput (first send to last receive of
the level's measured requests, warm-up excluded). A failed request meets no target. Per request:

- end to end: its latency (``services.bench.stats``);
- TTFT: its time to first token; a request answered without streaming has none, and its client saw
  the first token when the whole answer came, so its latency stands in for it;
- TPOT: ``(latency - TTFT) / (output tokens - 1)``; with fewer than two output tokens it is 0 (as
  vLLM counts it: there is no second token to wait for).

A target set to None is not applied. :data:`DEFAULT_TARGETS` suit a label-reading service, where a
person waits for the box: the whole answer (a few dozen tokens) within 2 s, its first token within
1 s, and no token slower than 100 ms.

:func:`level_stats` gives one level's throughput, goodput and percentiles from its records;
:func:`capacity` the highest goodput over the levels, with a Student-t 95 % interval of the mean
where the level was repeated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from services.bench.stats import (
    RequestRecord,
    distribution,
    latencies_ms,
    measured,
    measured_window_s,
    percentile,
    request_throughput,
    tpots_ms,
    ttfts_ms,
)

CONFIDENCE = 0.95
# two-sided 95 % Student-t quantiles by degrees of freedom (1..30); above 30 the normal 1.96
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


@dataclass(frozen=True)
class LatencyTargets:
    """The latency a request must meet to count in goodput (ms; None: not applied)."""

    ttft_ms: float | None = 1000.0
    tpot_ms: float | None = 100.0
    e2e_ms: float | None = 2000.0

    def validate(self) -> "LatencyTargets":
        names = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_ms": "end-to-end"}
        for name, v in asdict(self).items():
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"the {names[name]} target must be a positive number of ms, not {v!r}")
        return self

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "LatencyTargets":
        d = d or {}
        return cls(**{k: d.get(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms")}) if d else cls()

    def describe(self) -> str:
        parts = [f"{name} ≤ {v:g} ms" for name, v in (("TTFT", self.ttft_ms), ("TPOT", self.tpot_ms),
                                                       ("end to end", self.e2e_ms)) if v is not None]
        return ", ".join(parts) or "no latency target"


DEFAULT_TARGETS = LatencyTargets()


def request_tpot_ms(r: RequestRecord) -> float | None:
    """TPOT as goodput judges it: 0 with fewer than two output tokens (see the module docstring)."""
    lat, n = r.effective_latency_ms, r.output_tokens
    if lat is None:
        return None
    if n is None or n < 2:
        return 0.0
    ttft = r.effective_ttft_ms if r.effective_ttft_ms is not None else lat
    return (lat - ttft) / (n - 1)


def meets_targets(r: RequestRecord, targets: LatencyTargets) -> bool:
    """Whether one request succeeded and met every target that is set."""
    lat = r.effective_latency_ms
    if not r.ok or lat is None:
        return False
    ttft = r.effective_ttft_ms if r.effective_ttft_ms is not None else lat
    tpot = request_tpot_ms(r)
    checks = ((targets.e2e_ms, lat), (targets.ttft_ms, ttft), (targets.tpot_ms, tpot))
    return all(limit is None or (value is not None and value <= limit) for limit, value in checks)


def good_requests(requests: Iterable[RequestRecord], targets: LatencyTargets) -> int:
    """Measured requests that met every target."""
    return sum(1 for r in measured(requests) if meets_targets(r, targets))


def goodput(requests: Sequence[RequestRecord], targets: LatencyTargets) -> float | None:
    """Good requests per second over the measured window (None without a window)."""
    w = measured_window_s(requests)
    return None if w is None else good_requests(requests, targets) / w


@dataclass
class LevelStats:
    """What one version did at one load level (times in ms, rates per second)."""

    requests: int  # measured requests
    ok: int
    failures: int
    good: int  # met every target
    good_share: float | None  # good / measured
    window_s: float | None
    throughput_rps: float | None
    goodput_rps: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    tpot_p50_ms: float | None
    mean_input_tokens: float | None
    mean_output_tokens: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def level_stats(requests: Sequence[RequestRecord], targets: LatencyTargets) -> LevelStats:
    """Throughput, goodput and percentiles of one level's records (warm-up excluded)."""
    ms = measured(requests)
    ok = [r for r in ms if r.ok]
    lat = distribution(latencies_ms(ms))
    good = good_requests(ms, targets)
    ins = [r.input_tokens for r in ok if r.input_tokens is not None]
    outs = [r.output_tokens for r in ok if r.output_tokens is not None]
    return LevelStats(
        requests=len(ms), ok=len(ok), failures=len(ms) - len(ok), good=good,
        good_share=good / len(ms) if ms else None, window_s=measured_window_s(ms),
        throughput_rps=request_throughput(ms), goodput_rps=goodput(ms, targets),
        p50_ms=lat.p50, p90_ms=lat.p90, p99_ms=lat.p99,
        ttft_p50_ms=percentile(ttfts_ms(ms), 50), tpot_p50_ms=percentile(tpots_ms(ms), 50),
        mean_input_tokens=float(np.mean(ins)) if ins else None,
        mean_output_tokens=float(np.mean(outs)) if outs else None)


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """Mean and its Student-t 95 % interval; no interval from fewer than two values."""
    if confidence != CONFIDENCE:
        raise ValueError("only the 95 % interval is tabulated")
    a = np.asarray(values, dtype=float)
    m = float(a.mean())
    if a.size < 2:
        return m, None, None
    t = _T95[a.size - 2] if a.size - 1 <= len(_T95) else 1.96
    half = t * float(a.std(ddof=1)) / math.sqrt(a.size)
    return m, m - half, m + half


@dataclass
class Capacity:
    """The highest goodput over a version's levels: at which load, and its interval over repeats."""

    rps: float | None  # None: no level finished
    load: float | None  # the level's load value
    lo: float | None = None
    hi: float | None = None
    repeats: int = 0
    note: str | None = None
    per_level: dict[float, float] = field(default_factory=dict)  # load -> mean goodput over repeats


def capacity(levels: Iterable[tuple[float, float | None]]) -> Capacity:
    """Capacity from ``(load value, goodput)`` of finished levels (repeats share a load value):
    the highest mean goodput over load values, with its interval where that load was repeated."""
    by_load: dict[float, list[float]] = {}
    for load, gp in levels:
        by_load.setdefault(float(load), []).append(0.0 if gp is None else float(gp))
    if not by_load:
        return Capacity(None, None, note="no level finished")
    means = {load: mean_ci(v)[0] for load, v in by_load.items()}
    best = max(sorted(means), key=lambda load: means[load])
    m, lo, hi = mean_ci(by_load[best])
    note = None if lo is not None else "measured once: no interval"
    return Capacity(m, best, lo, hi, len(by_load[best]), note, means)
