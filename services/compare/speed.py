"""Latency and throughput of the two sides.

Latency: end-to-end latency, TTFT and TPOT (:data:`METRICS`) of every successful measured request;
each side's distribution and the difference of medians (paired when the comparison is).
Throughput: requests and output tokens per second over each side's measured window, and the
single-stream rate (output tokens per second of request time) with a bootstrap interval.
The server's own TTFT / TPOT / end-to-end (the ``vllm:*`` histograms over each run's measured window,
:mod:`services.bench.server_timings`) beside them, and whether bursts make the client's unreliable
(:func:`compare_server`).

The verdict judges the three timings together ("no significant difference in TTFT, TPOT or
latency" is one claim about three metrics), so each timing's interval is a Bonferroni interval at
:data:`TIMING_CONFIDENCE` (98.3 % each), which keeps the chance of calling any of the three
different when none is (an A/A comparison) at 5 % instead of about 14 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from services.bench.server_timings import (
    HISTOGRAM_METRICS,
    ServerTimings,
    TimingStats,
    bootstrap_quantile_difference,
    server_timings,
)
from services.bench.stats import (
    Distribution,
    RequestRecord,
    burst_counts,
    bursts_unreliable,
    distribution,
    measured,
    measured_window_s,
    output_token_throughput,
    request_throughput,
    tpot_ms,
)
from services.bench.store import RunInfo, RunStore
from services.compare.differences import BOOT_SEED, CONFIDENCE, N_BOOT, Difference, difference, ratio_difference
from services.compare.pairing import Pair


METRICS: dict[str, tuple[str, Callable[[RequestRecord], float | None]]] = {
    "latency_ms": ("end-to-end latency", lambda r: r.effective_latency_ms),
    "ttft_ms": ("time to first token (TTFT)", lambda r: r.effective_ttft_ms),
    "tpot_ms": ("time per output token (TPOT)", tpot_ms),
}
TIMING_CONFIDENCE = 1.0 - (1.0 - CONFIDENCE) / len(METRICS)  # Bonferroni over the judged timings


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
                       paired=True, n_boot=n_boot, seed=seed, confidence=TIMING_CONFIDENCE)
    else:
        d = difference(metric, va, vb, statistic="median", unit="ms", paired=False,
                       n_boot=n_boot, seed=seed, confidence=TIMING_CONFIDENCE)
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


# --------------------------------------------------------------------------- the server's own timings

SERVER_TO_CLIENT = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2e": "latency_ms"}  # server metric -> client metric
NOT_RECORDED = "unknown (no server-side timings were recorded with this run)"


@dataclass
class ServerMetricComparison:
    """One server-side metric (:data:`services.bench.server_timings.HISTOGRAM_METRICS`) on both sides:
    the window's histogram statistics and the difference of medians, its interval from resampling each
    side's histogram (:func:`services.bench.server_timings.bootstrap_quantile_difference`; unpaired)."""

    metric: str
    label: str
    a: TimingStats | None
    b: TimingStats | None
    difference: Difference


@dataclass
class ServerComparison:
    """The server's timings of both sides, and whether the client's TTFT/TPOT can be trusted.

    ``reason``: why the server's timings are unknown (None when known). ``bursts_a``/``bursts_b``:
    ``(bursty, judged)`` measured requests; ``client_unreliable``: bursts on a meaningful share of
    either side's requests (:func:`services.bench.stats.bursts_unreliable`): the client's TTFT and
    TPOT do not describe the server, and the verdict judges on the server's.
    """

    metrics: list[ServerMetricComparison]
    reason: str | None
    bursts_a: tuple[int, int]
    bursts_b: tuple[int, int]
    client_unreliable: bool

    def metric(self, key: str) -> ServerMetricComparison | None:
        return next((m for m in self.metrics if m.metric == key), None)

    def burst_words(self, a_label: str, b_label: str) -> str:
        """``"3 of 10 requests of A and 0 of 10 of B arrived in bursts"``."""
        (na, ja), (nb, jb) = self.bursts_a, self.bursts_b
        return f"{na} of {ja} requests of {a_label} and {nb} of {jb} of {b_label} arrived in bursts"


def side_server_timings(store: RunStore, run: RunInfo, version: str) -> tuple[ServerTimings | None, str | None]:
    """One side's server timings, recomputed (with their histograms) from the run's stored ``vllm:*``
    samples over the window stored in ``server_timings``; else None and why."""
    rows = [r for r in store.get_server_timings(run.id) if r["version"] == str(version)]
    if not rows:
        recorded = ((run.summary or {}).get("server_timings") or {}).get("reason") if isinstance(run.summary, dict) else None
        return None, recorded or NOT_RECORDED
    t0, t1 = rows[0]["t0"], rows[0]["t1"]
    result = server_timings(store.get_samples(run.id, t0, t1), t0, t1)
    timings = result.versions.get(str(version))
    return timings, None if timings is not None else (result.reason or NOT_RECORDED)


def _server_difference(key: str, a: TimingStats | None, b: TimingStats | None, n_boot: int,
                       seed: int | None) -> Difference:
    note = None
    ci = None
    if a is None or b is None or a.histogram is None or b.histogram is None:
        note = "no histogram on one side"
    else:
        ci = bootstrap_quantile_difference(a.histogram, b.histogram, 0.5, n=n_boot, seed=seed or 0,
                                           confidence=TIMING_CONFIDENCE)
        if ci is None:
            note = "no observations on one side"
    pa, pb = (a.p50_ms if a else None), (b.p50_ms if b else None)
    diff = None if pa is None or pb is None else pb - pa
    return Difference(f"server_{key}", "median (histogram)", "ms", pa, pb, diff,
                      None if diff is None or not pa else diff / pa,
                      None if ci is None else ci[1] * 1e3, None if ci is None else ci[2] * 1e3,
                      a.count if a else 0, b.count if b else 0, False, n_boot=n_boot, note=note,
                      confidence=TIMING_CONFIDENCE)


def compare_server(store: RunStore, run_a: RunInfo, va: str, ra: Sequence[RequestRecord], run_b: RunInfo, vb: str,
                   rb: Sequence[RequestRecord], *, n_boot: int = N_BOOT, seed: int | None = BOOT_SEED) -> ServerComparison:
    """Both sides' server timings compared metric by metric, and the client's reliability."""
    ta, why_a = side_server_timings(store, run_a, va)
    tb, why_b = side_server_timings(store, run_b, vb)
    bursts_a, bursts_b = burst_counts(ra), burst_counts(rb)
    unreliable = bursts_unreliable(*bursts_a) or bursts_unreliable(*bursts_b)
    if ta is None or tb is None:
        return ServerComparison([], why_a or why_b, bursts_a, bursts_b, unreliable)
    metrics = [ServerMetricComparison(key, label, ta.metric(key), tb.metric(key),
                                      _server_difference(key, ta.metric(key), tb.metric(key), n_boot, seed))
               for key, (_, label) in HISTOGRAM_METRICS.items()]
    return ServerComparison(metrics, None, bursts_a, bursts_b, unreliable)
