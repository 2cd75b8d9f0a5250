"""Hand-computed cases for services.bench.stats."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.bench.stats import (
    RequestRecord,
    bootstrap_ci,
    distribution,
    failure_count,
    itl_ms,
    itls_ms,
    mean_min_max,
    measured_window_s,
    memory_summary,
    output_token_throughput,
    percentile,
    percentiles,
    request_throughput,
    summarize,
    summarize_version,
    tpot_ms,
    tpots_ms,
)
from services.bench.sample_series import SampleRow

S = 1_000_000_000  # ns per second
MS = 1_000_000  # ns per ms


# ----------------------------------------------------------------------------- percentiles


def test_percentiles_linear_interpolation_by_hand() -> None:
    values = list(range(1, 11))  # 1..10; rank = q/100 * (n - 1)
    assert percentile(values, 50) == pytest.approx(5.5)  # between 5 and 6
    assert percentile(values, 90) == pytest.approx(9.1)  # rank 8.1: 9 + 0.1 * (10 - 9)
    assert percentile(values, 99) == pytest.approx(9.91)  # rank 8.91
    assert percentiles(values) == {
        50.0: pytest.approx(5.5), 90.0: pytest.approx(9.1), 99.0: pytest.approx(9.91)
    }
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert percentiles([]) == {50.0: None, 90.0: None, 99.0: None}


def test_mean_min_max_and_distribution_ignore_none() -> None:
    assert mean_min_max([2.0, None, 4.0, 9.0]) == (5.0, 2.0, 9.0)
    assert mean_min_max([]) == (None, None, None)
    d = distribution([4.0, 1.0, 3.0, 2.0])  # sorted 1,2,3,4
    assert (d.count, d.mean, d.min, d.max) == (4, 2.5, 1.0, 4.0)
    assert d.p50 == pytest.approx(2.5)
    assert d.p90 == pytest.approx(3.7)  # rank 2.7: 3 + 0.7
    assert d.p99 == pytest.approx(3.97)
    assert distribution([]).count == 0 and distribution([]).p99 is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_percentile_is_within_range_and_monotone(values: list[float], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    p_lo, p_hi = percentile(values, lo), percentile(values, hi)
    assert min(values) - 1e-6 <= p_lo <= p_hi + 1e-6 <= max(values) + 2e-6


# ----------------------------------------------------------------------------- per request


def test_tpot_by_hand_and_skips_short_answers() -> None:
    r = RequestRecord(seq=0, version="1", send_ns=0, first_token_ns=100 * MS, recv_ns=1000 * MS,
                      output_tokens=10)
    assert r.effective_latency_ms == 1000.0 and r.effective_ttft_ms == 100.0
    assert tpot_ms(r) == pytest.approx(100.0)  # (1000 - 100) / (10 - 1)
    one = RequestRecord(seq=1, version="1", latency_ms=50.0, ttft_ms=50.0, output_tokens=1)
    no_ttft = RequestRecord(seq=2, version="1", latency_ms=50.0, output_tokens=5)
    explicit = RequestRecord(seq=3, version="1", latency_ms=210.0, ttft_ms=10.0, output_tokens=5)
    assert tpot_ms(one) is None and tpot_ms(no_ttft) is None
    assert tpot_ms(explicit) == pytest.approx(50.0)  # 200 / 4
    failed = RequestRecord(seq=4, version="1", latency_ms=10.0, ttft_ms=1.0, output_tokens=10,
                           status="error", error="boom")
    assert tpots_ms([r, one, no_ttft, explicit, failed]) == pytest.approx([100.0, 50.0])


def test_itl_from_chunk_times() -> None:
    r = RequestRecord(seq=0, version="2", send_ns=0, chunk_ns=[5 * MS, 15 * MS, 35 * MS, 65 * MS])
    assert itl_ms(r) == pytest.approx([10.0, 20.0, 30.0])
    assert itl_ms(RequestRecord(seq=1, version="2")) == []
    warm = RequestRecord(seq=2, version="2", warmup=True, chunk_ns=[0, 999 * MS])
    assert itls_ms([r, warm]) == pytest.approx([10.0, 20.0, 30.0])


def _throughput_case() -> list[RequestRecord]:
    return [
        RequestRecord(seq=0, version="1", warmup=True, send_ns=0, recv_ns=1 * S, output_tokens=99),
        RequestRecord(seq=1, version="1", send_ns=2 * S, first_token_ns=2 * S + 100 * MS,
                      recv_ns=2 * S + 500 * MS, output_tokens=10),
        RequestRecord(seq=2, version="1", send_ns=2 * S + 500 * MS, first_token_ns=2600 * MS,
                      recv_ns=3 * S, output_tokens=20),
        RequestRecord(seq=3, version="1", send_ns=3 * S, recv_ns=3 * S + 500 * MS,
                      status="error", error="HTTP 500"),
        RequestRecord(seq=4, version="1", send_ns=3 * S + 500 * MS, first_token_ns=3600 * MS,
                      recv_ns=4 * S, output_tokens=10),
    ]


def test_throughput_over_measured_window_without_warmup() -> None:
    rs = _throughput_case()
    assert measured_window_s(rs) == pytest.approx(2.0)  # first send 2 s .. last receive 4 s
    assert request_throughput(rs) == pytest.approx(1.5)  # 3 successes / 2 s (the failure: no)
    assert output_token_throughput(rs) == pytest.approx(20.0)  # 40 tokens / 2 s
    assert failure_count(rs) == 1
    assert request_throughput([rs[0]]) is None  # only warm-up: no window


def test_summarize_version_by_hand() -> None:
    s = summarize_version(_throughput_case())
    assert s.version == "1"
    assert (s.count, s.failures, s.warmup) == (3, 1, 1)
    assert (s.mean_ms, s.min_ms, s.max_ms) == (500.0, 500.0, 500.0)
    assert s.p99_ms == 500.0 and s.p99_is_max is True
    assert any("p99 is the maximum in disguise" in n for n in s.notes)
    assert any("1 of 4 measured requests failed" in n for n in s.notes)
    assert s.ttft_p50_ms == pytest.approx(100.0)
    # TPOT: (500 - 100) / 9, (500 - 100) / 19, (500 - 100) / 9
    assert s.tpot_mean_ms == pytest.approx(np.mean([400 / 9, 400 / 19, 400 / 9]))
    assert s.tpot_p50_ms == pytest.approx(400 / 9)
    assert s.requests_per_s == pytest.approx(1.5)
    assert s.output_tokens_per_s == pytest.approx(20.0)
    assert s.output_tokens == 40
    assert s.to_dict()["failures"] == 1


def test_summarize_many_requests_has_no_p99_warning_and_splits_versions() -> None:
    rs = [RequestRecord(seq=i, version="2", latency_ms=float(i + 1)) for i in range(100)]
    rs.append(RequestRecord(seq=100, version=1, latency_ms=3.0))  # int version becomes "1"
    with pytest.raises(ValueError):
        summarize_version(rs)
    both = summarize(rs)
    assert set(both) == {"1", "2"}
    v2 = both["2"]
    assert v2.count == 100 and v2.p99_is_max is False
    assert v2.p99_ms == pytest.approx(99.01)  # rank 98.01 over 1..100
    assert v2.p99_ms < v2.max_ms
    assert both["1"].count == 1


def test_bad_status_is_refused() -> None:
    with pytest.raises(ValueError):
        RequestRecord(seq=0, version="1", status="timeout")


# ----------------------------------------------------------------------------- memory


def _row(t: float, mem: int, version: str = "1", kind: str = "gpu", pid: int = 1) -> SampleRow:
    return SampleRow(t_wall=1e9 + t, t_mono=t, source="nvml", kind=kind, memory_bytes=mem,
                     gpu="0", model="qwen", version=version, pid=pid)


def test_memory_summary_baseline_peak_delta() -> None:
    rows = [
        _row(1.0, 100), _row(2.0, 110), _row(3.0, 200), _row(3.0, 100, pid=2),  # 2 instances: 300
        _row(4.0, 200),
        _row(1.0, 50, version="2"), _row(4.0, 80, version="2"),
    ]
    out = {m.version: m for m in memory_summary(rows, first_request_t=2.5)}
    v1 = out["1"]
    assert (v1.baseline_bytes, v1.baseline_t) == (110, 2.0)  # last reading before 2.5 s
    assert (v1.peak_bytes, v1.peak_t) == (300, 3.0)  # the two processes summed
    assert v1.delta_bytes == 190 and v1.samples == 4
    assert (out["2"].baseline_bytes, out["2"].peak_bytes, out["2"].delta_bytes) == (50, 80, 30)
    # window starting after the first request: baseline is the window's first reading
    w = {m.version: m for m in memory_summary(rows, t0=3.5, first_request_t=2.5)}
    assert (w["1"].baseline_bytes, w["1"].peak_bytes, w["1"].delta_bytes) == (200, 200, 0)
    # same answer from a DataFrame (the run store's shape)
    import pandas as pd
    from dataclasses import asdict

    df = pd.DataFrame([asdict(r) for r in rows])
    assert memory_summary(df, first_request_t=2.5) == memory_summary(rows, first_request_t=2.5)
    assert memory_summary([]) == []


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_constant_samples_by_hand() -> None:
    assert bootstrap_ci([1.0] * 10, [3.0] * 10, "median", n=200, seed=1) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([1.0] * 5, [4.0] * 8, "mean", n=200, seed=1) == (3.0, 3.0, 3.0)


def test_bootstrap_significant_and_not() -> None:
    rng = np.random.default_rng(42)
    a = rng.normal(100.0, 5.0, 200)
    b = rng.normal(80.0, 5.0, 200)
    diff, lo, hi = bootstrap_ci(a, b, "median", n=2000, seed=7)
    assert diff == pytest.approx(np.median(b) - np.median(a))
    assert lo <= diff <= hi < 0  # b clearly lower: interval excludes 0
    assert -23 < lo and hi < -17
    c = rng.normal(100.0, 5.0, 200)  # same distribution as a
    diff2, lo2, hi2 = bootstrap_ci(a, c, "median", n=2000, seed=7)
    assert lo2 < 0 < hi2
    # deterministic with a seed, different with another
    assert bootstrap_ci(a, c, "median", n=500, seed=3) == bootstrap_ci(a, c, "median", n=500,
                                                                         seed=3)
    assert bootstrap_ci(a, c, "median", n=500, seed=3) != bootstrap_ci(a, c, "median", n=500,
                                                                         seed=4)


def test_bootstrap_paired_sees_a_small_shift_that_unpaired_misses() -> None:
    rng = np.random.default_rng(0)
    per_image = rng.normal(500.0, 150.0, 60)  # images differ much more than versions do
    a = per_image + rng.normal(0.0, 1.0, 60)
    b = per_image - 5.0 + rng.normal(0.0, 1.0, 60)
    d_p, lo_p, hi_p = bootstrap_ci(a, b, "mean", n=2000, seed=1, paired=True)
    d_u, lo_u, hi_u = bootstrap_ci(a, b, "mean", n=2000, seed=1, paired=False)
    assert d_p == pytest.approx(d_u) == pytest.approx(b.mean() - a.mean())
    assert hi_p < 0  # paired: significant
    assert lo_u < 0 < hi_u  # unpaired: lost in the spread between images
    assert hi_p - lo_p < (hi_u - lo_u) / 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bootstrap_ci(a, b[:-1], "mean", n=100, seed=1, paired=True)
    assert any("equal lengths" in str(w.message) for w in caught)


def test_bootstrap_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([], [1.0])


# --------------------------------------------------------------------------- bursts (synthetic arrival times)


def _streamed(chunks_ms: list[float], tokens: list[int | None] | None, n: int) -> RequestRecord:
    return RequestRecord(seq=0, version="1", send_ns=0, first_token_ns=int(chunks_ms[0] * 1e6),
                         recv_ns=int(chunks_ms[-1] * 1e6), output_tokens=n,
                         chunk_ns=[int(t * 1e6) for t in chunks_ms], chunk_tokens=tokens)


def test_a_request_whose_tokens_came_several_to_a_chunk_arrived_in_bursts() -> None:
    from services.bench.stats import arrived_in_bursts

    steady = _streamed([10, 14, 18, 22], [1, 1, 1, 1], 4)
    assert arrived_in_bursts(steady) is False and arrived_in_bursts(steady, server_tpot_ms=4.0) is False
    assert arrived_in_bursts(_streamed([10, 22], [1, 3], 4)) is True  # three tokens in one chunk
    assert arrived_in_bursts(_streamed([22], None, 4)) is True  # one chunk for 4 tokens, no per-chunk counts
    # one token per chunk, but the gaps (0.04 ms) are far below the server's 4 ms per token
    packed = _streamed([22, 22.04, 22.08, 22.12], [1, 1, 1, 1], 4)
    assert arrived_in_bursts(packed) is False and arrived_in_bursts(packed, server_tpot_ms=4.0) is True
    assert arrived_in_bursts(RequestRecord(seq=0, version="1", latency_ms=5.0, output_tokens=4)) is None  # not streamed


def test_the_summary_counts_the_bursty_requests_and_says_when_they_matter() -> None:
    rs = [RequestRecord(seq=i, version="1", latency_ms=20.0, ttft_ms=5.0, output_tokens=4,
                        chunk_ns=[1, 2, 3, 4], bursty=i < 3) for i in range(10)]
    s = summarize_version(rs)
    assert (s.bursty, s.burst_judged) == (3, 10) and s.client_timings_unreliable
    assert any(n.startswith("3 of 10 requests arrived in bursts: the client-side TTFT and TPOT are unreliable")
               for n in s.notes)
    calm = summarize_version([dataclasses.replace(r, bursty=False) for r in rs])
    assert not calm.client_timings_unreliable and "0 of 10 requests arrived in bursts" in calm.notes
