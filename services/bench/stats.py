"""Benchmark statistics, one function per metric, after vLLM's ``benchmark_serving``.

Definitions (see docs/benchmark-definitions.md):

- Latency: ``recv_ns - send_ns`` (``time.perf_counter_ns``) unless the record carries ``latency_ms``.
- TTFT: ``first_token_ns - send_ns`` unless the record carries ``ttft_ms``.
- TPOT per request: ``(latency - TTFT) / (output_tokens - 1)``; requests with fewer than two output
  tokens (or without a TTFT) are skipped.
- ITL: the gaps between consecutive streamed chunks (``chunk_ns``, arrival times of chunks that
  carry text); the first chunk's time is the TTFT, not an ITL.
- Throughput: successful requests, and their output tokens, per second over the measured window:
  first send to last receive over the non-warm-up requests (failed ones included in the window,
  excluded from the numerators).
- Percentiles: ``numpy.percentile`` with linear interpolation between closest ranks (numpy's default,
  ``method="linear"``, the same as vLLM's bench). With fewer than 100 values p99 lies between the
  two largest values: it is the maximum in disguise, and summaries say so.
- Bursts (:func:`arrived_in_bursts`): a streamed request whose tokens did not arrive one by one as the
  server made them: a chunk carried more than one token (fewer chunks than output tokens), or at
  least ``BURST_GAP_SHARE`` of its inter-chunk gaps are shorter than ``BURST_GAP_FRACTION`` of the
  server's own median time per output token (``vllm:time_per_output_token_seconds``, when known).
  Its client-side TTFT and TPOT do not describe the server; where a meaningful share of a version's
  requests (``BURST_UNRELIABLE_SHARE``) arrived in bursts, the client's TTFT/TPOT are unreliable.

Only successful (``status == "ok"``), non-warm-up requests enter latency statistics; failures are
counted and reported, never dropped silently.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

QUANTILES = (50.0, 90.0, 99.0)
STATUSES = ("ok", "error")
BURST_GAP_FRACTION = 0.1  # a gap shorter than this share of the server's median TPOT is no real token gap
BURST_GAP_SHARE = 0.2  # ... and a request with at least this share of such gaps arrived in bursts
BURST_UNRELIABLE_SHARE = 0.1  # bursts on this share of requests make the client's TTFT/TPOT unreliable


@dataclass
class RequestRecord:
    """One benchmark request as measured by the client (also a row of the run store).

    Times in ``*_ns`` are ``time.perf_counter_ns()``; ``latency_ms``/``ttft_ms`` may be given
    directly instead (then they win). ``box`` is any JSON-serialisable value (or a dataclass such as
    ``services.core.boxes.Box``); ``chunk_ns`` is the arrival time of each streamed chunk carrying text,
    ``chunk_tokens`` its token count (the server's, None where it sent none); ``bursty``: whether
    its tokens arrived in bursts (:func:`arrived_in_bursts`; None: not streamed, or not judged).
    """

    seq: int
    version: str
    send_ns: int | None = None
    recv_ns: int | None = None
    first_token_ns: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    status: str = "ok"
    error: str | None = None
    warmup: bool = False
    image_id: str | None = None
    answer: str | None = None
    box: Any = None
    iou: float | None = None
    chunk_ns: list[int] | None = None
    run_id: int | None = None
    level: int | None = None  # a sweep's level (``services.bench.sweep``); None outside sweeps
    chunk_tokens: list[int | None] | None = None
    bursty: bool | None = None

    def __post_init__(self) -> None:
        self.version = str(self.version)
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    @property
    def ok(self) -> bool:
        """Whether the request succeeded."""
        return self.status == "ok"

    @property
    def effective_latency_ms(self) -> float | None:
        """``latency_ms`` if given, else from ``recv_ns - send_ns``."""
        if self.latency_ms is not None:
            return float(self.latency_ms)
        if self.send_ns is not None and self.recv_ns is not None:
            return (self.recv_ns - self.send_ns) / 1e6
        return None

    @property
    def effective_ttft_ms(self) -> float | None:
        """``ttft_ms`` if given, else from ``first_token_ns - send_ns``."""
        if self.ttft_ms is not None:
            return float(self.ttft_ms)
        if self.send_ns is not None and self.first_token_ns is not None:
            return (self.first_token_ns - self.send_ns) / 1e6
        return None


# --------------------------------------------------------------------------- generic


@dataclass
class Distribution:
    """Count, mean, min, max and p50/p90/p99 of some values (None when there are none)."""

    count: int
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


def _array(values: Iterable[float | None]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None], dtype=float)


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation (``numpy.percentile``), or None."""
    a = _array(values)
    if a.size == 0:
        return None
    return float(np.percentile(a, q, method="linear"))


def percentiles(
    values: Iterable[float | None], qs: Sequence[float] = QUANTILES
) -> dict[float, float | None]:
    """Several percentiles at once: ``{q: value}`` (None for every q when there are no values)."""
    a = _array(values)
    if a.size == 0:
        return {float(q): None for q in qs}
    return {float(q): float(v) for q, v in zip(qs, np.percentile(a, list(qs), method="linear"))}


def mean_min_max(values: Iterable[float | None]) -> tuple[float | None, float | None, float | None]:
    """``(mean, min, max)`` of the values, or ``(None, None, None)``."""
    a = _array(values)
    if a.size == 0:
        return None, None, None
    return float(a.mean()), float(a.min()), float(a.max())


def distribution(values: Iterable[float | None]) -> Distribution:
    """Count, mean, min, max, p50, p90, p99 of the values (None entries are ignored)."""
    a = _array(values)
    if a.size == 0:
        return Distribution(0)
    p50, p90, p99 = (float(v) for v in np.percentile(a, QUANTILES, method="linear"))
    return Distribution(int(a.size), float(a.mean()), float(a.min()), float(a.max()), p50, p90, p99)


# --------------------------------------------------------------------------- per request


def measured(requests: Iterable[RequestRecord]) -> list[RequestRecord]:
    """The non-warm-up requests."""
    return [r for r in requests if not r.warmup]


def successful(requests: Iterable[RequestRecord]) -> list[RequestRecord]:
    """The successful non-warm-up requests: the ones latency statistics use."""
    return [r for r in requests if not r.warmup and r.ok]


def failure_count(requests: Iterable[RequestRecord]) -> int:
    """Failed non-warm-up requests."""
    return sum(1 for r in requests if not r.warmup and not r.ok)


def latencies_ms(requests: Iterable[RequestRecord]) -> list[float]:
    """End-to-end latency of each successful measured request."""
    return [v for r in successful(requests) if (v := r.effective_latency_ms) is not None]


def ttfts_ms(requests: Iterable[RequestRecord]) -> list[float]:
    """TTFT of each successful measured request that has one."""
    return [v for r in successful(requests) if (v := r.effective_ttft_ms) is not None]


def tpot_ms(request: RequestRecord) -> float | None:
    """``(latency - TTFT) / (output_tokens - 1)``, or None with < 2 output tokens or no TTFT."""
    lat, ttft, n = request.effective_latency_ms, request.effective_ttft_ms, request.output_tokens
    if lat is None or ttft is None or n is None or n < 2:
        return None
    return (lat - ttft) / (n - 1)


def tpots_ms(requests: Iterable[RequestRecord]) -> list[float]:
    """TPOT of each successful measured request where it is defined."""
    return [v for r in successful(requests) if (v := tpot_ms(r)) is not None]


def itl_ms(request: RequestRecord) -> list[float]:
    """Gaps between consecutive streamed chunks of one request, in ms (empty without chunks)."""
    c = request.chunk_ns or []
    return [(b - a) / 1e6 for a, b in zip(c, c[1:])]


def itls_ms(requests: Iterable[RequestRecord]) -> list[float]:
    """All inter-chunk gaps of the successful measured requests, pooled (as vLLM does)."""
    return [g for r in successful(requests) for g in itl_ms(r)]


def arrived_in_bursts(request: RequestRecord, server_tpot_ms: float | None = None) -> bool | None:
    """Whether a streamed request's tokens arrived in bursts (see the module docstring); None when
    it cannot be told: not streamed (no chunks), failed, or fewer than two output tokens."""
    chunks = request.chunk_ns or []
    n = request.output_tokens
    if not chunks or not request.ok or n is None or n < 2:
        return None
    counts = request.chunk_tokens or []
    if len(chunks) < n or any(c is not None and c > 1 for c in counts):
        return True  # several tokens in one chunk
    if server_tpot_ms is None or server_tpot_ms <= 0:
        return False
    gaps = itl_ms(request)
    short = sum(1 for g in gaps if g < BURST_GAP_FRACTION * server_tpot_ms)
    return bool(gaps) and short >= BURST_GAP_SHARE * len(gaps)


def burst_counts(requests: Iterable[RequestRecord]) -> tuple[int, int]:
    """``(bursty, judged)``: successful measured requests flagged bursty, and those judged at all."""
    flags = [r.bursty for r in successful(requests) if r.bursty is not None]
    return sum(1 for f in flags if f), len(flags)


def bursts_unreliable(bursty: int, judged: int) -> bool:
    """Whether bursts on ``bursty`` of ``judged`` requests make client-side TTFT/TPOT unreliable."""
    return judged > 0 and bursty >= max(1, BURST_UNRELIABLE_SHARE * judged)


def measured_window_s(requests: Iterable[RequestRecord]) -> float | None:
    """Seconds from the first send to the last receive over the non-warm-up requests."""
    rs = [r for r in measured(requests) if r.send_ns is not None and r.recv_ns is not None]
    if not rs:
        return None
    span = max(r.recv_ns for r in rs) - min(r.send_ns for r in rs)  # type: ignore[type-var]
    return span / 1e9 if span > 0 else None


def request_throughput(requests: Sequence[RequestRecord]) -> float | None:
    """Successful measured requests per second over the measured window."""
    w = measured_window_s(requests)
    return None if w is None else len(successful(requests)) / w


def output_token_throughput(requests: Sequence[RequestRecord]) -> float | None:
    """Output tokens of successful measured requests per second over the measured window."""
    w = measured_window_s(requests)
    if w is None:
        return None
    return sum(r.output_tokens or 0 for r in successful(requests)) / w


# --------------------------------------------------------------------------- per version


@dataclass
class VersionSummary:
    """What one model version did in a run (times in ms, rates per second)."""

    version: str
    count: int
    failures: int
    warmup: int
    mean_ms: float | None
    min_ms: float | None
    max_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p99_ms: float | None
    tpot_mean_ms: float | None
    tpot_p50_ms: float | None
    itl_mean_ms: float | None
    itl_p50_ms: float | None
    requests_per_s: float | None
    output_tokens_per_s: float | None
    window_s: float | None
    output_tokens: int
    p99_is_max: bool
    notes: list[str] = field(default_factory=list)
    bursty: int = 0  # successful measured requests whose tokens arrived in bursts
    burst_judged: int = 0  # ... of this many that could be judged (streamed, 2+ tokens)

    @property
    def client_timings_unreliable(self) -> bool:
        """Whether bursts make this version's client-side TTFT/TPOT unreliable."""
        return bursts_unreliable(self.bursty, self.burst_judged)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def summarize_version(requests: Iterable[RequestRecord], version: str | None = None) -> VersionSummary:
    """Summarize the requests of one version (all given requests, or those of ``version``).

    Raises ValueError when the given requests mix versions and ``version`` is not given.
    """
    rs = list(requests)
    if version is not None:
        rs = [r for r in rs if r.version == str(version)]
    versions = {r.version for r in rs}
    if version is None:
        if len(versions) > 1:
            raise ValueError(f"requests of several versions {sorted(versions)}: pass version=")
        version = next(iter(versions), "")
    ok = successful(rs)
    lat = distribution(latencies_ms(rs))
    ttft = percentiles(ttfts_ms(rs))
    tpot = tpots_ms(rs)
    itl = itls_ms(rs)
    failures = failure_count(rs)
    warm = sum(1 for r in rs if r.warmup)
    notes = []
    p99_is_max = 0 < lat.count < 100
    if p99_is_max:
        notes.append(
            f"only {lat.count} requests: p99 is the maximum in disguise (100 or more are needed)"
        )
    if failures:
        notes.append(f"{failures} of {failures + len(ok)} measured requests failed")
    if warm:
        notes.append(f"{warm} warm-up request(s) excluded")
    if ok and not tpot:
        notes.append("no TPOT: no request had both a TTFT and 2 or more output tokens")
    bursty, judged = burst_counts(rs)
    if judged:
        notes.append(burst_note(bursty, judged))
    return VersionSummary(
        version=str(version),
        count=lat.count,
        failures=failures,
        warmup=warm,
        mean_ms=lat.mean,
        min_ms=lat.min,
        max_ms=lat.max,
        p50_ms=lat.p50,
        p90_ms=lat.p90,
        p99_ms=lat.p99,
        ttft_p50_ms=ttft[50.0],
        ttft_p90_ms=ttft[90.0],
        ttft_p99_ms=ttft[99.0],
        tpot_mean_ms=float(np.mean(tpot)) if tpot else None,
        tpot_p50_ms=percentile(tpot, 50),
        itl_mean_ms=float(np.mean(itl)) if itl else None,
        itl_p50_ms=percentile(itl, 50),
        requests_per_s=request_throughput(rs),
        output_tokens_per_s=output_token_throughput(rs),
        window_s=measured_window_s(rs),
        output_tokens=sum(r.output_tokens or 0 for r in ok),
        p99_is_max=p99_is_max,
        notes=notes,
        bursty=bursty,
        burst_judged=judged,
    )


def burst_note(bursty: int, judged: int) -> str:
    """``"n of N requests arrived in bursts"``, and what follows for the client's TTFT/TPOT."""
    text = f"{bursty} of {judged} requests arrived in bursts"
    if bursts_unreliable(bursty, judged):
        text += ": the client-side TTFT and TPOT are unreliable; judge on the server's (vllm:* histograms)"
    return text


def summarize(requests: Iterable[RequestRecord]) -> dict[str, VersionSummary]:
    """:func:`summarize_version` for every version present, keyed by version."""
    rs = list(requests)
    return {v: summarize_version(rs, v) for v in sorted({r.version for r in rs})}


# --------------------------------------------------------------------------- memory

SERIES_KEYS = ["source", "kind", "gpu", "model", "version"]


@dataclass
class MemorySeriesSummary:
    """Baseline, peak and delta of one memory series over a window (bytes; times ``t_mono``)."""

    source: str
    kind: str
    gpu: str | None
    model: str | None
    version: str | None
    samples: int
    baseline_bytes: int
    baseline_t: float
    peak_bytes: int
    peak_t: float
    delta_bytes: int


def _rows_frame(samples: Iterable[Any] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(samples, pd.DataFrame):
        return samples
    recs = [asdict(s) if hasattr(s, "__dataclass_fields__") else dict(s) for s in samples]
    return pd.DataFrame.from_records(recs, columns=["t_mono", *SERIES_KEYS, "memory_bytes"])


def memory_summary(
    samples: Iterable[Any] | pd.DataFrame,
    t0: float | None = None,
    t1: float | None = None,
    first_request_t: float | None = None,
) -> list[MemorySeriesSummary]:
    """Baseline, peak and delta per series (source, kind, GPU, model, version) over ``[t0, t1]``.

    ``samples``: memory rows with ``t_mono``, ``source``, ``kind``, ``gpu``, ``model``,
    ``version``, ``memory_bytes`` (``services.bench.sample_series.SampleRow`` objects, dicts, or a DataFrame such as
    the run store's). Rows of the same series at the same time (several processes of one version)
    are summed. Baseline: the last reading before ``first_request_t`` (seconds on the
    ``perf_counter`` clock, i.e. ``send_ns / 1e9``), or the window's first reading when there is none
    before it. Peak: the largest reading in the window from the baseline on. Delta = peak - baseline.
    """
    df = _rows_frame(samples)
    if df.empty:
        return []
    df = df[["t_mono", *SERIES_KEYS, "memory_bytes"]].dropna(subset=["memory_bytes", "t_mono"])
    if t0 is not None:
        df = df[df["t_mono"] >= t0]
    if t1 is not None:
        df = df[df["t_mono"] <= t1]
    per_series: dict[tuple, dict[float, int]] = {}
    for row in df.itertuples(index=False):
        key = tuple(None if pd.isna(v) else str(v) for v in (getattr(row, k) for k in SERIES_KEYS))
        series = per_series.setdefault(key, {})
        series[row.t_mono] = series.get(row.t_mono, 0) + int(row.memory_bytes)
    out = []
    for key in sorted(per_series, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        times = sorted(per_series[key])
        values = [per_series[key][t] for t in times]
        i0 = 0
        if first_request_t is not None:
            before = [i for i, t in enumerate(times) if t < first_request_t]
            if before:
                i0 = before[-1]
        ipeak = max(range(i0, len(times)), key=lambda i: values[i])
        src, kind, gpu, model, version = key
        out.append(
            MemorySeriesSummary(
                source=src, kind=kind, gpu=gpu, model=model, version=version,
                samples=len(times),
                baseline_bytes=values[i0], baseline_t=times[i0],
                peak_bytes=values[ipeak], peak_t=times[ipeak],
                delta_bytes=values[ipeak] - values[i0],
            )
        )
    return out


# --------------------------------------------------------------------------- comparison

_STATISTICS: dict[str, Callable[..., Any]] = {"median": np.median, "mean": np.mean}


def bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    statistic: str | Callable[..., Any] = "median",
    n: int = 2000,
    seed: int | None = 0,
    paired: bool = False,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Bootstrap confidence interval of ``statistic(b) - statistic(a)`` (b relative to a).

    ``statistic``: ``"median"``, ``"mean"`` or a function ``f(array, axis=1)``. Resampling with
    replacement ``n`` times from a generator seeded with ``seed`` (deterministic). With
    ``paired=True`` and equal lengths, pairs ``(a[i], b[i])`` are resampled together (same images
    in the same order); with unequal lengths a warning is issued and the samples are resampled
    independently. The interval is the percentile interval at ``confidence``.
    Returns ``(diff, lo, hi)`` where ``diff`` is the observed difference.
    """
    fn = _STATISTICS[statistic] if isinstance(statistic, str) else statistic
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.ndim != 1 or xb.ndim != 1 or xa.size == 0 or xb.size == 0:
        raise ValueError("a and b must be non-empty 1-D sequences")
    if not 0 < confidence < 1 or n < 1:
        raise ValueError("confidence must be in (0, 1) and n >= 1")
    if paired and xa.size != xb.size:
        warnings.warn(
            f"paired bootstrap needs equal lengths ({xa.size} != {xb.size}): resampling unpaired",
            stacklevel=2,
        )
        paired = False
    diff = float(fn(xb[None, :], axis=1)[0] - fn(xa[None, :], axis=1)[0])
    rng = np.random.default_rng(seed)
    # resample in blocks so that memory stays below ~8 M floats per array
    block = max(1, min(n, 8_000_000 // max(xa.size, xb.size)))
    diffs = np.empty(n)
    for start in range(0, n, block):
        m = min(block, n - start)
        ia = rng.integers(0, xa.size, size=(m, xa.size))
        ib = ia if paired else rng.integers(0, xb.size, size=(m, xb.size))
        diffs[start : start + m] = fn(xb[ib], axis=1) - fn(xa[ia], axis=1)
    alpha = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(diffs, [alpha, 100.0 - alpha])
    return diff, float(lo), float(hi)
