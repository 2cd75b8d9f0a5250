"""The paired comparison's statistics against hand-computed cases, and a comparison of a stored run.

The stored runs here are written through the real RunStore with requests whose numbers are chosen
so that every expected value can be computed by hand; the comparison of a run made by the real
benchmark against the real Triton is in tests/test_comparison_report.py.
"""

from __future__ import annotations

import math

import pytest

from services.bench.stats import RequestRecord
from services.core.boxes import Box, format_answer
from services.compare.comparison import (
    AccuracyComparison,
    AccuracySide,
    Agreement,
    Difference,
    MemoryComparison,
    MemorySide,
    MetricComparison,
    PairAgreement,
    Side,
    accuracy_sentence,
    build_comparison,
    compare_run,
    comparison_to_dict,
    decode_floor,
    difference,
    distribution,
    evaluate_request,
    format_bytes,
    found_share,
    known_gpu,
    latency_sentence,
    make_pairs,
    mean_matched_iou,
    memory_sentence,
    ratio_difference,
    run_choices,
    run_gpu,
    summary_rows,
)
from services.bench.sample_series import SampleRow
from services.bench.store import RunStore

A = Side(1, "1", "bf16 (v1)")
B = Side(1, "2", "fp8 (v2)")


# --------------------------------------------------------------------------- differences


def test_paired_shift_has_a_degenerate_interval_that_excludes_zero():
    # b = a + 2 in every pair: every paired resample has median(b) - median(a) = 2 exactly
    d = difference("latency_ms", [10.0, 20.0, 30.0, 40.0], [12.0, 22.0, 32.0, 42.0], paired=True)
    assert (d.a, d.b, d.diff) == (25.0, 27.0, 2.0)
    assert d.lo == pytest.approx(2.0) and d.hi == pytest.approx(2.0)
    assert d.rel == pytest.approx(2.0 / 25.0)
    assert d.significant is True


def test_two_pair_bootstrap_matches_the_hand_computed_distribution():
    # pairs (0, 0) and (0, 4): resampled means of b - a are 0 (p 1/4), 2 (p 1/2), 4 (p 1/4),
    # so the 2.5 and 97.5 percentiles are 0 and 4: the interval touches 0, not significant
    d = difference("x", [0.0, 0.0], [0.0, 4.0], statistic="mean", paired=True)
    assert d.diff == 2.0
    assert (d.lo, d.hi) == (0.0, 4.0)
    assert d.significant is False
    assert "rough" in (d.note or "")


def test_identical_sides_are_not_significant():
    d = difference("x", [5.0, 5.0, 5.0], [5.0, 5.0, 5.0], statistic="mean")
    assert (d.diff, d.lo, d.hi, d.significant) == (0.0, 0.0, 0.0, False)


def test_paired_difference_uses_only_pairs_known_on_both_sides():
    d = difference("x", [1.0, None, 3.0, 10.0], [2.0, 7.0, None, 12.0], statistic="mean", paired=True)
    assert (d.n_a, d.n_b) == (2, 2)
    assert (d.a, d.b) == (5.5, 7.0)


def test_too_few_values_give_no_interval_and_say_why():
    d = difference("x", [1.0], [2.0], paired=True)
    assert d.diff == 1.0 and d.lo is None and d.significant is None
    assert "at least 2" in d.note
    empty = difference("x", [None, None], [1.0, 2.0], paired=True)
    assert empty.diff is None and empty.note == "no pairs with a value on both sides"


def test_paired_values_must_be_aligned():
    with pytest.raises(ValueError):
        difference("x", [1.0, 2.0], [1.0], paired=True)


def test_bootstrap_is_deterministic_for_a_seed():
    a = [float(v) for v in range(30)]
    b = [v * 1.1 for v in a]
    assert difference("x", a, b, paired=True) == difference("x", a, b, paired=True)


def test_ratio_difference_by_hand():
    # A: 10 tokens in 1 s and 10 in 2 s -> 20/3 tok/s; B: 10 in 1 s twice -> 10 tok/s.
    # Paired resamples: (0,0): 10 - 10 = 0; (1,1): 10 - 5 = 5; mixed: 10 - 20/3. Interval [0, 5].
    d = ratio_difference("tok/s", [10, 10], [1.0, 2.0], [10, 10], [1.0, 1.0], paired=True)
    assert d.a == pytest.approx(20 / 3) and d.b == 10.0 and d.diff == pytest.approx(10 / 3)
    assert (d.lo, d.hi) == (pytest.approx(0.0), pytest.approx(5.0))
    assert d.significant is False


