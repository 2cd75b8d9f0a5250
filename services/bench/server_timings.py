"""Server-side timings per version, from the ``vllm:*`` histograms on Triton's metrics port.

What the server itself measured, beside what the client saw: vLLM's engine observes every request's
time to first token (``vllm:time_to_first_token_seconds``), every gap between two of its tokens
(``vllm:time_per_output_token_seconds``: vLLM's inter-token latency, one observation per token after
the first) and its end-to-end time (``vllm:e2e_request_latency_seconds``); the stock vLLM backend
and this project's vLLM engine (:mod:`services.serving.vllm_metrics`) publish them labelled ``model``
and ``version``. The transformers engine publishes no ``vllm:*`` series: its server timings are
unknown (:data:`NO_HISTOGRAMS`). A standalone ``vllm serve`` (an OpenAI-compatible variant) publishes the
same histograms labelled ``model_name``: they are relabelled with the variant's key as they are read
(``sample_series.variant_series``; :func:`settled_readings` and the sampler), so they count per variant too.

Over a run's measured window the histograms are cumulative, so the window's observations are the
difference of each bucket between the reading at the window's start and the one at its end
(:func:`histogram_delta`). Percentiles are interpolated linearly inside the bucket that holds the
rank, exactly as Prometheus' ``histogram_quantile`` does (:func:`histogram_quantile`: the lowest
bucket starts at 0; a rank in the ``+Inf`` bucket gives the largest finite bound); the mean is the
sum's difference over the count's. Their precision is the buckets' (vLLM's: 1, 5, 10, 20, 40, 60,
80, 100, 250 ms ...), and so is that of a difference's interval (:func:`bootstrap_quantile_difference`).

:func:`server_timings` fills one :class:`ServerTimings` per version, one function per metric
(:func:`server_ttft`, :func:`server_tpot`, :func:`server_e2e`, :func:`generation_tokens`), from stored
sample rows (``services.bench.sample_series.SampleRow`` with ``value``). The window's edges are
readings taken on purpose by :func:`settled_reading` once the warm-up and the measured requests have
been answered (the engine publishes its observations a moment after it answers: the reading waits
until the ``vllm:*`` series stop changing). :func:`bootstrap_quantile_difference` gives a confidence
interval for the difference of two histograms' quantiles (resampling each histogram's bucket counts,
at the buckets' resolution).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from services.bench.sample_series import Sample, SampleRow, rekey_versions, variant_series
from services.bench.stats import RequestRecord, arrived_in_bursts
from services.bench.triton_metrics import (
    metrics_opener,
    parse_metrics,
    parse_series_key,
    read_metrics_text,
)

HISTOGRAM_METRICS = {
    "ttft": ("vllm:time_to_first_token_seconds", "time to first token (TTFT)"),
    "tpot": ("vllm:time_per_output_token_seconds", "time per output token (TPOT, inter-token)"),
    "e2e": ("vllm:e2e_request_latency_seconds", "end-to-end latency"),
}
GENERATION_TOKENS = "vllm:generation_tokens_total"
NO_HISTOGRAMS = "unknown (the server publishes no vllm:* histograms)"
NOT_MEASURED = ("unknown (not measured: the run had no single measured window after a warm-up, as in a sweep, "
                "or it ended before its measured requests)")
SETTLE_INTERVAL_S = 0.3
SETTLE_MAX_S = 5.0


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram: ``buckets`` are ``(upper bound, cumulative count)`` by bound, ``+Inf``
    last; ``count`` and ``sum`` as published."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float


@dataclass
class TimingStats:
    """One server-side metric of one version over the window (ms); None where there were no observations."""

    metric: str
    label: str
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    histogram: Histogram | None = None  # the window's observations (for intervals)


@dataclass
class ServerTimings:
    """What the server measured for one version over the window ``t0``..``t1`` (``perf_counter`` s)."""

    version: str
    t0: float
    t1: float
    ttft: TimingStats | None = None
    tpot: TimingStats | None = None
    e2e: TimingStats | None = None
    generation_tokens: float | None = None
    generation_tokens_per_s: float | None = None

    def metric(self, key: str) -> TimingStats | None:
        return getattr(self, key)


@dataclass
class ServerTimingsResult:
    """Per version its :class:`ServerTimings`, or the reason there are none."""

    versions: dict[str, ServerTimings] = field(default_factory=dict)
    reason: str | None = None


# --------------------------------------------------------------------------- histogram arithmetic


def histogram_from(values: dict[str, float], name: str) -> Histogram | None:
    """The histogram ``name`` among one version's series (``{kind: value}``, kinds as
    ``name_bucket{le="..."}``, ``name_count``, ``name_sum``), or None when it is absent."""
    buckets = []
    for kind, v in values.items():
        n, labels = parse_series_key(kind)
        if n == name + "_bucket" and "le" in labels:
            buckets.append((float(labels["le"]), float(v)))
    if not buckets:
        return None
    buckets.sort()
    count = values.get(name + "_count", buckets[-1][1])
    return Histogram(tuple(buckets), float(count), float(values.get(name + "_sum", math.nan)))


def histogram_delta(first: Histogram | None, last: Histogram) -> Histogram | None:
    """The observations between two readings of one histogram (``first`` None: since the start);
    None when a count went down (the server restarted) or the buckets changed."""
    if first is None:
        return last
    if [b for b, _ in first.buckets] != [b for b, _ in last.buckets]:
        return None
    buckets = tuple((b, c1 - c0) for (b, c0), (_, c1) in zip(first.buckets, last.buckets))
    if any(c < 0 for _, c in buckets) or last.count < first.count:
        return None
    return Histogram(buckets, last.count - first.count, last.sum - first.sum)


def _quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """Prometheus' ``histogram_quantile`` on bounds (``+Inf`` last) and cumulative counts."""
    total = cumulative[-1] if len(cumulative) else 0
    if total <= 0 or not bounds:
        return None
    rank = q * total
    i = next(i for i, c in enumerate(cumulative) if c >= rank)
    if math.isinf(bounds[i]):
        return bounds[i - 1] if i > 0 else None
    lower = bounds[i - 1] if i > 0 else 0.0
    below = cumulative[i - 1] if i > 0 else 0.0
    inside = cumulative[i] - below
    if inside <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - below) / inside


