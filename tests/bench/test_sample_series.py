"""services.bench.sample_series: chart series from sampler samples."""

from __future__ import annotations



from services.bench.memory_readings import GpuReading, ProcessReading
from services.bench.sample_series import Sample, series_for_chart


def test_series_for_chart_sums_instances_of_a_version() -> None:
    s = Sample(
        t_mono=10.0, t_wall=1_800_000_000.0,
        gpus=(GpuReading(0, "H100", "GPU-a", 30_000, 80_000, 50.0),),
        processes=(
            ProcessReading(11, "gpu", "qwen", "1", 10_000, 0),
            ProcessReading(12, "gpu", "qwen", "1", 5_000, 0),
            ProcessReading(13, "gpu", "server", None, 1_000, 0),
            ProcessReading(11, "host", "qwen", "1", 7_000),
        ),
    )
    df = series_for_chart([s])
    got = {(r.source, r.label): r.memory_bytes for r in df.itertuples()}
    assert got == {("nvml", "GPU 0"): 30_000, ("nvml", "qwen v1"): 15_000,
                   ("nvml", "server"): 1_000, ("host", "qwen v1"): 7_000}
    assert str(df["time"].dt.tz) == "UTC"
    assert list(df.columns) == ["time", "t_mono", "source", "kind", "gpu", "model", "version",
                                "label", "memory_bytes"]
    assert series_for_chart([]).empty


def test_a_vllm_serve_page_is_labelled_with_the_variants_key() -> None:
    import pytest

    from services.bench.sample_series import variant_series
    from services.bench.triton_metrics import parse_metrics

    page = parse_metrics("\n".join([
        "# TYPE vllm:inter_token_latency_seconds histogram",
        'vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="m"} 3.0',
        'vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 5.0',
        'vllm:inter_token_latency_seconds_count{engine="0",model_name="m"} 5.0',
        'vllm:inter_token_latency_seconds_sum{engine="0",model_name="m"} 0.2',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2',
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.4',
        'vllm:kv_cache_usage_perc{engine="0",model_name="other"} 0.9', ""]))
    got = variant_series(page, "m", "fp8-vllm")
    assert got['vllm:kv_cache_usage_perc{model="m",version="fp8-vllm"}'] == pytest.approx(0.3)  # two engines' mean
    assert got['vllm:time_per_output_token_seconds_count{model="m",version="fp8-vllm"}'] == 5.0
    assert got['vllm:time_per_output_token_seconds_bucket{le="0.01",model="m",version="fp8-vllm"}'] == 3.0
    assert not any("other" in k or "inter_token" in k for k in got)
