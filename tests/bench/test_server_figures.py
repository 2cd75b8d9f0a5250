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


def test_the_load_chart_has_one_line_per_variant_from_each_servers_own_page(tmp_path: Path) -> None:
    """Two vllm serve pages (vLLM's own labels: model_name, engine) read under each variant's key and
    stored: KV-cache usage and running / waiting, one line per variant; a timings window per variant."""
    from services.bench.sample_series import variant_series

    def vllm_page(usage: float, running: int, waiting: int, model: str) -> dict:
        text = "\n".join([
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="{model}"}} {usage}',
            "# TYPE vllm:num_requests_running gauge",
            f'vllm:num_requests_running{{engine="0",model_name="{model}"}} {running}',
            "# TYPE vllm:num_requests_waiting gauge",
            f'vllm:num_requests_waiting{{engine="0",model_name="{model}"}} {waiting}', ""])
        return parse_metrics(text)

    store = RunStore(tmp_path)
    with store:
        run = store.create_run({"model": "demo"})
        samples = []
        for i in range(3):
            metrics = {**variant_series(vllm_page(0.1 * i, i, 3 - i, "demo-bf16"), "demo-bf16", "bf16-vllm"),
                       **variant_series(vllm_page(0.2 * i, 2 * i, 0, "demo-fp8"), "demo-fp8", "fp8-vllm")}
            samples.append(Sample(t_mono=10.0 + i, t_wall=1.7e9 + i, metrics=metrics))
        store.add_samples(run, samples)
        fig = sf.server_load_figure(store.samples_frame(run), t0=10.0)
    names = sorted(t.name for t in fig.data)
    assert names == ["bf16-vllm KV", "bf16-vllm running", "bf16-vllm waiting",
                     "fp8-vllm KV", "fp8-vllm running", "fp8-vllm waiting"]
    kv = next(t for t in fig.data if t.name == "fp8-vllm KV")
    assert list(kv.x) == [0.0, 1.0, 2.0] and list(kv.y) == pytest.approx([0.0, 20.0, 40.0])
    waiting = next(t for t in fig.data if t.name == "bf16-vllm waiting")
    assert list(waiting.y) == [3.0, 2.0, 1.0]


def test_the_load_chart_says_why_it_is_empty() -> None:
    import pandas as pd

    fig = sf.server_load_figure(pd.DataFrame(columns=["t_mono", "kind", "version", "value"]))
    assert not fig.data and any(a.text == sf.NO_LOAD_SERIES for a in fig.layout.annotations)


def test_the_live_load_chart_takes_each_reading_once_from_sampler_samples() -> None:
    """A thinned list of ticks, some carrying an earlier reading: each reading is charted once, at its time."""
    from services.bench.sample_series import variant_series

    page = parse_metrics('# TYPE vllm:num_requests_running gauge\n'
                         'vllm:num_requests_running{engine="0",model_name="m"} 3\n')
    metrics = variant_series(page, "m", "v-a")
    ticks = [Sample(t_mono=5.0, t_wall=1.7e9, metrics=metrics, metrics_t_mono=5.0, metrics_t_wall=1.7e9),
             Sample(t_mono=5.1, t_wall=1.7e9 + 0.1, metrics=metrics, metrics_t_mono=5.0, metrics_t_wall=1.7e9),
             Sample(t_mono=6.0, t_wall=1.7e9 + 1, metrics=metrics, metrics_t_mono=6.0, metrics_t_wall=1.7e9 + 1)]
    frame = sf.live_series_frame(ticks)
    assert list(frame["t_mono"]) == [5.0, 6.0] and set(frame["version"]) == {"v-a"}
    (line,) = [t for t in sf.server_load_figure(frame, t0=5.0).data if t.name == "v-a running"]
    assert list(line.x) == [0.0, 1.0] and list(line.y) == [3.0, 3.0]
