"""The comparison of stored runs: one paired run, two runs paired by image, two unpaired runs.

The stored runs here are written through the real RunStore with requests whose numbers are chosen
so that every expected value can be computed by hand (tests/compare/support.py); the comparison of a
run made by the real benchmark against the real Triton is in tests/compare/test_report.py.
"""

from __future__ import annotations

import math

import pytest

from services.bench.stats import RequestRecord
from services.compare.comparison import build_comparison, compare_run
from services.compare.runs import run_choices
from tests.compare.support import store_paired_run, truth_of


def test_comparison_of_a_stored_run(store):
    rid = store_paired_run(store)
    c = compare_run(store, rid, truth=truth_of)
    assert c.paired and c.interleaved and (c.measured_a, c.measured_b) == (8, 8)
    lat = c.metric("latency_ms")
    assert lat.dist_a.count == 8 and lat.dist_b.count == 7  # one v2 request failed
    # pairs with both ok: 7; v2 is 10 ms faster on each, so the median difference is -10 exactly
    assert lat.difference.n_a == 7 and lat.difference.diff == pytest.approx(-10.0)
    assert (lat.difference.lo, lat.difference.hi) == (pytest.approx(-10.0), pytest.approx(-10.0))
    assert lat.difference.significant
    # the three timings are judged together: each interval is Bonferroni's 1 - 0.05 / 3, the rest 95 %
    assert {c.metric(m).difference.confidence for m in ("latency_ms", "ttft_ms", "tpot_ms")} == {1 - 0.05 / 3}
    assert c.throughput.stream_tokens_per_s.confidence == 0.95
    tpot = c.metric("tpot_ms")
    assert tpot.values_a[0] == pytest.approx((100.0 - 20.0) / 10)
    # accuracy: v1 IoU 1 on the 6 table requests, v2 0.5 on 5 and 0 on the failed one
    assert c.accuracy.a.mean_iou == 1.0 and c.accuracy.a.iou_count == 6
    assert c.accuracy.b.mean_iou == pytest.approx(2.5 / 6)
    assert c.accuracy.a.no_box == 2 and c.accuracy.b.no_box == 2 and c.accuracy.b.failed == 1
    assert c.accuracy.mean_iou.diff == pytest.approx(2.5 / 6 - 1.0)
    assert c.accuracy.found.a == 1.0 and c.accuracy.found.b == pytest.approx(5 / 6)
    # agreement: IoU 0.5 on the 5 compared pairs, both no box twice, one failed
    assert c.agreement.compared == 5 and c.agreement.mean_iou == pytest.approx(0.5)
    assert c.agreement.both_no_box == 2 and [p.status for p in c.agreement.pairs].count("B failed") == 1
    # memory: gauges give the weights; the peak comes from the per-process GPU samples
    m = c.memory
    assert (m.a.weights_bytes, m.b.weights_bytes) == (16_580_000_000, 10_150_000_000)
    assert m.a.source == "gpu-process" and m.a.peak_bytes == 17_400_000_000 and m.a.baseline_bytes == 17_000_000_000
    assert m.a.rest_bytes == 17_400_000_000 - 16_580_000_000
    assert m.a.kv_room_bytes is None and m.a.kv_note.startswith("not reserved")
    assert m.saved_bytes == 6_430_000_000 and m.basis == "weights"
    assert "5.99 GiB (38.8%) of weights" in c.verdict.memory
    # the floor: H100 from the manifest, 3.0 TB/s measured
    assert c.floor_a.floor_ms == pytest.approx(16.58e9 / 3e12 * 1e3)
    assert c.floor_b.lower_floor_ms == pytest.approx(6.5e9 / 3e12 * 1e3)
    assert "faster; significant" in c.verdict.latency
    assert any("failed" in x for x in c.verdict.caveats)


def test_vllm_server_kv_room_is_unknown_unless_recorded(store):
    manifest = {"target": {"embedded": False}, "gpu": "none", "model": {"config": {"backend": "vllm"}}}
    rid = store_paired_run(store, manifest)
    c = compare_run(store, rid, truth=truth_of)
    assert c.memory.a.kv_room_bytes is None and c.memory.a.kv_note.startswith("unknown")
    assert c.floor_a.applicable is None  # an external server's GPU is unknown
    manifest["quantization"] = {"1": {"gpu_memory_utilization": 0.45, "non_kv_bytes": 2 * 10**9}}
    manifest["gpu"] = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 80 * 10**9}]}
    rid2 = store_paired_run(store, manifest)
    m = compare_run(store, rid2, truth=truth_of).memory.a
    assert m.kv_room_bytes == int(0.45 * 80e9 - 16_580_000_000 - 2e9)


def test_two_runs_pair_by_image_and_unknown_sides_raise(store):
    r1, r2 = store_paired_run(store), store_paired_run(store)
    c = build_comparison(store, (r1, "1"), (r2, "2"), truth=truth_of)
    assert c.paired and not c.interleaved and "different times" in c.pairing
    assert c.a.label == "bf16 (v1), run %d" % r1
    with pytest.raises(KeyError):
        build_comparison(store, (r1, "1"), (999, "2"))
    with pytest.raises(ValueError):
        build_comparison(store, (r1, "1"), (r1, "1"))
    with pytest.raises(ValueError):
        build_comparison(store, (r1, "1"), (r1, "7"))
    choices = run_choices(store)
    assert [ch.id for ch in choices] == [r2, r1] and choices[0].versions == ["1", "2"]
    assert choices[0].measured == 16 and choices[0].paired


def test_unpaired_runs_resample_sides_independently(store):
    rid = store.create_run({"versions": ["1"]})
    for i in range(5):
        store.add_request(rid, RequestRecord(seq=i, version="1", latency_ms=100.0 + i, answer=""))
    rid2 = store.create_run({"versions": ["2"]})
    for i in range(5):
        store.add_request(rid2, RequestRecord(seq=i, version="2", latency_ms=90.0 + i, answer=""))
    c = build_comparison(store, (rid, "1"), (rid2, "2"))
    # no image ids: pairing by position would be a guess across runs, so unpaired
    assert not c.paired and c.pairing.startswith("unpaired")
    assert c.metric("latency_ms").difference.diff == -10.0 and not c.metric("latency_ms").difference.paired
    assert not c.accuracy.known and c.verdict.accuracy.startswith("Accuracy: unknown")
    assert c.memory.basis == "unknown" and c.verdict.memory.startswith("Memory: unknown")
    assert math.isclose(c.throughput.stream_tokens_per_s.a or 0.0, 0.0)
