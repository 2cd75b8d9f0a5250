"""services.compare.run_context: what a comparison was measured on, in words, "unknown" where not recorded."""

from __future__ import annotations

from services.bench.store import RunStore
from services.compare.comparison import compare_run
from services.compare.run_context import context_rows
from tests.compare.support import store_paired_run

H100_MANIFEST = {
    "target": {"embedded": True, "label": "embedded Triton at 127.0.0.1:8000",
               "checkpoint": {"path": "/ckpt/qwen2-7b-nutrition", "kind": "external", "parameters": 8_290_000_000}},
    "server": {"name": "triton", "version": "2.51.0"},
    "model": {"name": "qwen", "config": {"backend": "vllm"}},
    "gpu": {"driver": "550.54", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85_520_809_984}]},
    "client": {"host": "gpu-box", "cpus": 16},
    "quantization": {"1": {"source": "metrics", "precision": "bf16", "mode": "none", "weight_bytes": {"model": 16_580_000_000}},
                     "2": {"source": "metrics", "precision": "fp8", "mode": "fp8_dynamic", "quantized_layers": 196,
                           "weight_bytes": {"model": 10_150_000_000}}},
    "image_set": {"kind": "generated", "seed": 3, "count": 16, "max_side": 1024},
}


def test_a_full_manifest_names_model_hardware_server_quantization_and_workload(tmp_path):
    with RunStore(tmp_path) as store:
        rid = store_paired_run(store, H100_MANIFEST)
        rows = dict(context_rows(compare_run(store, rid)))
    assert rows["Model and checkpoint"] == ("model 'qwen' serving the checkpoint /ckpt/qwen2-7b-nutrition "
                                            "(external, 8.3 B parameters)")
    assert rows["Hardware"] == "NVIDIA H100 80GB HBM3 (79.65 GiB), driver 550.54 on the benchmark host gpu-box (16 CPUs)"
    assert rows["Server and engine"] == ("Triton Inference Server 2.51.0 (embedded Triton at 127.0.0.1:8000); "
                                         "engine: vLLM (Triton's vLLM backend)")
    assert rows["Quantization as served"] == (
        "bf16 (v1): bf16, weights 15.44 GiB (from the server's qwen_engine_* gauges); fp8 (v2): fp8, mode fp8_dynamic, "
        "196 layers quantized, weights 9.45 GiB (from the server's qwen_engine_* gauges)")
    assert rows["Workload"].startswith("16 generated label images (seed 3), longest side 1024 px; ")


def test_what_a_run_did_not_record_is_unknown(tmp_path):
    with RunStore(tmp_path) as store:
        rid = store_paired_run(store, {"target": {"embedded": False}})
        rows = dict(context_rows(compare_run(store, rid)))
    assert "checkpoint unknown (an external server" in rows["Model and checkpoint"]
    assert rows["Hardware"] == "unknown (no GPU reading was recorded)"
    assert rows["Server and engine"] == "server unknown; engine: unknown"
    assert rows["Quantization as served"] == "bf16 (v1): unknown (not recorded); fp8 (v2): unknown (not recorded)"
    assert "load unknown" in rows["Workload"] and "max tokens unknown" in rows["Workload"]


def test_the_memory_table_says_not_reserved_rather_than_unknown(tmp_path):
    from services.compare.report import memory_rows

    with RunStore(tmp_path) as store:
        rows = {r[0]: r[1:] for r in memory_rows(compare_run(store, store_paired_run(store)))}
    # the transformers engine reserves no KV-cache room: its row says so, and the "how" row why
    assert rows["KV-cache room"] == ["not reserved", "not reserved"]
    assert rows["KV-cache room: how"][0].startswith("not reserved: this engine allocates KV cache per request")
    assert rows["weights"] == ["15.44 GiB", "9.45 GiB"]


def test_a_run_on_variants_names_each_by_label_kind_url_and_model(tmp_path):
    manifest = {"target": {"embedded": True, "label": "embedded Triton at 127.0.0.1:8000"},
                "variants": [{"key": "1", "label": "bf16", "kind": "triton", "url": None, "model": "qwen",
                              "version": "1", "target": {"label": "embedded Triton at 127.0.0.1:8000"}},
                             {"key": "2", "label": "fp8-vllm", "kind": "openai", "url": "http://10.0.0.2:8000",
                              "model": "qwen2-vl-fp8", "version": None}]}
    with RunStore(tmp_path) as store:
        rows = context_rows(compare_run(store, store_paired_run(store, manifest)))
    assert rows[0] == ("Variants", "bf16: embedded Triton at 127.0.0.1:8000, model 'qwen', version 1; "
                                   "fp8-vllm: OpenAI-compatible server at http://10.0.0.2:8000, model 'qwen2-vl-fp8'")
    with RunStore(tmp_path / "old") as store:  # a run that recorded no variants: no such row
        assert "Variants" not in dict(context_rows(compare_run(store, store_paired_run(store))))
