"""The Benchmark page's server-side table, notes and charts, from stored vllm:* rows (synthetic
Prometheus text parsed by the sampler's parser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.bench import server_figures as sf
from services.bench.sample_series import Sample
from services.bench.server_timings import NO_HISTOGRAMS, server_timings, timing_rows
from services.bench.store import RunStore
from services.bench.triton_metrics import parse_metrics
from tests.bench.test_server_timings import ZERO, page


def stored_run(tmp_path: Path) -> tuple[RunStore, int]:
    store = RunStore(tmp_path)
    run = store.create_run({"model": "qwen"})
    texts = [
        page({"1": {"ttft": ZERO, "tpot": ZERO, "e2e": ZERO}}, {"1": 0}),
        page({"1": {"ttft": ([0, 2, 2, 2, 2, 2], 0.006), "tpot": ([0, 10, 10, 10, 10, 10], 0.03),
                    "e2e": ([0, 0, 0, 2, 2, 2], 0.03)}}, {"1": 12}),
        page({"1": {"ttft": ([0, 2, 4, 4, 4, 4], 0.02), "tpot": ([0, 30, 30, 30, 30, 30], 0.09),
                    "e2e": ([0, 0, 0, 4, 4, 4], 0.06)}}, {"1": 36}),
    ]
    store.add_samples(run, [Sample(t_mono=100.0 + 2 * i, t_wall=1.7e9 + i, metrics=parse_metrics(t))
                            for i, t in enumerate(texts)])
    store.set_server_timings(run, timing_rows(server_timings(store.get_samples(run))))
    return store, run


def test_the_table_puts_the_client_median_beside_the_server(tmp_path: Path) -> None:
    store, run = stored_run(tmp_path)
    with store:
        rows = store.get_server_timings(run)
        summaries = {"1": {"ttft_p50_ms": 40.0, "tpot_p50_ms": 0.04, "p50_ms": 30.0, "bursty": 3, "burst_judged": 4}}
        frame = sf.server_timings_frame(rows, summaries)
        assert list(frame.columns) == sf.SERVER_COLUMNS and len(frame) == 3
        ttft = frame.iloc[0]
        assert ttft["client p50 (ms)"] == 40.0 and ttft["server n"] == 4
        assert ttft["server p50 (ms)"] == pytest.approx(5.0)  # rank 2 of 4 at the top of (1, 5 ms]
        notes = sf.server_timing_notes(rows, summaries, None)
        assert notes == ["bf16 (v1): 3 of 4 requests arrived in bursts: its client-side TTFT and TPOT are "
                         "unreliable; read the server's numbers."]
        assert sf.server_timing_notes([], {}, {"server_timings": {"reason": NO_HISTOGRAMS}}) == [
            f"Server-side timings: {NO_HISTOGRAMS}."]


def test_the_charts_draw_tokens_per_second_and_percentiles_per_interval(tmp_path: Path) -> None:
    store, run = stored_run(tmp_path)
    with store:
        samples = store.samples_frame(run)
    rate = sf.generation_rate_figure(samples, t0=100.0)
    assert len(rate.data) == 1 and list(rate.data[0].x) == [2.0, 4.0] and list(rate.data[0].y) == [6.0, 12.0]
    pct = sf.server_percentile_figure(samples, t0=100.0)
    names = {t.name for t in pct.data}
    assert names == {"bf16 (v1) p50", "bf16 (v1) p90", "bf16 (v1) p99"}
    ttft_p50 = next(t for t in pct.data if t.name == "bf16 (v1) p50" and t.xaxis == "x")
    # interval 1: two TTFTs in (1, 5 ms]; interval 2: two in (5, 10 ms]
    assert list(ttft_p50.x) == [2.0, 4.0] and list(ttft_p50.y) == pytest.approx([3.0, 7.5])
    empty = sf.server_percentile_figure(samples.iloc[0:0], t0=0.0)
    assert not empty.data and empty.layout.annotations[-1].text == NO_HISTOGRAMS  # after the subplot titles