def histogram_quantile(q: float, h: Histogram) -> float | None:
    """The ``q``-quantile (0..1) of a histogram, interpolated as Prometheus' ``histogram_quantile``."""
    return _quantile(q, [b for b, _ in h.buckets], [c for _, c in h.buckets])


def histogram_mean(h: Histogram) -> float | None:
    """``sum / count`` (None without observations or a sum)."""
    return h.sum / h.count if h.count > 0 and not math.isnan(h.sum) else None


def _bucket_of(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> tuple[float, float]:
    """The edges ``(lower, upper)`` of the bucket that holds the ``q``-quantile's rank."""
    rank = q * cumulative[-1]
    i = next(i for i, c in enumerate(cumulative) if c >= rank)
    return (bounds[i - 1] if i > 0 else 0.0), bounds[i]


def bootstrap_quantile_difference(a: Histogram, b: Histogram, q: float = 0.5, n: int = 2000, seed: int = 0,
                                  confidence: float = 0.95) -> tuple[float, float, float] | None:
    """``quantile(b) - quantile(a)`` (interpolated, :func:`histogram_quantile`) and an interval at the
    buckets' resolution. None when either side has no observations.

    A histogram only says which bucket holds the quantile: interpolation assumes the observations
    spread evenly inside it, and observations bunched at a bound (an A/A run on the vLLM engine had
    one engine's tokens just under vLLM's 5 ms bound and the other's just over it: interpolated
    medians 4.3 and 8.2 ms) make any difference inside two buckets an artefact. So each side's bucket
    counts are resampled (multinomial, percentile bootstrap, ``n`` times), and for each resample the
    difference can lie anywhere from (B's bucket's lower edge - A's upper edge) to (B's upper edge -
    A's lower edge); the interval runs from the low percentile of the first to the high percentile of
    the second. It excludes 0 only when the quantiles lie at least a whole bucket apart.
    """
    qa, qb = histogram_quantile(q, a), histogram_quantile(q, b)
    if qa is None or qb is None:
        return None
    rng = np.random.default_rng(seed)

    def resampled(h: Histogram) -> np.ndarray:
        bounds = [x for x, _ in h.buckets]
        cum = np.asarray([c for _, c in h.buckets], dtype=float)
        counts = np.diff(np.concatenate([[0.0], cum]))
        draws = np.cumsum(rng.multinomial(int(round(cum[-1])), counts / counts.sum(), size=n), axis=1)
        return np.asarray([_bucket_of(q, bounds, row) for row in draws], dtype=float)

    ea, eb = resampled(a), resampled(b)
    alpha = (1 - confidence) / 2 * 100
    lo = float(np.percentile(eb[:, 0] - ea[:, 1], alpha))
    hi = float(np.percentile(eb[:, 1] - ea[:, 0], 100 - alpha))
    return qb - qa, lo, hi


# --------------------------------------------------------------------------- one function per metric


def _stats(key: str, first: dict[str, float], last: dict[str, float]) -> TimingStats | None:
    name, label = HISTOGRAM_METRICS[key]
    h_last = histogram_from(last, name)
    if h_last is None:
        return None
    h = histogram_delta(histogram_from(first, name), h_last)
    if h is None:
        return None
    ms = [None if v is None else v * 1e3 for v in
          (histogram_mean(h), *(histogram_quantile(q, h) for q in (0.5, 0.9, 0.99)))]
    return TimingStats(key, label, int(round(h.count)), *ms, histogram=h)


def server_ttft(first: dict[str, float], last: dict[str, float]) -> TimingStats | None:
    """Time to first token as the engine measured it (``vllm:time_to_first_token_seconds``)."""
    return _stats("ttft", first, last)


def server_tpot(first: dict[str, float], last: dict[str, float]) -> TimingStats | None:
    """Time per output token: every gap between two tokens (``vllm:time_per_output_token_seconds``)."""
    return _stats("tpot", first, last)


def server_e2e(first: dict[str, float], last: dict[str, float]) -> TimingStats | None:
    """End-to-end latency in the engine (``vllm:e2e_request_latency_seconds``)."""
    return _stats("e2e", first, last)


def generation_tokens(first: dict[str, float], last: dict[str, float]) -> float | None:
    """Tokens generated in the window (``vllm:generation_tokens_total``); None without it or on a reset."""
    if GENERATION_TOKENS not in last:
        return None
    d = last[GENERATION_TOKENS] - first.get(GENERATION_TOKENS, 0.0)
    return d if d >= 0 else None


# --------------------------------------------------------------------------- readings of a window


def readings_by_version(rows: Iterable[SampleRow]) -> dict[str, dict[float, dict[str, float]]]:
    """The ``vllm:*`` rows as ``{version: {t_mono: {kind: value}}}``."""
    out: dict[str, dict[float, dict[str, float]]] = {}
    for r in rows:
        if r.source == "triton" and r.value is not None and r.kind.startswith("vllm:") and r.version is not None:
            out.setdefault(str(r.version), {}).setdefault(r.t_mono, {})[r.kind] = float(r.value)
    return out


def server_timings(rows: Iterable[SampleRow], t0: float | None = None, t1: float | None = None) -> ServerTimingsResult:
    """Per version, the server's timings between its first and last ``vllm:*`` reading in ``[t0, t1]``."""
    rows = [r for r in rows if (t0 is None or r.t_mono >= t0) and (t1 is None or r.t_mono <= t1)]
    by_version = readings_by_version(rows)
    if not by_version:
        return ServerTimingsResult(reason=NO_HISTOGRAMS)
    result = ServerTimingsResult()
    for version, readings in sorted(by_version.items()):
        times = sorted(readings)
        if len(times) < 2:
            continue
        first, last = readings[times[0]], readings[times[-1]]
        window = times[-1] - times[0]
        tokens = generation_tokens(first, last)
        result.versions[version] = ServerTimings(
            version, times[0], times[-1], ttft=server_ttft(first, last), tpot=server_tpot(first, last),
            e2e=server_e2e(first, last), generation_tokens=tokens,
            generation_tokens_per_s=None if tokens is None or window <= 0 else tokens / window)
    if not result.versions:
        result.reason = "unknown (fewer than two readings of the vllm:* histograms in the measured window)"
    return result


def timing_rows(result: ServerTimingsResult) -> list[dict[str, Any]]:
    """Rows for the run store's ``server_timings`` table (metrics with observations)."""
    out = []
    for v, t in result.versions.items():
        for key in HISTOGRAM_METRICS:
            s = t.metric(key)
            if s is not None:
                out.append({"version": v, "metric": key, "count": s.count, "mean_ms": s.mean_ms, "p50_ms": s.p50_ms,
                            "p90_ms": s.p90_ms, "p99_ms": s.p99_ms, "t0": t.t0, "t1": t.t1})
    return out


def timings_summary(result: ServerTimingsResult) -> dict[str, Any]:
    """The result as JSON-ready data for the run's summary (histograms left out)."""
    versions = {}
    for v, t in result.versions.items():
        d = asdict(t)
        for key in HISTOGRAM_METRICS:
            if d[key] is not None:
                d[key].pop("histogram", None)
        versions[v] = d
    return {"reason": result.reason, "versions": versions}


def tpot_median_ms(result: ServerTimingsResult, version: str) -> float | None:
    """The server's median time per output token of ``version`` (ms), or None."""
    t = result.versions.get(str(version))
    return None if t is None or t.tpot is None else t.tpot.p50_ms


# --------------------------------------------------------------------------- readings taken on purpose


def _vllm_only(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("vllm:")}


def settled_reading(metrics_url: str | None, timeout_s: float = 2.0, interval_s: float = SETTLE_INTERVAL_S,
                    max_wait_s: float = SETTLE_MAX_S,
                    relabel: Callable[[dict[str, float]], dict[str, float]] | None = None) -> Sample | None:
    """A reading of the ``vllm:*`` series once they stop changing (two reads ``interval_s`` apart
    agree, at most ``max_wait_s``), as a :class:`Sample` stamped with the last read; None when there
    is no metrics address or the page holds no ``vllm:*`` series. Raises OSError or ValueError when
    the page cannot be read. ``relabel``: applied to the parsed series first (a variant's key)."""
    if not metrics_url:
        return None
    opener = metrics_opener()
    deadline = time.perf_counter() + max_wait_s
    previous: dict[str, float] | None = None
    while True:
        now, wall = time.perf_counter(), time.time()
        series = parse_metrics(read_metrics_text(opener, metrics_url, timeout_s))
        metrics = _vllm_only(relabel(series) if relabel is not None else series)
        if not metrics:
            return None
        if metrics == previous or now >= deadline:
            return Sample(t_mono=now, t_wall=wall, metrics=metrics)
        previous = metrics
        time.sleep(interval_s)


def settled_readings(metrics_url: str | None, version_keys: dict[str, str], servers: Sequence[Any] = (),
                     **kw: Any) -> list[Sample]:
    """Settled readings (:func:`settled_reading`) of every page a run on variants reads: the main
    server's (``metrics_url``; its versions renamed by ``version_keys``) and each OpenAI variant's
    (``servers``: ``services.bench.memory_scope.VariantServer``, its series labelled with its key),
    in the order they were taken. Raises as :func:`settled_reading` on the first page that fails."""
    out = []
    main = settled_reading(metrics_url, relabel=lambda m: rekey_versions(m, version_keys), **kw)
    if main is not None:
        out.append(main)
    for s in servers:
        got = settled_reading(s.page, relabel=lambda m, s=s: variant_series(m, s.model, s.metrics_version), **kw)
        if got is not None:
            out.append(got)
    return out


def record_server_timings(store: Any, run_id: int, records: Sequence[RequestRecord],
                          marks: Sequence[float], error: str | None = None, attempted: bool = True) -> dict[str, Any]:
    """A run's server timings over its measured window (``marks``: the ``t_mono`` of the readings
    at its edges), stored in ``store`` (a ``RunStore``); each successful measured request's burst
    flag judged again against its version's server TPOT (``records`` updated, and the store).
    ``error``: why a reading at an edge failed; ``attempted``: whether the edges were read at all.
    Returns :func:`timings_summary` for the run's summary."""
    if not attempted:
        result = ServerTimingsResult(reason=NOT_MEASURED)
    elif len(marks) < 2:
        result = ServerTimingsResult(reason=f"unknown (the metrics page could not be read: {error})" if error
                                     else NO_HISTOGRAMS)
    else:
        t0, t1 = marks[0], marks[-1]
        result = server_timings(store.get_samples(run_id, t0, t1), t0, t1)
        store.set_server_timings(run_id, timing_rows(result))
    flags = {}
    for r in records:
        if not r.warmup and r.ok:
            r.bursty = arrived_in_bursts(r, tpot_median_ms(result, r.version))
            flags[r.seq] = r.bursty
    store.set_bursts(run_id, flags)
    return timings_summary(result)