def test_percentiles_are_linear_interpolation():
    dist = distribution([1.0, 2.0, 3.0, 4.0])
    assert (dist.p50, dist.p90, dist.p99) == (2.5, pytest.approx(3.7), pytest.approx(3.97))
    assert (dist.mean, dist.min, dist.max, dist.count) == (2.5, 1.0, 4.0, 4)


# --------------------------------------------------------------------------- boxes


T1, T2 = Box(0, 0, 10, 10), Box(20, 20, 30, 30)


def test_matching_of_several_boxes_counts_unmatched_ones_as_zero():
    # (0,0,10,5) covers half of T1: IoU 0.5; the far box and T2 stay unmatched (0, 0)
    pred = [Box(0, 0, 10, 5), Box(100, 100, 110, 110)]
    assert mean_matched_iou(pred, [T1, T2]) == pytest.approx(0.5 / 3)
    assert found_share(pred, [T1, T2]) == 0.5


def test_matching_ignores_order_and_is_one_to_one():
    assert mean_matched_iou([T2, T1], [T1, T2]) == 1.0
    assert found_share([T2, T1], [T1, T2]) == 1.0
    # two predictions on one true table: one matches (IoU 1), the other is unmatched (0)
    assert mean_matched_iou([T1, T1], [T1]) == 0.5
    assert found_share([T1, T1], [T1]) == 1.0


def test_found_needs_iou_of_at_least_one_half():
    assert found_share([Box(0, 0, 10, 4.9)], [T1]) == 0.0
    assert found_share([Box(0, 0, 10, 5)], [T1]) == 1.0
    assert found_share([T1], []) is None
    assert mean_matched_iou([], []) is None


def _req(seq, version, image_id, latency, ttft=None, tokens=None, answer="", status="ok", warmup=False):
    return RequestRecord(seq=seq, version=version, image_id=image_id, latency_ms=latency, ttft_ms=ttft,
                         output_tokens=tokens, answer=answer if status == "ok" else None, status=status,
                         error=None if status == "ok" else "boom", warmup=warmup,
                         send_ns=seq * 10**9, recv_ns=seq * 10**9 + int(latency * 1e6))


def test_evaluate_request_reads_every_box_of_the_answer():
    r = _req(0, "1", "img", 10.0, answer=format_answer([T1, Box(200, 200, 300, 300)]))
    e = evaluate_request(r, [T1])
    assert e.boxes == [T1, Box(200, 200, 300, 300)]
    assert e.truth_iou == 0.5 and e.found == 1.0 and not e.no_box and not e.failed
    failed = evaluate_request(_req(1, "1", "img", 10.0, status="error"), [T1])
    assert failed.failed and failed.boxes is None and failed.truth_iou == 0.0 and failed.found == 0.0
    nothing = evaluate_request(_req(2, "1", "img", 10.0, answer="no table here"), [])
    assert nothing.no_box and nothing.truth_iou is None and nothing.found is None


def test_pairs_follow_image_and_repeat():
    a = [_req(0, "1", "x", 1), _req(2, "1", "y", 1), _req(4, "1", "x", 1), _req(6, "1", "z", 1)]
    b = [_req(1, "2", "x", 1), _req(3, "2", "y", 1), _req(5, "2", "x", 1)]
    pairs = make_pairs(a, b)
    assert [(p.key, p.a.seq, p.b.seq) for p in pairs] == [("x#0", 0, 1), ("y#0", 2, 3), ("x#1", 4, 5)]


# --------------------------------------------------------------------------- verdict wording


def _mc(d: Difference, label="end-to-end latency") -> MetricComparison:
    return MetricComparison("latency_ms", label, "ms", [], [], distribution([]), distribution([]), d)


def test_latency_sentence_significant_faster():
    d = Difference("latency_ms", "median", "ms", a=200.0, b=150.0, diff=-50.0, rel=-0.25, lo=-60.0, hi=-40.0,
                   n_a=30, n_b=30, paired=True)
    s = latency_sentence(_mc(d), A, B)
    assert s == ("Median end-to-end latency: fp8 (v2) 150 ms vs bf16 (v1) 200 ms, 50.0 ms (25.0%) faster; "
                 "significant: the 95% CI of the difference [-60.0 ms, -40.0 ms] excludes 0.")


