"""services.bench.triton_metrics: series keys, the line prefilter against prometheus_client over the
whole text (a real Triton metrics page included), and pages that are no exposition format."""

from __future__ import annotations


import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.bench.sampler import SOURCE_METRICS, Sampler
from services.bench.triton_metrics import parse_metrics, parse_series_key, prefilter_metrics, series_key
from tests.bench.sampler_fixtures import METRICS_BODY, MetricsServer


def test_series_key_round_trip_with_escapes() -> None:
    labels = {"version": "2", "model": 'q"w\\en', "z": "a\nb"}
    key = series_key("vllm:x", labels)
    assert key.startswith('vllm:x{model=')  # labels sorted
    assert parse_series_key(key) == ("vllm:x", labels)
    assert parse_series_key("plain") == ("plain", {})


# what the sampler keeps, written out here independently of services.bench.sampler
KEPT_EXACT = {"nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_utilization"}


KEPT_PREFIXES = ("nv_inference_", "vllm:", "qwen_")


def _kept(name: str) -> bool:
    return name in KEPT_EXACT or name.startswith(KEPT_PREFIXES)


def _line_name(line: str) -> str:
    """The family named by a HELP/TYPE line, or the metric name of a sample line."""
    if line.startswith("#"):
        return line.split()[2]
    return line.split("{")[0].split()[0]


def _full_parse(text: str) -> dict[str, float]:
    """What parse_metrics returned before the prefilter: prometheus_client over the whole text,
    then the kept series, with the wire names (no ``_total`` the text did not have)."""
    wire = {_line_name(ln) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name
            if name not in wire and name.endswith("_total") and name[:-6] in wire:
                name = name[:-6]
            if _kept(name):
                out[series_key(name, s.labels)] = float(s.value)
    return out


def _check_prefilter(raw: str) -> list[str]:
    """The prefilter keeps exactly the HELP/TYPE and sample lines of kept families, in order, and
    parsing what it keeps gives what parsing everything gave. Returns the dropped families."""
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    described = [ln for ln in lines if ln.startswith(("# HELP ", "# TYPE ")) or not ln.startswith("#")]
    kept = prefilter_metrics(raw).splitlines()
    assert kept == [ln for ln in described if _kept(_line_name(ln))]
    assert parse_metrics(raw) == _full_parse(raw)
    return sorted({_line_name(ln) for ln in described if not _kept(_line_name(ln))})


def test_prefilter_on_a_real_triton_metrics_page(triton_server) -> None:
    import urllib.request

    raw = urllib.request.urlopen(triton_server.metrics_url, timeout=5).read().decode()
    dropped = _check_prefilter(raw)
    assert {"nv_cpu_memory_used_bytes", "nv_pinned_memory_pool_total_bytes"} <= set(dropped)
    parsed = parse_metrics(raw)
    names = {parse_series_key(k)[0] for k in parsed}
    assert {"nv_inference_request_success", "nv_inference_count", "qwen_engine_weight_bytes",
            "qwen_engine_quantized_layers"} <= names
    for v in ("1", "2"):
        assert parsed[series_key("nv_inference_request_success", {"model": "qwen", "version": v})] >= 0
    kept_text = prefilter_metrics(raw)
    assert len(kept_text) < len(raw)


def test_prefilter_on_counters_histograms_and_unkept_families() -> None:
    body = METRICS_BODY + """\
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-x"} 301.5
# TYPE nv_cache_hit_duration histogram
nv_cache_hit_duration_bucket{le="+Inf"} 3
nv_cache_hit_duration_count 3
# a plain comment
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model="qwen",version="1"} 12
"""
    dropped = _check_prefilter(body)
    assert dropped == ["nv_cache_hit_duration", "nv_cache_hit_duration_bucket", "nv_cache_hit_duration_count",
                       "nv_cpu_memory_used_bytes", "nv_gpu_power_usage", "process_cpu_seconds_total"]
    parsed = parse_metrics(body)
    assert parsed[series_key("vllm:prompt_tokens_total", {"model": "qwen", "version": "1"})] == 12
    assert parsed[series_key("nv_inference_request_success", {"model": "qwen", "version": "2"})] == 5
    assert parsed[series_key("vllm:time_to_first_token_seconds_bucket",
                             {"le": "+Inf", "model": "qwen", "version": "2"})] == 2


@pytest.mark.parametrize("body", ["<html><body><h1>404 Not Found</h1></body></html>\n",
                                  '{"error": "no metrics here"}\n'])
def test_a_page_that_is_no_exposition_format_is_still_an_error(body: str) -> None:
    with pytest.raises(ValueError):
        parse_metrics(body)
    server = MetricsServer(body)
    server.start()
    try:
        s = Sampler(metrics_url=server.url, nvml=False, host_memory=False).sample_once()
    finally:
        server.stop()
    assert s.metrics == {} and s.source_errors[SOURCE_METRICS].startswith("ValueError")
