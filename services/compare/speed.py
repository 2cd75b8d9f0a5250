"""Latency and throughput of the two sides.

Latency: end-to-end latency, TTFT and TPOT (:data:`METRICS`) of every successful measured request;
each side's distribution and the difference of medians (paired when the comparison is).
Throughput: requests and output tokens per second over each side's measured window, and the
single-stream rate (output tokens per second of request time) with a bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from services.bench.stats import (
    Distribution,
    RequestRecord,
    distribution,
    measured,
    measured_window_s,
    output_token_throughput,
    request_throughput,
    tpot_ms,
)
from services.compare.differences import BOOT_SEED, N_BOOT, Difference, difference, ratio_difference
from services.compare.pairing import Pair


METRICS: dict[str, tuple[str, Callable[[RequestRecord], float | None]]] = {
    "latency_ms": ("end-to-end latency", lambda r: r.effective_latency_ms),
    "ttft_ms": ("time to first token (TTFT)", lambda r: r.effective_ttft_ms),
    "tpot_ms": ("time per output token (TPOT)", tpot_ms),
}


def metric_value(r: RequestRecord, metric: str) -> float | None:
    """``metric`` (a key of :data:`METRICS`) of one successful measured request, else None."""
    if r.warmup or not r.ok:
        return None
    return METRICS[metric][1](r)


@dataclass
class MetricComparison:
    """One latency metric on both sides: all successful measured values, distributions, and the
    difference of medians (paired when the comparison is)."""

    metric: str
    label: str
    unit: str
    values_a: list[float]
    values_b: list[float]
    dist_a: Distribution
    dist_b: Distribution
    difference: Difference


def compare_metric(metric: str, ra: Sequence[RequestRecord], rb: Sequence[RequestRecord],
                   pairs: Sequence[Pair] | None, *, n_boot: int = N_BOOT,
                   seed: int | None = BOOT_SEED) -> MetricComparison:
    """Compare one metric of :data:`METRICS` (``pairs`` None: unpaired)."""
    va = [v for r in ra if (v := metric_value(r, metric)) is not None]
    vb = [v for r in rb if (v := metric_value(r, metric)) is not None]
    if pairs is not None:
        d = difference(metric, [metric_value(p.a, metric) for p in pairs],
                       [metric_value(p.b, metric) for p in pairs], statistic="median", unit="ms",
                       paired=True, n_boot=n_boot, seed=seed)
    else:
        d = difference(metric, va, vb, statistic="median", unit="ms", paired=False,
                       n_boot=n_boot, seed=seed)
    return MetricComparison(metric, METRICS[metric][0], "ms", va, vb, distribution(va),
                            distribution(vb), d)


def metric_named(metrics: Sequence[MetricComparison], name: str) -> MetricComparison:
    """The comparison of metric ``name`` (a key of :data:`METRICS`) among ``metrics``."""
    return next(m for m in metrics if m.metric == name)


def compare_latency(ra: Sequence[RequestRecord], rb: Sequence[RequestRecord], pairs: Sequence[Pair] | None, *,
                    n_boot: int = N_BOOT, seed: int | None = BOOT_SEED) -> list[MetricComparison]:
    """Every metric of :data:`METRICS`, in its order (``pairs`` None: unpaired)."""
    return [compare_metric(m, ra, rb, pairs, n_boot=n_boot, seed=seed) for m in METRICS]


@dataclass
class ThroughputSide:
    """Throughput of one side.

    ``requests_per_s`` / ``output_tokens_per_s``: over the side's measured window (first send to
    last receive, warm-up excluded), as the benchmark defines them. ``stream_tokens_per_s``:
    output tokens per second of request time (sum of tokens / sum of latencies of the successful
    requests): the speed one stream sees, not diluted when the versions were interleaved.
    """

    requests_per_s: float | None
    output_tokens_per_s: float | None
    window_s: float | None
    stream_tokens_per_s: float | None
    output_tokens: int
    successful: int


@dataclass
class ThroughputComparison:
    a: ThroughputSide
    b: ThroughputSide
    requests_per_s: Difference  # no interval: one window per side
    stream_tokens_per_s: Difference
    windows_overlap: bool
    notes: list[str] = field(default_factory=list)


def throughput_side(rs: Sequence[RequestRecord]) -> ThroughputSide:
    ok = [r for r in rs if not r.warmup and r.ok and r.effective_latency_ms]
    tokens = sum(r.output_tokens or 0 for r in ok)
    busy_s = sum(r.effective_latency_ms for r in ok) / 1e3  # type: ignore[misc]
    return ThroughputSide(
        requests_per_s=request_throughput(rs), output_tokens_per_s=output_token_throughput(rs),
        window_s=measured_window_s(rs),
        stream_tokens_per_s=tokens / busy_s if busy_s > 0 else None,
        output_tokens=tokens, successful=len(ok),
    )


def _window(rs: Sequence[RequestRecord]) -> tuple[int, int] | None:
    stamps = [(r.send_ns, r.recv_ns) for r in measured(rs)
              if r.send_ns is not None and r.recv_ns is not None]
    if not stamps:
        return None
    return min(s for s, _ in stamps), max(e for _, e in stamps)  # type: ignore[type-var]


def compare_throughput(ra: Sequence[RequestRecord], rb: Sequence[RequestRecord],
                       pairs: Sequence[Pair] | None, *, n_boot: int = N_BOOT,
                       seed: int | None = BOOT_SEED) -> ThroughputComparison:
    """Window throughput per side and single-stream token rate with a bootstrap interval."""
    a, b = throughput_side(ra), throughput_side(rb)
    reqs = Difference("requests_per_s", "over the measured window", "req/s", a.requests_per_s,
                      b.requests_per_s,
                      None if a.requests_per_s is None or b.requests_per_s is None
                      else b.requests_per_s - a.requests_per_s,
                      None if not a.requests_per_s or b.requests_per_s is None
                      else (b.requests_per_s - a.requests_per_s) / a.requests_per_s,
                      None, None, a.successful, b.successful, pairs is not None,
                      note="no interval: one measured window per version")

    def usable(r: RequestRecord) -> bool:
        return not r.warmup and r.ok and bool(r.effective_latency_ms) and r.output_tokens is not None

    if pairs is not None:
        both = [p for p in pairs if usable(p.a) and usable(p.b)]
        sel_a, sel_b = [p.a for p in both], [p.b for p in both]
    else:
        sel_a, sel_b = [r for r in ra if usable(r)], [r for r in rb if usable(r)]
    stream = ratio_difference(
        "stream_tokens_per_s",
        [float(r.output_tokens or 0) for r in sel_a], [r.effective_latency_ms / 1e3 for r in sel_a],  # type: ignore[operator]
        [float(r.output_tokens or 0) for r in sel_b], [r.effective_latency_ms / 1e3 for r in sel_b],  # type: ignore[operator]
        unit="tok/s", paired=pairs is not None, n_boot=n_boot, seed=seed)
    wa, wb = _window(ra), _window(rb)
    overlap = bool(wa and wb and min(wa[1], wb[1]) > max(wa[0], wb[0]))
    notes = []
    if overlap:
        notes.append("The versions were measured in one interleaved window: each version's "
                     "requests per second over the window counts the other version's time too. "
                     "Compare the single-stream rates (tokens per second of request time).")
    return ThroughputComparison(a, b, reqs, stream, overlap, notes)
