"""services.bench.manifest: the parts that need no server (the whole manifest of a real run is checked
in tests/bench/test_runner.py)."""

from __future__ import annotations

from services.bench.manifest import (
    MANIFEST_SCHEMA,
    address_error_manifest,
    client_versions,
    quantization_from_metrics,
    target_dict,
)
from services.client.server_target import external_target

ENGINE_METRICS = """\
# TYPE qwen_engine_weight_bytes gauge
qwen_engine_weight_bytes{model="qwen",part="model",precision="fp8",mode="dynamic",version="2"} 7e9
qwen_engine_weight_bytes{model="qwen",part="decoder_linear",precision="fp8",mode="dynamic",version="2"} 5e9
qwen_engine_weight_bytes{model="qwen",precision="bf16",version="1"} 1.4e10
# TYPE qwen_engine_quantized_layers gauge
qwen_engine_quantized_layers{model="qwen",precision="fp8",version="2"} 196
# TYPE qwen_engine_weight_bytes_other gauge
qwen_engine_weight_bytes_other{model="other",precision="fp8",version="2"} 1
# TYPE nv_inference_count counter
nv_inference_count{model="qwen",version="1"} 3
"""


def test_quantization_from_metrics_reads_the_engine_gauges_per_version() -> None:
    q = quantization_from_metrics(ENGINE_METRICS)
    assert q == {
        "1": {"weight_bytes": {"total": 14_000_000_000}, "precision": "bf16"},
        "2": {"weight_bytes": {"model": 7_000_000_000, "decoder_linear": 5_000_000_000},
              "precision": "fp8", "mode": "dynamic", "quantized_layers": 196},
    }
    assert quantization_from_metrics(ENGINE_METRICS, model="other") == {
        "2": {"weight_bytes": {}, "precision": "fp8", "weight_bytes_other": 1.0}}
    assert quantization_from_metrics("") == {}


def test_the_manifest_of_an_address_the_client_refuses() -> None:
    target = external_target("http://127.0.0.1:9")
    m = address_error_manifest(target, "bad server address")
    assert m["schema"] == MANIFEST_SCHEMA and m["server"] == {"error": "bad server address"}
    assert m["target"] == target_dict(target) and m["target"]["http_url"] == "127.0.0.1:9"
    assert m["client"]["python"] and m["client"]["tritonclient"]
    assert "config" not in m  # the run's config is stored once, in the run's row


def test_client_versions_name_the_libraries_and_the_commit() -> None:
    c = client_versions()
    assert c["numpy"] and c["requests"] and c["cpus"] >= 1
    assert c["git"] is None or (len(c["git"]["commit"]) == 40 and isinstance(c["git"]["dirty"], bool))
