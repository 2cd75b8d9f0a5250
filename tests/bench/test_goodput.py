"""services.bench.goodput: which request meets the targets, goodput over the window, capacity and its
interval; every expected number worked out by hand."""

from __future__ import annotations

import pytest

from services.bench.goodput import LatencyTargets, capacity, goodput, level_stats, mean_ci, meets_targets
from services.bench.stats import RequestRecord

T = LatencyTargets(ttft_ms=100.0, tpot_ms=10.0, e2e_ms=500.0)


def req(seq, latency, ttft, tokens, status="ok", warmup=False, send_s=0.0):
    send = int(send_s * 1e9)
    return RequestRecord(seq=seq, version="1", latency_ms=latency, ttft_ms=ttft, output_tokens=tokens,
                         status=status, warmup=warmup, send_ns=send, recv_ns=send + int(latency * 1e6),
                         error=None if status == "ok" else "boom")


def test_a_request_meets_the_targets_only_when_it_meets_every_one():
    assert meets_targets(req(0, 400, 100, 31), T)  # TPOT (400 - 100) / 30 = 10 ms: met at the limit
    assert not meets_targets(req(0, 501, 50, 10), T)  # end to end
    assert not meets_targets(req(0, 300, 101, 10), T)  # TTFT
    assert not meets_targets(req(0, 400, 50, 30), T)  # TPOT (400 - 50) / 29 = 12.1 ms
    assert meets_targets(req(0, 400, 50, 1), T)  # one token: TPOT 0, as vLLM counts it
    assert not meets_targets(req(0, 10, 5, 2, status="error"), T)  # a failure meets nothing
    no_ttft = RequestRecord(seq=0, version="1", latency_ms=120.0, output_tokens=1)  # not streamed
    assert not meets_targets(no_ttft, T)  # its first token came with the whole answer: 120 ms > 100
    assert meets_targets(no_ttft, LatencyTargets(ttft_ms=None, tpot_ms=None, e2e_ms=200.0))


def test_goodput_counts_good_requests_over_the_measured_window():
    rs = [req(0, 200, 50, 30, send_s=0.0), req(1, 900, 50, 30, send_s=0.5), req(2, 200, 50, 30, send_s=1.8),
          req(3, 50, 10, 2, status="error", send_s=1.0), req(4, 9999, 9, 2, warmup=True, send_s=-20)]
    # window: first send 0.0 s to last receive 1.8 + 0.2 = 2.0 s; good: 0 and 2
    assert goodput(rs, T) == pytest.approx(2 / 2.0)
    s = level_stats(rs, T)
    assert (s.requests, s.ok, s.failures, s.good) == (4, 3, 1, 2)
    assert s.throughput_rps == pytest.approx(3 / 2.0) and s.good_share == pytest.approx(0.5)
    assert s.p50_ms == pytest.approx(200.0) and s.ttft_p50_ms == pytest.approx(50.0)


def test_capacity_is_the_best_mean_goodput_with_an_interval_over_repeats():
    c = capacity([(1, 2.0), (2, 3.0), (2, 3.4), (2, 3.2), (4, 2.5)])
    assert c.load == 2.0 and c.rps == pytest.approx(3.2) and c.repeats == 3
    # mean 3.2, sd 0.2, t(2) = 4.303: half width 4.303 * 0.2 / sqrt(3)
    assert (c.lo, c.hi) == pytest.approx((3.2 - 0.49687, 3.2 + 0.49687), abs=1e-4)
    once = capacity([(1, 2.0), (2, None)])
    assert once.rps == 2.0 and once.lo is None and "once" in once.note
    assert capacity([]).rps is None
    assert mean_ci([5.0]) == (5.0, None, None)
