"""The verdict's wording, checked sentence by sentence."""

from __future__ import annotations

from services.bench.stats import distribution
from services.compare.accuracy import AccuracyComparison, AccuracySide
from services.compare.differences import Difference
from services.compare.memory import MemoryComparison, MemorySide
from services.compare.speed import MetricComparison
from services.compare.verdict import accuracy_sentence, latency_sentence, memory_sentence
from services.core.units import format_bytes
from tests.compare.support import A, B


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
    barely = Difference("mean_iou", "mean", "", 0.5, 0.5, 0.0, 0.0, -0.01, 0.01, 8, 8, True)
    assert "unchanged; not significant" in accuracy_sentence(_acc(barely, found), A, B)
    same = Difference("mean_iou", "mean", "", 0.0, 0.0, 0.0, None, 0.0, 0.0, 8, 8, True)
    assert accuracy_sentence(_acc(same, found, known=False), A, B) == \
        "Accuracy: unknown (no ground truth for these images)."


def test_an_identical_result_is_said_so_not_tested():
    """Both versions gave the same answers: no "+0.0 pts; not significant: [+0.0, +0.0] includes 0"."""
    iou = Difference("mean_iou", "mean", "", 0.98, 0.98, 0.0, 0.0, 0.0, 0.0, 8, 8, True)
    found = Difference("found_share", "mean", "", 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 8, 8, True)
    s = accuracy_sentence(_acc(iou, found), A, B)
    assert s == ("Accuracy: mean IoU with the ground truth 0.980 for both versions: fp8 (v2) and bf16 (v1) scored "
                 "identically on every image. Tables found at IoU ≥ 0.5: 100.0% for both, on the same images.")
    assert "+0.0" not in s and "not significant" not in s


def _mem(weights, peak=None, kv=None, source="gpu-process") -> MemorySide:
    return MemorySide(source, None, peak, None, 0, weights, "gauge", None, None, kv, "n", None, "n")


def test_bytes_are_written_in_binary_units_gib_or_smaller_for_small_models():
    assert format_bytes(6_430_000_000) == "5.99 GiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"
    assert format_bytes(1_234_567) == "1.18 MiB"
    assert format_bytes(2_500) == "2.4 KiB"
    assert format_bytes(-512 * 2**20) == "-512.00 MiB"
    assert format_bytes(None) == "unknown"


def test_memory_sentence_gib_and_percent():
    m = MemoryComparison(_mem(16_580_000_000), _mem(10_150_000_000), [], 6_430_000_000,
                         6_430_000_000 / 16_580_000_000 * 100, "weights")
    assert memory_sentence(m, A, B) == ("Memory: fp8 (v2) saves 5.99 GiB (38.8%) of weights "
                                        "(9.45 GiB vs 15.44 GiB for bf16 (v1)). Split: fp8 (v2) weights 9.45 GiB / "
                                        "KV cache unknown / rest unknown; bf16 (v1) weights 15.44 GiB / KV cache "
                                        "unknown / rest unknown.")
    unknown = MemoryComparison(_mem(None), _mem(None), [], None, None, "unknown")
    assert memory_sentence(unknown, A, B).startswith("Memory: unknown.")
    assert "fp8 (v2) weights unknown / KV cache unknown / rest unknown" in memory_sentence(unknown, A, B)


def test_memory_sentence_gives_the_split_the_engine_stated():
    """vLLM states its KV cache (and on a GPU its weights): the verdict's memory line gives weights /
    KV cache / rest per version; on the CPU, where vLLM states no weight memory, the weights and the
    rest stay unknown and the saving is on the peak."""
    a = MemorySide("host-process", None, 3 * 2**30, None, 5, None, "unknown", None, None, 2**30,
                   "stated by the engine at load", None, "unknown: the engine stated no weight memory")
    b = MemorySide("host-process", None, 2 * 2**30, None, 5, None, "unknown", None, None, 2**30,
                   "stated by the engine at load", None, "unknown: the engine stated no weight memory")
    line = memory_sentence(MemoryComparison(a, b, [], 2**30, 100 / 3, "peak of the serving processes"), A, B)
    assert line.endswith("Split: fp8 (v2) weights unknown / KV cache 1.00 GiB / rest unknown; bf16 (v1) weights "
                         "unknown / KV cache 1.00 GiB / rest unknown.")
