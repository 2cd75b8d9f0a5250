"""Server-side timings from vllm:* histograms: the percentile arithmetic on synthetic snapshots
(Prometheus text written here, parsed by the sampler's parser), the window's difference, resets,
the interval of a difference, and the store round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from services.bench.sample_series import Sample, sample_rows
from services.bench.server_timings import (
    NO_HISTOGRAMS,
    Histogram,
    bootstrap_quantile_difference,
    histogram_quantile,
    server_timings,
    timing_rows,
)
from services.bench.store import RunStore
from services.bench.triton_metrics import parse_metrics

BOUNDS = ["0.001", "0.005", "0.01", "0.02", "0.04", "+Inf"]


def page(version_counts: dict[str, dict[str, tuple[list[int], float]]], tokens: dict[str, int]) -> str:
    """Prometheus text as Triton writes it: per version and histogram, cumulative bucket counts and a sum."""
    lines = []
    names = {"ttft": "vllm:time_to_first_token_seconds", "tpot": "vllm:time_per_output_token_seconds",
             "e2e": "vllm:e2e_request_latency_seconds"}
    for key, name in names.items():
        lines += [f"# HELP {name} x", f"# TYPE {name} histogram"]
        for v, hists in version_counts.items():
            cum, total = hists[key]
            for le, c in zip(BOUNDS, cum):
                lines.append(f'{name}_bucket{{model="qwen",version="{v}",le="{le}"}} {c}')
            lines.append(f'{name}_count{{model="qwen",version="{v}"}} {cum[-1]}')
            lines.append(f'{name}_sum{{model="qwen",version="{v}"}} {total}')
    lines += ["# HELP vllm:generation_tokens_total x", "# TYPE vllm:generation_tokens_total counter"]
    lines += [f'vllm:generation_tokens_total{{model="qwen",version="{v}"}} {n}' for v, n in tokens.items()]
    return "\n".join(lines) + "\n"


def rows_of(text: str, t: float) -> list:
    return sample_rows(Sample(t_mono=t, t_wall=1.7e9 + t, metrics=parse_metrics(text)))


ZERO = ([0] * 6, 0.0)


def test_quantiles_interpolate_inside_the_bucket_as_prometheus_does() -> None:
    # 10 observations: 2 in (0, 1 ms], 6 in (5, 10 ms], 2 in (10, 20 ms]
    h = Histogram(((0.001, 2), (0.005, 2), (0.01, 8), (0.02, 10), (0.04, 10), (math.inf, 10)), 10, 0.09)
    # rank 5 lies in (0.005, 0.01]: 0.005 + 0.005 * (5 - 2) / 6
    assert histogram_quantile(0.5, h) == pytest.approx(0.0075)
    assert histogram_quantile(0.9, h) == pytest.approx(0.01 + 0.01 * (9 - 8) / 2)
    assert histogram_quantile(0.1, h) == pytest.approx(0.001 * 1 / 2)  # the lowest bucket starts at 0
    # a rank in +Inf gives the largest finite bound; no observations, no quantile
    inf = Histogram(((0.001, 0), (math.inf, 4)), 4, 1.0)
    assert histogram_quantile(0.5, inf) == 0.001
    assert histogram_quantile(0.5, Histogram(((0.001, 0), (math.inf, 0)), 0, 0.0)) is None


def test_the_window_is_the_difference_between_its_first_and_last_reading() -> None:
    before = page({"1": {"ttft": ([1, 1, 1, 1, 1, 1], 0.0005), "tpot": ([5, 5, 5, 5, 5, 5], 0.004),
                         "e2e": ([0, 0, 0, 0, 1, 1], 0.03)}, "2": {k: ZERO for k in ("ttft", "tpot", "e2e")}},
                  {"1": 5, "2": 0})
    # version 1 gains 4 TTFTs in (5, 10 ms], 20 TPOTs in (1, 5 ms], 4 e2e in (20, 40 ms]
    after = page({"1": {"ttft": ([1, 1, 5, 5, 5, 5], 0.0305), "tpot": ([5, 25, 25, 25, 25, 25], 0.064),
                        "e2e": ([0, 0, 0, 0, 5, 5], 0.15)}, "2": {k: ZERO for k in ("ttft", "tpot", "e2e")}},
                 {"1": 29, "2": 0})
    result = server_timings(rows_of(before, 10.0) + rows_of(after, 12.0))
    assert result.reason is None and sorted(result.versions) == ["1", "2"]
    v1 = result.versions["1"]
    assert (v1.t0, v1.t1) == (10.0, 12.0)
    assert v1.ttft.count == 4 and v1.ttft.mean_ms == pytest.approx(7.5)  # (0.0305 - 0.0005) / 4
    assert v1.ttft.p50_ms == pytest.approx(7.5) and v1.ttft.p90_ms == pytest.approx(9.5)
    assert v1.tpot.count == 20 and v1.tpot.p50_ms == pytest.approx(3.0) and v1.tpot.mean_ms == pytest.approx(3.0)
    assert v1.e2e.count == 4 and v1.e2e.p99_ms == pytest.approx(20 + 20 * 3.96 / 4)
    assert v1.generation_tokens == 24 and v1.generation_tokens_per_s == pytest.approx(12.0)
    v2 = result.versions["2"]  # nothing observed: counts 0, no percentiles
    assert v2.ttft.count == 0 and v2.ttft.p50_ms is None and v2.ttft.mean_ms is None
    assert {(r["version"], r["metric"]) for r in timing_rows(result)} == {
        (v, m) for v in ("1", "2") for m in ("ttft", "tpot", "e2e")}
    # a reading outside the window is left out
    assert server_timings(rows_of(before, 10.0) + rows_of(after, 12.0), t1=11.0).versions == {}


def test_a_server_restart_in_the_window_gives_unknown_not_a_negative_count() -> None:
    high = page({"1": {"ttft": ([3, 3, 3, 3, 3, 3], 0.002), "tpot": ZERO, "e2e": ZERO}}, {"1": 9})
    low = page({"1": {"ttft": ([1, 1, 1, 1, 1, 1], 0.001), "tpot": ZERO, "e2e": ZERO}}, {"1": 2})
    v1 = server_timings(rows_of(high, 1.0) + rows_of(low, 2.0)).versions["1"]
    assert v1.ttft is None and v1.generation_tokens is None


def test_no_vllm_series_is_unknown_with_the_reason() -> None:
    text = '# TYPE nv_gpu_utilization gauge\nnv_gpu_utilization{gpu_uuid="GPU-0"} 0.5\n'
    result = server_timings(rows_of(text, 1.0) + rows_of(text, 2.0))
    assert result.versions == {} and result.reason == NO_HISTOGRAMS


def test_the_interval_of_a_quantile_difference_is_at_the_buckets_resolution() -> None:
    same = Histogram(((0.001, 0), (0.005, 30), (0.01, 60), (math.inf, 60)), 60, 0.3)
    diff, lo, hi = bootstrap_quantile_difference(same, same)
    assert diff == 0 and lo < 0 < hi  # identical histograms: the interval straddles 0
    # medians in neighbouring buckets (4.9 ms against 5.1 ms would read so): interpolated 2.5 vs 5 ms
    # apart, but nothing says they are not both at the 5 ms bound: not significant
    a = Histogram(((0.005, 50), (0.01, 60), (0.02, 60), (0.04, 60), (math.inf, 60)), 60, 0.2)
    b = Histogram(((0.005, 10), (0.01, 60), (0.02, 60), (0.04, 60), (math.inf, 60)), 60, 0.4)
    diff, lo, hi = bootstrap_quantile_difference(a, b)
    assert diff == pytest.approx(0.005 + 0.005 * 20 / 50 - 0.005 * 30 / 50)
    assert lo == 0.0 and hi == pytest.approx(0.01)  # B's lower edge - A's upper edge .. B's upper - A's lower
    # a whole bucket apart: the interval excludes 0
    c = Histogram(((0.005, 0), (0.01, 10), (0.02, 60), (0.04, 60), (math.inf, 60)), 60, 0.8)
    diff, lo, hi = bootstrap_quantile_difference(a, c)
    assert lo == pytest.approx(0.01 - 0.005) and hi == pytest.approx(0.02)
    assert bootstrap_quantile_difference(a, Histogram(((0.005, 0), (math.inf, 0)), 0, 0.0)) is None


def test_server_timings_round_trip_through_the_store(tmp_path: Path) -> None:
    before = page({"1": {"ttft": ZERO, "tpot": ZERO, "e2e": ZERO}}, {"1": 0})
    after = page({"1": {"ttft": ([0, 2, 2, 2, 2, 2], 0.006), "tpot": ZERO, "e2e": ZERO}}, {"1": 2})
    with RunStore(tmp_path) as store:
        run = store.create_run({"model": "qwen"})
        store.add_samples(run, [Sample(t_mono=t, t_wall=1.7e9 + t, metrics=parse_metrics(text))
                                for t, text in ((1.0, before), (3.0, after))])
        stored = [r for r in store.get_samples(run) if r.kind.startswith("vllm:")]
        assert stored and all(r.memory_bytes is None and r.value is not None for r in stored)
        result = server_timings(store.get_samples(run))
        store.set_server_timings(run, timing_rows(result))
        rows = {(r["version"], r["metric"]): r for r in store.get_server_timings(run)}
        assert rows[("1", "ttft")]["count"] == 2 and rows[("1", "ttft")]["p50_ms"] == pytest.approx(3.0)
        assert rows[("1", "ttft")]["t0"] == 1.0 and rows[("1", "ttft")]["t1"] == 3.0
        assert rows[("1", "tpot")]["count"] == 0 and rows[("1", "tpot")]["p50_ms"] is None
        # the memory views ignore the vllm:* rows (no memory in them)
        assert store.memory_export(run, "1") == ([], "none")