def test_latency_sentence_not_significant_slower():
    d = Difference("latency_ms", "median", "ms", a=20.0, b=21.0, diff=1.0, rel=0.05, lo=-0.5, hi=2.5,
                   n_a=30, n_b=30, paired=True)
    s = latency_sentence(_mc(d), A, B)
    assert "1.0 ms (5.0%) slower" in s
    assert s.endswith("not significant: the 95% CI of the difference [-0.5 ms, 2.5 ms] includes 0.")


def test_latency_sentence_without_interval_says_unknown():
    d = Difference("latency_ms", "median", "ms", a=20.0, b=21.0, diff=1.0, rel=0.05, lo=None, hi=None,
                   n_a=1, n_b=1, paired=True, note="no interval: at least 2 pairs are needed")
    assert "significance unknown (no interval: at least 2 pairs are needed)" in latency_sentence(_mc(d), A, B)


def _acc(d_iou: Difference, d_found: Difference, known=True) -> AccuracyComparison:
    side = AccuracySide(10, 10, d_iou.a, 10, d_found.a, 10, 0, 0, 0.0)
    nob = Difference("no_box_share", "mean", "", 0.0, 0.0, 0.0, None, 0.0, 0.0, 10, 10, True)
    return AccuracyComparison(known, side, side, d_iou, d_found, nob)


def test_accuracy_sentences_significant_and_not():
    worse = Difference("mean_iou", "mean", "", 0.80, 0.70, -0.10, -0.125, -0.15, -0.05, 40, 40, True)
    found = Difference("found_share", "mean", "", 0.9, 0.85, -0.05, None, -0.12, 0.02, 40, 40, True)
    s = accuracy_sentence(_acc(worse, found), A, B)
    assert s.startswith("Accuracy: mean IoU with the ground truth 0.700 for fp8 (v2) vs 0.800 for bf16 (v1), "
                        "lower by 0.100; significant: the 95% CI of the difference [-0.150, -0.050] excludes 0.")
    assert "85.0% vs 90.0% (-5.0 pts; not significant: the 95% CI of the difference [-12.0 pts, +2.0 pts] " \
           "includes 0)" in s
    same = Difference("mean_iou", "mean", "", 0.0, 0.0, 0.0, None, 0.0, 0.0, 8, 8, True)
    assert "unchanged; not significant" in accuracy_sentence(_acc(same, found), A, B)
    assert accuracy_sentence(_acc(same, found, known=False), A, B) == \
        "Accuracy: unknown (no ground truth for these images)."


def _mem(weights, peak=None, kv=None, source="gpu-process") -> MemorySide:
    return MemorySide(source, None, peak, None, 0, weights, "gauge", None, None, kv, "n", None, "n")


def test_bytes_are_written_in_gb_or_smaller_units_for_small_models():
    assert format_bytes(6_430_000_000) == "6.43 GB"
    assert format_bytes(1_234_567) == "1.23 MB"
    assert format_bytes(2_500) == "2.5 kB"


def test_memory_sentence_gb_and_percent():
    m = MemoryComparison(_mem(16_580_000_000), _mem(10_150_000_000), [], 6_430_000_000,
                         6_430_000_000 / 16_580_000_000 * 100, "weights")
    assert memory_sentence(m, A, B) == ("Memory: fp8 (v2) saves 6.43 GB (38.8%) of weights "
                                        "(10.15 GB vs 16.58 GB for bf16 (v1)).")
    unknown = MemoryComparison(_mem(None), _mem(None), [], None, None, "unknown")
    assert memory_sentence(unknown, A, B).startswith("Memory: unknown.")


# --------------------------------------------------------------------------- the floor


