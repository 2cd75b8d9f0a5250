"""scripts/gpu_results_page.py on CPU, from a small fixture of the files a GPU run writes: every headline
figure lands on the page, copied (not recomputed), and what is missing is said to be missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_results_page as page  # noqa: E402

GB = 1e9


def dist(p50: float, mean: float, p90: float, p99: float, lo: float, hi: float, n: int = 64) -> dict:
    return {"count": n, "mean": mean, "min": lo, "max": hi, "p50": p50, "p90": p90, "p99": p99}


def difference(metric: str, a: float, b: float, lo: float, hi: float) -> dict:
    return {"metric": metric, "statistic": "median", "unit": "ms", "a": a, "b": b, "diff": b - a, "rel": (b - a) / a,
            "lo": lo, "hi": hi, "n_a": 64, "n_b": 64, "paired": True, "significant": not (lo <= 0 <= hi)}


def memory_side(weights: float, peak: float) -> dict:
    return {"source": "gpu-process", "baseline_bytes": int(peak - 2e8), "peak_bytes": int(peak), "delta_bytes": int(2e8),
            "samples": 900, "weights_bytes": int(weights), "weights_source": "server gauge",
            "decoder_linear_bytes": int(weights * 0.8), "decoder_linear_bf16_bytes": int(13.1e9),
            "kv_room_bytes": None, "kv_note": "not reserved", "rest_bytes": int(peak - weights),
            "rest_note": "peak minus weights", "notes": []}


def floor(weights: float, tpot: float) -> dict:
    f = weights / 3.0e12 * 1e3
    return {"applicable": True, "reason": "measured TPOT vs weight bytes / bandwidth", "gpu_name": "NVIDIA H100 80GB HBM3",
            "bandwidth_bytes_per_s": 3.0e12, "bandwidth_source": "H100 SXM 80GB: measured here",
            "datasheet_bytes_per_s": 3.35e12, "weight_bytes": int(weights), "floor_ms": f, "lower_floor_ms": f * 0.8,
            "measured_tpot_ms": tpot, "fraction": f / tpot, "lower_fraction": f * 0.8 / tpot}


COMPARISON = {"schema": "qwen-compare/1", "comparison": {
    "a": {"run_id": 1, "version": "1", "label": "bf16 (v1)"}, "b": {"run_id": 1, "version": "2", "label": "fp8 (v2)"},
    "image_set": "dataset folder /tmp/qwen-gpu/data/image_sets/generated-0-16-1024x1024",
    "runs": [{"id": 1, "status": "completed", "reason": None, "config": {
        "versions": ["1", "2"], "requests": 64, "warmup": 4, "load": "closed", "concurrency": 1, "max_tokens": 200,
        "stream": True, "protocol": "http", "extra_sampling": {"ignore_eos": True},
        "image_set": {"kind": "folder", "folder": "/tmp/qwen-gpu/data/image_sets/generated-0-16-1024x1024"}},
        "manifest": {"created_at": "2026-11-25T10:00:00+00:00", "server": {"version": "2.51.0"}}}],
    "latency": [
        {"metric": "latency_ms", "label": "end-to-end latency", "dist_a": dist(1493.2, 1500.1, 1520.5, 1540.25, 1480.0, 1551.0),
         "dist_b": dist(1301.7, 1310.0, 1330.0, 1350.0, 1290.0, 1360.0),
         "difference": difference("latency_ms", 1493.2, 1301.7, -200.0, -180.0)},
        {"metric": "ttft_ms", "label": "time to first token (TTFT)", "dist_a": dist(95.4, 96.0, 101.2, 110.9, 90.0, 111.0),
         "dist_b": dist(88.8, 89.0, 93.3, 99.9, 85.0, 100.0), "difference": difference("ttft_ms", 95.4, 88.8, -8.0, -5.0)},
        {"metric": "tpot_ms", "label": "time per output token (TPOT)", "dist_a": dist(7.03, 7.05, 7.1, 7.2, 6.9, 7.3),
         "dist_b": dist(6.08, 6.1, 6.2, 6.3, 6.0, 6.4), "difference": difference("tpot_ms", 7.03, 6.08, -1.0, -0.9)}],
    "throughput": {"a": {"output_tokens_per_s": 133.9, "requests_per_s": 0.67}, "b": {"output_tokens_per_s": 153.6,
                                                                                      "requests_per_s": 0.77}},
    "memory": {"a": memory_side(16.58e9, 17.9e9), "b": memory_side(10.15e9, 11.6e9), "saved_bytes": 6.43e9,
               "saved_pct": 38.78, "basis": "weights", "device": [], "notes": []},
    "floor_a": floor(16.58e9, 7.03), "floor_b": floor(10.15e9, 6.08),
    "verdict": {"lines": ["Memory: fp8 (v2) saves 6.43 GB (38.8%) of weights."]}, "notes": []}}

RUN = {"run": {"id": 1, "status": "completed", "summary": {"versions": {
    "1": {"count": 64, "failures": 0}, "2": {"count": 63, "failures": 1}}}}}

ENV = {"python": "3.12.3", "packages": {"torch": "2.11.0+cu130", "transformers": "5.17.0", "torchao": "0.18.0",
                                        "numpy": "1.26.4", "tritonclient": "2.73.0", "plotly": "7.1.0", "pandas": "2.3.1"},
       "gpu_name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "gpu_memory": "81559 MiB", "torch_cuda": "13.0",
       "device": {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "total_memory_bytes": 85e9},
       "platform": "Linux-6.18", "cpus": 16, "bundle": {"nvidia-pytriton": "0.7.0"}}

MEMORY = {"checks": [{"name": "device used: sampler vs nvidia-smi (<= 1 %)", "pass": False,
                      "detail": "max relative difference 1.80 %"}],
          "device": {"explanation": "NVML reports 530 MiB reserved by the driver"},
          "versions": {"1": {"weights_vs_allocated": {"weights_bytes": 16.58e9, "torch_allocated_bytes": 16.83e9,
                                                      "excess_bytes": 0.25e9},
                             "process_vs_reserved": {"nvml_process_bytes": 17.9e9, "torch_reserved_bytes": 17.2e9,
                                                     "outside_torch_bytes": 0.7e9},
                             "dashboard": {"rest_bytes": 1.32e9}}},
          "notes": ["a note"]}

HEADLINE = {"commands": {"bench": "python -m services.bench.cli --checkpoint /tmp/qwen2-vl-7b --requests 64",
                         "comparison_report": "python -m services.compare.report --run 1",
                         "memory_check": "python scripts/gpu_memory_check.py --metrics-url x"},
            "run": {"id": 1, "status": "completed"}}

BUILD = {"config": "configs/qwen2-vl-7b.json", "spec": {"hidden_size": 3584, "vocab_size": 152064},
         "parameters": 8291375616, "vision_parameters": 675759104, "bytes": 16582751232, "seconds": 41.2,
         "skipped": False}

DECODE = {"qwen2-vl-7b": {"bf16": {"fast": {"tpot_ms_median": 6.21}, "floor_ms": 5.5}},
          "demo-detector": {"missing": "/tmp/x.json"}}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    r = tmp_path / "results"
    files = {"env.json": ENV, "headline/headline.json": HEADLINE, "headline/bench/run_1.json": RUN,
             "headline/report/comparison_run1_v1_v2.json": COMPARISON, "headline/memory_after_load.json": MEMORY,
             "build7b/build7b.json": BUILD, "decode/decode.json": DECODE}
    for name, data in files.items():
        (r / name).parent.mkdir(parents=True, exist_ok=True)
        (r / name).write_text(json.dumps(data))
    (r / "stages.tsv").write_text("env\tPASS\t14 s\nheadline\tPASS\t402 s\n")
    (r / "tests").mkdir()
    (r / "tests" / "junit.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="2" failures="1" errors="0" skipped="0">'
        '<testcase classname="tests.test_gpu_sampler_nvml" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_gpu_sampler_nvml" name="test_b" time="2.0">'
        '<failure message="sampler vs nvidia-smi differ by up to 1.80 %">trace</failure></testcase>'
        '</testsuite></testsuites>')
    return r


def test_the_page_carries_every_headline_figure(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "gpu-results.md"
    assert page.main(["--results", str(results), "--out", str(out)]) == 0
    md = out.read_text()
    # machine and versions
    for text in ("NVIDIA H100 80GB HBM3", "580.159.04", "2.11.0+cu130", "5.17.0", "0.18.0", "1.26.4", "2.51.0", "2.73.0"):
        assert text in md, text
    # the checkpoint
    assert "8,291,375,616" in md and "675,759,104" in md and "16.58 GB" in md
    # weights, peak, rest per version
    assert "| weights (dashboard: server gauge) | 16.58 GB | 10.15 GB |" in md
    assert "17.90 GB (gpu-process)" in md and "11.60 GB (gpu-process)" in md
    assert "| measured requests / failed | 64 / 0 | 63 / 1 |" in md
    # TTFT, TPOT and latency percentiles as the report has them
    assert "| TTFT p50 / p90 / p99 (ms) | 95.4 / 101.2 / 110.9 | 88.8 / 93.3 / 99.9 |" in md
    assert "| TPOT median / mean (ms) | 7.03 / 7.05 | 6.08 / 6.10 |" in md
    assert "| latency p50 / p90 / p99 (ms) | 1493.2 / 1520.5 / 1540.2 | 1301.7 / 1330.0 / 1350.0 |" in md
    assert "| latency mean / min / max (ms) | 1500.1 / 1480.0 / 1551.0 | 1310.0 / 1290.0 / 1360.0 |" in md
    # decode against the floor
    f_a = 16.58e9 / 3.0e12 * 1e3
    assert f"| decode floor (all weights / bandwidth, ms) | {f_a:.2f} |" in md and f"{f_a / 7.03 * 100:.1f} %" in md
    assert "3.00 TB/s" in md
    # differences, verdict, memory check, decode, tests, commands
    assert "| time per output token (TPOT) | 7.03 | 6.08 |" in md
    assert "Memory: fp8 (v2) saves 6.43 GB" in md
    assert "| device used: sampler vs nvidia-smi (<= 1 %) | FAIL | max relative difference 1.80 % |" in md
    assert "NVML reports 530 MiB reserved" in md and "+238 MiB" in md
    assert "fast.tpot_ms_median | 6.21" in md and "Missing: /tmp/x.json" in md
    assert "2 tests, 1 failed" in md and "sampler vs nvidia-smi differ by up to 1.80 %" in md
    assert "python -m services.bench.cli --checkpoint /tmp/qwen2-vl-7b --requests 64" in md
    assert "| headline | PASS | 402 s |" in md


def test_missing_outputs_are_said_to_be_missing(tmp_path: Path) -> None:
    empty = tmp_path / "results"
    empty.mkdir()
    md = page.build_page(empty)
    assert "No `env.json`" in md
    assert "No comparison report" in md
    assert "No memory check" in md
    assert "Not run in the call" in md
    assert "GPU tests not run in this call." in md
    assert page.main(["--results", str(tmp_path / "nope"), "--out", str(tmp_path / "x.md")]) == 2


def test_a_tests_stage_cut_off_at_its_deadline_is_not_shown_as_a_clean_run(tmp_path: Path) -> None:
    """The 2026-12-07 decode call: pytest collected 34 GPU tests, 26 finished before the deadline."""
    results = tmp_path / "results"
    (results / "tests").mkdir(parents=True)
    (results / "stages.tsv").write_text("decode\tPASS\t424 s\ntests\tFAIL (out of time)\t60 s\n")
    (results / "tests" / "junit.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="1" failures="0" errors="0" skipped="0">'
        '<testcase classname="tests.serving.test_gpu_decode_kernels" name="test_quantize_rows" time="0.4"/>'
        "</testsuite></testsuites>")
    md = page.build_page(results)
    assert "1 tests, 0 failed" in md
    assert "The tests stage ended FAIL (out of time) after 60 s" in md
    (results / "stages.tsv").write_text("tests\tPASS\t60 s\n")
    assert "The tests stage ended" not in page.build_page(results)