def test_known_gpus_match_the_most_specific_entry():
    assert known_gpu("NVIDIA H100 80GB HBM3").measured_bytes_per_s == 3.0e12
    assert known_gpu("NVIDIA H100 80GB HBM3").datasheet_bytes_per_s == 3.35e12
    assert known_gpu("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert known_gpu("NVIDIA A100-SXM4-80GB").name == "A100 SXM 80GB"
    assert known_gpu("NVIDIA L40S").name == "L40S"
    assert known_gpu("NVIDIA L4").name == "L4"
    assert known_gpu("Some Future GPU") is None and known_gpu(None) is None


def test_decode_floor_by_hand():
    f = decode_floor([11.0, 11.2, 11.1], 16_600_000_000, 13_000_000_000, "NVIDIA H100 80GB HBM3", True)
    assert f.applicable is True
    assert f.bandwidth_bytes_per_s == 3.0e12 and "measured" in f.bandwidth_source
    assert f.floor_ms == pytest.approx(16.6e9 / 3.0e12 * 1e3)  # 5.533 ms
    assert f.measured_tpot_ms == pytest.approx(11.1)
    assert f.fraction == pytest.approx(5.5333 / 11.1, rel=1e-4)
    assert f.lower_floor_ms == pytest.approx(13e9 / 3e12 * 1e3)
    recorded = decode_floor([10.0], 16.6e9, None, "NVIDIA H100 80GB HBM3", True, measured_bandwidth=2.5e12)
    assert recorded.floor_ms == pytest.approx(6.64) and "manifest" in recorded.bandwidth_source


def test_decode_floor_not_applicable_on_cpu_and_unknown_without_gpu_or_weights():
    cpu = decode_floor([50.0], 1_000_000, None, None, False)
    assert cpu.applicable is False and cpu.reason.startswith("not applicable") and cpu.floor_ms is None
    unknown_gpu = decode_floor([5.0], 16e9, None, None, None)
    assert unknown_gpu.applicable is None and "GPU was not recorded" in unknown_gpu.reason
    odd_gpu = decode_floor([5.0], 16e9, None, "Mystery X1", True)
    assert "Mystery X1 is not in the table" in odd_gpu.reason and odd_gpu.fraction is None
    no_weights = decode_floor([5.0], None, None, "NVIDIA H200", True)
    assert no_weights.applicable is None and "weight bytes" in no_weights.reason


def test_run_gpu_reads_the_manifest():
    h100 = {"target": {"embedded": True}, "gpu": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}}
    assert run_gpu(h100, "1") == ("NVIDIA H100 80GB HBM3", True)
    assert run_gpu({"target": {"embedded": True}, "gpu": "none"}, "1") == (None, False)
    assert run_gpu({"quantization": {"1": {"device": "cpu"}}}, "1") == (None, False)
    # an external server: the benchmark host's GPUs say nothing about the server's
    assert run_gpu({"target": {"embedded": False}, "gpu": "none"}, "1") == (None, None)


# --------------------------------------------------------------------------- agreement


def _pa(key, status, iou):
    return PairAgreement(key, key, 0, 0, 1, [], [], None, iou, status, False)


def test_worst_pairs_come_first_and_agreeing_ones_are_left_out():
    ag = Agreement([_pa("a", "compared", 0.9), _pa("b", "both no box", None), _pa("c", "compared", 0.1),
                    _pa("d", "B failed", None), _pa("e", "compared", 1.0)], 0.667, 3, 0.667, 1, None)
    assert [p.key for p in ag.worst(10)] == ["c", "a", "d"]
    assert [p.key for p in ag.worst(1)] == ["c"]


# --------------------------------------------------------------------------- a stored run


WEIGHTS = {"1": (16_580_000_000, 13_000_000_000), "2": (10_150_000_000, 6_500_000_000)}


def _store_run(store: RunStore, manifest: dict | None = None) -> int:
    """A paired run: 4 images x 2 repeats; v2 is 10 ms faster on every pair; v1 finds T1 exactly,
    v2 gives half of it; image "none" has no table and both answer without a box; one v2 request
    fails. Memory: per-process GPU samples and the weight gauges."""
    rid = store.create_run({"versions": ["1", "2"], "model": "qwen", "image_set": {"kind": "uploaded"}},
                           manifest or {"target": {"embedded": True},
                                        "gpu": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}})
    seq = 0
    for v in ("1", "2"):
        store.add_request(rid, _req(seq, v, "t1", 999.0, 50.0, 10, answer=format_answer([T1]), warmup=True))
        seq += 1
    images = ["t1", "t2", "t3", "none"]
    for rep in range(2):
        for i, image in enumerate(images):
            base = 100.0 + 10 * i + rep
            ans1 = "" if image == "none" else format_answer([T1])
            ans2 = "" if image == "none" else format_answer([Box(0, 0, 10, 5)])
            store.add_request(rid, _req(seq, "1", image, base, 20.0, 11, answer=ans1))
            failed = rep == 1 and image == "t3"
            store.add_request(rid, _req(seq + 1, "2", image, base - 10, 15.0, 11, answer=ans2,
                                        status="error" if failed else "ok"))
            seq += 2
    rows = []
    for t in range(5):
        for v, mem in (("1", 17_000_000_000 + t * 10**8), ("2", 10_500_000_000 + t * 10**8)):
            rows.append(SampleRow(t_wall=1000.0 + t, t_mono=float(t), source="nvml", kind="gpu", memory_bytes=mem,
                                  gpu="0", model="qwen", version=v, pid=int(v)))
            model_w, linear_w = WEIGHTS[v]
            for part, value in (("model", model_w), ("decoder_linear", linear_w)):
                rows.append(SampleRow(t_wall=1000.0 + t, t_mono=float(t), source="triton",
                                      kind=f'qwen_engine_weight_bytes{{mode="x",part="{part}",precision="p"}}',
                                      memory_bytes=value, model="qwen", version=v))
        rows.append(SampleRow(t_wall=1000.0 + t, t_mono=float(t), source="nvml", kind="device",
                              memory_bytes=30_000_000_000, gpu="0"))
    store.add_samples(rid, rows)
    store.finish_run(rid, "completed")
    return rid


def _truth(run, ids):
    return {i: ([] if i == "none" else [T1]) for i in ids}


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path) as s:
        yield s


def test_comparison_of_a_stored_run(store):
    rid = _store_run(store)
    c = compare_run(store, rid, truth=_truth)
    assert c.paired and c.interleaved and (c.measured_a, c.measured_b) == (8, 8)
    lat = c.metric("latency_ms")
    assert lat.dist_a.count == 8 and lat.dist_b.count == 7  # one v2 request failed
    # pairs with both ok: 7; v2 is 10 ms faster on each, so the median difference is -10 exactly
    assert lat.difference.n_a == 7 and lat.difference.diff == pytest.approx(-10.0)
    assert (lat.difference.lo, lat.difference.hi) == (pytest.approx(-10.0), pytest.approx(-10.0))
    assert lat.difference.significant
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
    assert "6.43 GB (38.8%) of weights" in c.verdict.memory
    # the floor: H100 from the manifest, 3.0 TB/s measured
    assert c.floor_a.floor_ms == pytest.approx(16.58e9 / 3e12 * 1e3)
    assert c.floor_b.lower_floor_ms == pytest.approx(6.5e9 / 3e12 * 1e3)
    assert "faster; significant" in c.verdict.latency
    assert any("failed" in x for x in c.verdict.caveats)
    data = comparison_to_dict(c)
    assert data["verdict"]["lines"] == c.verdict.lines
    assert data["latency"][0]["difference"]["significant"] is True
    rows = summary_rows(c)
    assert {"latency", "memory", "accuracy", "floor"} <= {r["section"] for r in rows}


def test_vllm_server_kv_room_is_unknown_unless_recorded(store):
    manifest = {"target": {"embedded": False}, "gpu": "none", "model": {"config": {"backend": "vllm"}}}
    rid = _store_run(store, manifest)
    c = compare_run(store, rid, truth=_truth)
    assert c.memory.a.kv_room_bytes is None and c.memory.a.kv_note.startswith("unknown")
    assert c.floor_a.applicable is None  # an external server's GPU is unknown
    manifest["quantization"] = {"1": {"gpu_memory_utilization": 0.45, "non_kv_bytes": 2 * 10**9}}
    manifest["gpu"] = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 80 * 10**9}]}
    rid2 = _store_run(store, manifest)
    m = compare_run(store, rid2, truth=_truth).memory.a
    assert m.kv_room_bytes == int(0.45 * 80e9 - 16_580_000_000 - 2e9)


def test_two_runs_pair_by_image_and_unknown_sides_raise(store):
    r1, r2 = _store_run(store), _store_run(store)
    c = build_comparison(store, (r1, "1"), (r2, "2"), truth=_truth)
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
