"""Paired comparison of two model versions (bf16 and fp8) from stored benchmark runs.

No streamlit here: ``pages/3_Compare.py`` and ``services.compare.report`` are views over it.

What it answers: what does version B (fp8, v2) buy over version A (bf16, v1), and what does it cost?
Every number comes from the run store (:class:`services.bench.store.RunStore`): the requests, the memory
samples (and the ``qwen_engine_weight_bytes`` gauges the sampler stored with them), the run's
config and manifest. Nothing is assumed: what the data does not say is reported as unknown.

Pairing
    Within one run that asked both versions (the benchmark interleaves them: v1 img0, v2 img0,
    v1 img1, ...), the k-th measured request of an image to version A is paired with the k-th
    measured request of the same image to version B. Two separate runs are paired the same way
    when they share image ids (same images, but not interleaved in time: drift between the runs
    is not cancelled); without image ids the comparison is unpaired.

Differences and intervals
    Every difference is B minus A. Its 95 % confidence interval is a percentile bootstrap
    (:func:`services.bench.stats.bootstrap_ci`, 2000 resamples, seed 0): of the pairs when the
    comparison is paired, of each side independently otherwise. A difference is *significant*
    when its interval excludes 0. Latency, TTFT and TPOT compare medians; accuracy compares means.

Accuracy (where the images have ground truth)
    Per request: the mean IoU of the one-to-one matching of its boxes with the true boxes
    (:func:`services.core.boxes.match_boxes`; a box left unmatched on either side counts 0), *found* =
    the share of the image's tables matched at IoU >= 0.5, *no box* = an answer without a box.
    A failed request counts as no box (IoU 0, nothing found): failures are never dropped. An image
    without a table answered without a box has no IoU (nothing to compare; the answer is right).

Agreement
    Per pair: the mean IoU of the matching of A's boxes with B's boxes; both without a box is
    agreement without an IoU. The gallery shows the pairs that agree least.

Memory
    Per version: baseline, peak and delta of the memory of the processes serving it (GPU memory
    from NVML, else host resident memory on a CPU-only server), and the split into weights (the
    server's ``qwen_engine_weight_bytes{part="model"}`` gauge, else the run manifest), KV-cache room
    and the rest. KV room is known only where the server pre-allocates it and the manifest says how
    much (vLLM); otherwise it is reported as unknown or as not reserved, never invented.

Decode against the floor
    The memory-bandwidth floor of one decode step is the weight bytes read per step divided by
    the GPU's memory bandwidth (:data:`GPU_BANDWIDTHS`, or a bandwidth measured and recorded in the
    manifest). The fraction floor / measured TPOT says how close the serving stack gets to the
    hardware. On a CPU-only run the floor does not apply.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from services.core import settings
from services.core.versions import VERSION_LABELS, version_label
from services.bench.stats import (
    Distribution,
    MemorySeriesSummary,
    RequestRecord,
    bootstrap_ci,
    distribution,
    measured,
    measured_window_s,
    memory_summary,
    output_token_throughput,
    request_throughput,
    tpot_ms,
)
from services.core.boxes import Box, match_boxes, parse_answer
from services.bench.store import RunInfo, RunStore

CONFIDENCE = 0.95
N_BOOT = 2000
BOOT_SEED = 0
FOUND_IOU = 0.5
MIN_VALUES_FOR_CI = 2
WEIGHT_METRIC = "qwen_engine_weight_bytes"
GB = 1e9



# =========================================================================== differences


@dataclass
class Difference:
    """``statistic(B) - statistic(A)`` of one metric with its bootstrap confidence interval.

    ``a``/``b``: the statistic of each side over the values the difference used (the pairs where
    both sides have a value, when paired). ``rel``: ``diff / a`` (None when ``a`` is 0 or unknown).
    ``lo``/``hi``: the interval (None when there are too few values: ``note`` says why).
    """

    metric: str
    statistic: str
    unit: str
    a: float | None
    b: float | None
    diff: float | None
    rel: float | None
    lo: float | None
    hi: float | None
    n_a: int
    n_b: int
    paired: bool
    confidence: float = CONFIDENCE
    n_boot: int = N_BOOT
    note: str | None = None

    @property
    def significant(self) -> bool | None:
        """Whether the interval excludes 0 (None without an interval)."""
        if self.lo is None or self.hi is None:
            return None
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["significant"] = self.significant
        return d


def _stat(values: np.ndarray, statistic: str) -> float:
    return float(np.median(values) if statistic == "median" else np.mean(values))


def difference(
    metric: str,
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    statistic: str = "median",
    unit: str = "",
    paired: bool = False,
    n_boot: int = N_BOOT,
    seed: int | None = BOOT_SEED,
    confidence: float = CONFIDENCE,
) -> Difference:
    """The difference ``statistic(b) - statistic(a)`` and its bootstrap interval.

    ``paired=True``: ``a`` and ``b`` are aligned (``a[i]`` and ``b[i]`` belong to the same image
    and repeat); only positions where both are known are used, and pairs are resampled together.
    Otherwise None values are dropped from each side and the sides are resampled independently.
    With fewer than :data:`MIN_VALUES_FOR_CI` values (pairs) there is no interval.
    """
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired values must be aligned ({len(a)} != {len(b)})")
        both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
                and not (math.isnan(x) or math.isnan(y))]
        xa = np.asarray([x for x, _ in both], dtype=float)
        xb = np.asarray([y for _, y in both], dtype=float)
    else:
        xa = np.asarray([x for x in a if x is not None and not math.isnan(x)], dtype=float)
        xb = np.asarray([y for y in b if y is not None and not math.isnan(y)], dtype=float)
    base = dict(metric=metric, statistic=statistic, unit=unit, n_a=int(xa.size), n_b=int(xb.size),
                paired=paired, confidence=confidence, n_boot=n_boot)
    if xa.size == 0 or xb.size == 0:
        what = "pairs with a value on both sides" if paired else "values on both sides"
        return Difference(a=_stat(xa, statistic) if xa.size else None,
                          b=_stat(xb, statistic) if xb.size else None, diff=None, rel=None,
                          lo=None, hi=None, note=f"no {what}", **base)
    sa, sb = _stat(xa, statistic), _stat(xb, statistic)
    diff = sb - sa
    rel = diff / sa if sa != 0 else None
    if min(xa.size, xb.size) < MIN_VALUES_FOR_CI:
        return Difference(a=sa, b=sb, diff=diff, rel=rel, lo=None, hi=None,
                          note=f"no interval: at least {MIN_VALUES_FOR_CI} "
                               f"{'pairs' if paired else 'values per side'} are needed", **base)
    observed, lo, hi = bootstrap_ci(xa, xb, statistic, n=n_boot, seed=seed, paired=paired,
                                    confidence=confidence)
    note = None
    if min(xa.size, xb.size) < 10:
        note = f"only {min(xa.size, xb.size)} {'pairs' if paired else 'values'}: the interval is rough"
    return Difference(a=sa, b=sb, diff=observed, rel=rel, lo=lo, hi=hi, note=note, **base)


def ratio_difference(
    metric: str,
    num_a: Sequence[float], den_a: Sequence[float],
    num_b: Sequence[float], den_b: Sequence[float],
    *,
    unit: str = "",
    paired: bool = False,
    n_boot: int = N_BOOT,
    seed: int | None = BOOT_SEED,
    confidence: float = CONFIDENCE,
) -> Difference:
    """``sum(num_b)/sum(den_b) - sum(num_a)/sum(den_a)`` (e.g. tokens per second of request time)
    with a percentile-bootstrap interval; ``paired``: index ``i`` of A and B resampled together."""
    na, da = np.asarray(num_a, float), np.asarray(den_a, float)
    nb, db = np.asarray(num_b, float), np.asarray(den_b, float)
    if na.shape != da.shape or nb.shape != db.shape:
        raise ValueError("numerators and denominators must be aligned")
    if paired and na.size != nb.size:
        raise ValueError("paired values must be aligned")
    base = dict(metric=metric, statistic="ratio of sums", unit=unit, n_a=int(na.size),
                n_b=int(nb.size), paired=paired, confidence=confidence, n_boot=n_boot)
    ra = float(na.sum() / da.sum()) if na.size and da.sum() > 0 else None
    rb = float(nb.sum() / db.sum()) if nb.size and db.sum() > 0 else None
    if ra is None or rb is None:
        return Difference(a=ra, b=rb, diff=None, rel=None, lo=None, hi=None,
                          note="no values on both sides", **base)
    diff = rb - ra
    rel = diff / ra if ra else None
    if min(na.size, nb.size) < MIN_VALUES_FOR_CI:
        return Difference(a=ra, b=rb, diff=diff, rel=rel, lo=None, hi=None,
                          note=f"no interval: at least {MIN_VALUES_FOR_CI} values are needed", **base)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, na.size, size=(n_boot, na.size))
    ib = ia if paired else rng.integers(0, nb.size, size=(n_boot, nb.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        diffs = nb[ib].sum(axis=1) / db[ib].sum(axis=1) - na[ia].sum(axis=1) / da[ia].sum(axis=1)
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = (float(v) for v in np.percentile(diffs, [alpha, 100.0 - alpha]))
    return Difference(a=ra, b=rb, diff=diff, rel=rel, lo=lo, hi=hi, **base)


# =========================================================================== boxes of a request


def _box_from(value: Any) -> Box | None:
    if isinstance(value, Box):
        return value
    if isinstance(value, Mapping):
        if all(k in value for k in ("x1", "y1", "x2", "y2")):
            return Box(float(value["x1"]), float(value["y1"]), float(value["x2"]), float(value["y2"]))
        if "grid" in value:
            return _box_from(value["grid"])
        return None
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        x1, y1, x2, y2 = (float(v) for v in value)
        return Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    return None


def boxes_of_value(value: Any) -> list[Box] | None:
    """Grid boxes from a stored ``box`` value: a box (``{"x1",..}``, ``{"grid": ..}``, ``[x1, y1,
    x2, y2]``), a list of them, ``{"boxes": [...]}``, or JSON text of any of these. None when the
    value holds no recognisable box shape (an empty list is a known "no box")."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    one = _box_from(value)
    if one is not None:
        return [one]
    if isinstance(value, Mapping) and "boxes" in value:
        return boxes_of_value(value["boxes"])
    if isinstance(value, (list, tuple)):
        out = [_box_from(v) for v in value]
        if all(b is not None for b in out):
            return out  # type: ignore[return-value]
    return None


def request_boxes(r: RequestRecord) -> list[Box] | None:
    """Every grid box a successful request answered with (None for a failed request).

    The answer text parsed by :func:`services.core.boxes.parse_answer` (grid boxes do not depend on the
    image size); the benchmark's ``box`` column keeps only the best-matching box, so it is used only
    when the answer text was not stored.
    """
    if not r.ok:
        return None
    if r.answer is not None:
        return parse_answer(r.answer, 1000, 1000).grid_boxes
    return boxes_of_value(r.box) or []


def mean_matched_iou(a: Sequence[Box], b: Sequence[Box]) -> float | None:
    """Mean IoU over the one-to-one matching of ``a`` and ``b`` (unmatched boxes count 0);
    None when both are empty."""
    pairs = match_boxes(a, b)
    return sum(v for _, _, v in pairs) / len(pairs) if pairs else None


def found_share(pred: Sequence[Box], truth: Sequence[Box], threshold: float = FOUND_IOU) -> float | None:
    """Share of the true boxes matched one to one by a predicted box at IoU >= ``threshold``;
    None when there is no true box."""
    if not truth:
        return None
    pairs = match_boxes(pred, truth)
    hits = sum(1 for i, j, v in pairs if i is not None and j is not None and v >= threshold)
    return hits / len(truth)


# =========================================================================== sides and pairs


@dataclass
class Side:
    """One side of a comparison: version ``version`` of stored run ``run_id``."""

    run_id: int
    version: str
    label: str

    @property
    def name(self) -> str:
        return VERSION_LABELS.get(self.version, f"v{self.version}")


@dataclass
class Pair:
    """The same image asked of both sides (``occurrence``: its k-th request per side)."""

    key: str
    image_id: str | None
    occurrence: int
    a: RequestRecord
    b: RequestRecord


def pair_key(image_id: str | None, occurrence: int, index: int) -> str:
    return f"{image_id}#{occurrence}" if image_id is not None else f"#{index}"


def make_pairs(a: Sequence[RequestRecord], b: Sequence[RequestRecord]) -> list[Pair]:
    """Pair measured requests of two sides by (image id, k-th occurrence), in A's order.

    Requests without an image id are paired by their position among those without one.
    Requests present on one side only are left out (the caller counts them).
    """
    def keyed(rs: Sequence[RequestRecord]) -> dict[tuple[str | None, int], RequestRecord]:
        seen: dict[str | None, int] = defaultdict(int)
        out: dict[tuple[str | None, int], RequestRecord] = {}
        for r in rs:
            k = seen[r.image_id]
            seen[r.image_id] += 1
            out[(r.image_id, k)] = r
        return out

    kb = keyed(b)
    pairs = []
    for (image_id, k), ra in keyed(a).items():
        rb = kb.get((image_id, k))
        if rb is not None:
            pairs.append(Pair(pair_key(image_id, k, k), image_id, k, ra, rb))
    return pairs


# =========================================================================== latency and throughput


METRICS: dict[str, tuple[str, Callable[[RequestRecord], float | None]]] = {
    "latency_ms": ("end-to-end latency", lambda r: r.effective_latency_ms),
    "ttft_ms": ("time to first token (TTFT)", lambda r: r.effective_ttft_ms),
    "tpot_ms": ("time per output token (TPOT)", tpot_ms),
}


def metric_value(r: RequestRecord, metric: str) -> float | None:
    """``metric`` (a key of :data:`METRICS`) of one successful measured request, else None."""
    if r.warmup or not r.ok:
        return None
    return METRICS[metric][1](r)


@dataclass
class MetricComparison:
    """One latency metric on both sides: all successful measured values, distributions, and the
    difference of medians (paired when the comparison is)."""

    metric: str
    label: str
    unit: str
    values_a: list[float]
    values_b: list[float]
    dist_a: Distribution
    dist_b: Distribution
    difference: Difference


def compare_metric(metric: str, ra: Sequence[RequestRecord], rb: Sequence[RequestRecord],
                   pairs: Sequence[Pair] | None, *, n_boot: int = N_BOOT,
                   seed: int | None = BOOT_SEED) -> MetricComparison:
    """Compare one metric of :data:`METRICS` (``pairs`` None: unpaired)."""
    va = [v for r in ra if (v := metric_value(r, metric)) is not None]
    vb = [v for r in rb if (v := metric_value(r, metric)) is not None]
    if pairs is not None:
        d = difference(metric, [metric_value(p.a, metric) for p in pairs],
                       [metric_value(p.b, metric) for p in pairs], statistic="median", unit="ms",
                       paired=True, n_boot=n_boot, seed=seed)
    else:
        d = difference(metric, va, vb, statistic="median", unit="ms", paired=False,
                       n_boot=n_boot, seed=seed)
    return MetricComparison(metric, METRICS[metric][0], "ms", va, vb, distribution(va),
                            distribution(vb), d)


@dataclass
class ThroughputSide:
    """Throughput of one side.

    ``requests_per_s`` / ``output_tokens_per_s``: over the side's measured window (first send to
    last receive, warm-up excluded), as the benchmark defines them. ``stream_tokens_per_s``:
    output tokens per second of request time (sum of tokens / sum of latencies of the successful
    requests): the speed one stream sees, not diluted when the versions were interleaved.
    """

    requests_per_s: float | None
    output_tokens_per_s: float | None
    window_s: float | None
    stream_tokens_per_s: float | None
    output_tokens: int
    successful: int


@dataclass
class ThroughputComparison:
    a: ThroughputSide
    b: ThroughputSide
    requests_per_s: Difference  # no interval: one window per side
    stream_tokens_per_s: Difference
    windows_overlap: bool
    notes: list[str] = field(default_factory=list)


def throughput_side(rs: Sequence[RequestRecord]) -> ThroughputSide:
    ok = [r for r in rs if not r.warmup and r.ok and r.effective_latency_ms]
    tokens = sum(r.output_tokens or 0 for r in ok)
    busy_s = sum(r.effective_latency_ms for r in ok) / 1e3  # type: ignore[misc]
    return ThroughputSide(
        requests_per_s=request_throughput(rs), output_tokens_per_s=output_token_throughput(rs),
        window_s=measured_window_s(rs),
        stream_tokens_per_s=tokens / busy_s if busy_s > 0 else None,
        output_tokens=tokens, successful=len(ok),
    )


def _window(rs: Sequence[RequestRecord]) -> tuple[int, int] | None:
    stamps = [(r.send_ns, r.recv_ns) for r in measured(rs)
              if r.send_ns is not None and r.recv_ns is not None]
    if not stamps:
        return None
    return min(s for s, _ in stamps), max(e for _, e in stamps)  # type: ignore[type-var]


def compare_throughput(ra: Sequence[RequestRecord], rb: Sequence[RequestRecord],
                       pairs: Sequence[Pair] | None, *, n_boot: int = N_BOOT,
                       seed: int | None = BOOT_SEED) -> ThroughputComparison:
    """Window throughput per side and single-stream token rate with a bootstrap interval."""
    a, b = throughput_side(ra), throughput_side(rb)
    reqs = Difference("requests_per_s", "over the measured window", "req/s", a.requests_per_s,
                      b.requests_per_s,
                      None if a.requests_per_s is None or b.requests_per_s is None
                      else b.requests_per_s - a.requests_per_s,
                      None if not a.requests_per_s or b.requests_per_s is None
                      else (b.requests_per_s - a.requests_per_s) / a.requests_per_s,
                      None, None, a.successful, b.successful, pairs is not None,
                      note="no interval: one measured window per version")

    def usable(r: RequestRecord) -> bool:
        return not r.warmup and r.ok and bool(r.effective_latency_ms) and r.output_tokens is not None

    if pairs is not None:
        both = [p for p in pairs if usable(p.a) and usable(p.b)]
        sel_a, sel_b = [p.a for p in both], [p.b for p in both]
    else:
        sel_a, sel_b = [r for r in ra if usable(r)], [r for r in rb if usable(r)]
    stream = ratio_difference(
        "stream_tokens_per_s",
        [float(r.output_tokens or 0) for r in sel_a], [r.effective_latency_ms / 1e3 for r in sel_a],  # type: ignore[operator]
        [float(r.output_tokens or 0) for r in sel_b], [r.effective_latency_ms / 1e3 for r in sel_b],  # type: ignore[operator]
        unit="tok/s", paired=pairs is not None, n_boot=n_boot, seed=seed)
    wa, wb = _window(ra), _window(rb)
    overlap = bool(wa and wb and min(wa[1], wb[1]) > max(wa[0], wb[0]))
    notes = []
    if overlap:
        notes.append("The versions were measured in one interleaved window: each version's "
                     "requests per second over the window counts the other version's time too. "
                     "Compare the single-stream rates (tokens per second of request time).")
    return ThroughputComparison(a, b, reqs, stream, overlap, notes)


# =========================================================================== accuracy and agreement


@dataclass
class RequestEval:
    """One measured request judged against the ground truth (when known)."""

    boxes: list[Box] | None  # None: the request failed
    truth: list[Box] | None  # None: unknown
    truth_iou: float | None
    found: float | None
    no_box: bool  # answered, but without a box
    failed: bool


def evaluate_request(r: RequestRecord, truth: Sequence[Box] | None) -> RequestEval:
    """Judge one request (see the module docstring for the rules)."""
    boxes = request_boxes(r)
    failed = boxes is None
    pred = boxes or []
    t = None if truth is None else list(truth)
    return RequestEval(
        boxes=boxes, truth=t,
        truth_iou=None if t is None else mean_matched_iou(pred, t),
        found=None if t is None else found_share(pred, t),
        no_box=not failed and not pred, failed=failed,
    )


@dataclass
class AccuracySide:
    """Accuracy of one side over its measured requests."""

    requests: int  # measured requests
    with_truth: int  # of which the image's ground truth is known
    mean_iou: float | None  # over requests with a truth IoU
    iou_count: int
    found_share: float | None  # mean found share over requests whose image has tables
    found_count: int
    no_box: int  # answered without a box (any image)
    failed: int  # failed requests
    no_box_share: float | None  # (no box + failed) / requests


@dataclass
class AccuracyComparison:
    known: bool  # some images have ground truth
    a: AccuracySide
    b: AccuracySide
    mean_iou: Difference
    found: Difference
    no_box: Difference
    notes: list[str] = field(default_factory=list)


def accuracy_side(evals: Sequence[RequestEval]) -> AccuracySide:
    ious = [e.truth_iou for e in evals if e.truth_iou is not None]
    found = [e.found for e in evals if e.found is not None]
    no_box = sum(1 for e in evals if e.no_box)
    failed = sum(1 for e in evals if e.failed)
    return AccuracySide(
        requests=len(evals), with_truth=sum(1 for e in evals if e.truth is not None),
        mean_iou=float(np.mean(ious)) if ious else None, iou_count=len(ious),
        found_share=float(np.mean(found)) if found else None, found_count=len(found),
        no_box=no_box, failed=failed,
        no_box_share=(no_box + failed) / len(evals) if evals else None,
    )


def _no_box_value(e: RequestEval) -> float:
    return 1.0 if (e.no_box or e.failed) else 0.0


def compare_accuracy(ea: Sequence[RequestEval], eb: Sequence[RequestEval],
                     pair_evals: Sequence[tuple[RequestEval, RequestEval]] | None, *,
                     n_boot: int = N_BOOT, seed: int | None = BOOT_SEED) -> AccuracyComparison:
    """Mean IoU, found share and no-box share per side, and their differences (means)."""
    a, b = accuracy_side(ea), accuracy_side(eb)
    known = a.with_truth > 0 or b.with_truth > 0
    kw = dict(statistic="mean", n_boot=n_boot, seed=seed)
    if pair_evals is not None:
        pa, pb = [p for p, _ in pair_evals], [q for _, q in pair_evals]
        iou = difference("mean_iou", [e.truth_iou for e in pa], [e.truth_iou for e in pb],
                         paired=True, **kw)  # type: ignore[arg-type]
        fnd = difference("found_share", [e.found for e in pa], [e.found for e in pb],
                         paired=True, **kw)  # type: ignore[arg-type]
        nob = difference("no_box_share", [_no_box_value(e) for e in pa],
                         [_no_box_value(e) for e in pb], paired=True, **kw)  # type: ignore[arg-type]
    else:
        iou = difference("mean_iou", [e.truth_iou for e in ea], [e.truth_iou for e in eb], **kw)  # type: ignore[arg-type]
        fnd = difference("found_share", [e.found for e in ea], [e.found for e in eb], **kw)  # type: ignore[arg-type]
        nob = difference("no_box_share", [_no_box_value(e) for e in ea],
                         [_no_box_value(e) for e in eb], **kw)  # type: ignore[arg-type]
    notes = []
    if not known:
        notes.append("No ground truth is known for these images: accuracy cannot be measured "
                     "(agreement between the versions still can).")
    if a.failed or b.failed:
        notes.append("Failed requests count as answers without a box (IoU 0, nothing found).")
    return AccuracyComparison(known, a, b, iou, fnd, nob, notes)


@dataclass
class PairAgreement:
    """How the two sides' answers for one image agree."""

    key: str
    image_id: str | None
    occurrence: int
    seq_a: int
    seq_b: int
    boxes_a: list[Box] | None  # None: that request failed
    boxes_b: list[Box] | None
    truth: list[Box] | None
    iou: float | None  # None when either failed or both gave no box
    status: str  # "compared", "both no box", "A failed", "B failed", "both failed"
    same_answer: bool
    truth_iou_a: float | None = None
    truth_iou_b: float | None = None


@dataclass
class Agreement:
    pairs: list[PairAgreement]
    mean_iou: float | None  # over compared pairs
    compared: int
    at_05: float | None  # share of compared pairs with IoU >= 0.5
    both_no_box: int
    same_answer_share: float | None  # over pairs where both answered

    def worst(self, k: int = 6) -> list[PairAgreement]:
        """Up to ``k`` pairs that agree least, one per image: compared pairs by IoU ascending,
        then pairs where one side failed; pairs that agree (both no box, IoU 1) come last."""
        def rank(p: PairAgreement) -> tuple:
            if p.status == "compared":
                return (0, p.iou, p.key)
            if p.status in ("A failed", "B failed"):
                return (1, 0.0, p.key)
            return (2, 1.0, p.key)

        out, seen = [], set()
        for p in sorted(self.pairs, key=rank):
            if p.status in ("both no box", "both failed") or (p.status == "compared" and p.iou == 1.0):
                continue
            ident = p.image_id if p.image_id is not None else p.key
            if ident in seen:
                continue
            seen.add(ident)
            out.append(p)
            if len(out) >= k:
                break
        return out


def pair_agreement(p: Pair, ea: RequestEval, eb: RequestEval) -> PairAgreement:
    if ea.failed and eb.failed:
        status, value = "both failed", None
    elif ea.failed or eb.failed:
        status, value = ("A failed" if ea.failed else "B failed"), None
    else:
        value = mean_matched_iou(ea.boxes or [], eb.boxes or [])
        status = "both no box" if value is None else "compared"
    same = (not ea.failed and not eb.failed and (p.a.answer or "") == (p.b.answer or ""))
    return PairAgreement(p.key, p.image_id, p.occurrence, p.a.seq, p.b.seq, ea.boxes, eb.boxes,
                         ea.truth, value, status, same, ea.truth_iou, eb.truth_iou)


def agreement(pairs: Sequence[PairAgreement]) -> Agreement:
    compared = [p.iou for p in pairs if p.status == "compared" and p.iou is not None]
    answered = [p for p in pairs if p.boxes_a is not None and p.boxes_b is not None]
    return Agreement(
        pairs=list(pairs),
        mean_iou=float(np.mean(compared)) if compared else None, compared=len(compared),
        at_05=sum(1 for v in compared if v >= FOUND_IOU) / len(compared) if compared else None,
        both_no_box=sum(1 for p in pairs if p.status == "both no box"),
        same_answer_share=sum(1 for p in answered if p.same_answer) / len(answered) if answered else None,
    )


# =========================================================================== memory


@dataclass
class MemorySide:
    """The memory of one side (bytes).

    ``source``: what ``baseline``/``peak``/``delta`` measure: ``"gpu-process"`` (NVML, the GPU
    memory of the processes serving this version), ``"host-process"`` (their resident host memory:
    a CPU-only server) or ``"unknown"``.
    Split of the peak: ``weights_bytes`` (``weights_source`` says from where), ``kv_room_bytes``
    (KV-cache room; None: unknown or not reserved, ``kv_note`` says which) and ``rest_bytes``.
    """

    source: str
    baseline_bytes: int | None
    peak_bytes: int | None
    delta_bytes: int | None
    samples: int
    weights_bytes: int | None
    weights_source: str
    decoder_linear_bytes: int | None
    decoder_linear_bf16_bytes: int | None
    kv_room_bytes: int | None
    kv_note: str
    rest_bytes: int | None
    rest_note: str
    notes: list[str] = field(default_factory=list)


@dataclass
class MemoryComparison:
    a: MemorySide
    b: MemorySide
    device: list[MemorySeriesSummary]  # whole-GPU totals (not specific to a version)
    saved_bytes: float | None  # A - B on the basis below
    saved_pct: float | None
    basis: str  # "weights", "peak of the serving processes" or "unknown"
    notes: list[str] = field(default_factory=list)


def _find(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, Mapping) or p not in d:
            return None
        d = d[p]
    return d


def _version_entry(manifest: Mapping[str, Any], version: str) -> Mapping[str, Any]:
    """The manifest's record of what one version serves: ``manifest["quantization"][v]`` as
    ``services.bench.runner.served_quantization`` writes it (the ``qwen_engine_*`` gauges:
    ``precision``, ``mode``, ``weight_bytes`` by part; or the embedded engine's report:
    ``model_weight_bytes_after``, ``device``, ...), else empty."""
    entry = _find(manifest, "quantization", str(version))
    return entry if isinstance(entry, Mapping) else {}


def _first_number(*values: Any) -> float | None:
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def gauge_weight_bytes(samples: pd.DataFrame, version: str, part: str = "model",
                       model: str | None = None) -> int | None:
    """The last value of the server's ``qwen_engine_weight_bytes{part=...}`` gauge of a version
    stored among the run's samples, or None."""
    if samples.empty:
        return None
    df = samples[(samples["version"].astype(str) == str(version))
                 & samples["kind"].astype(str).str.startswith(WEIGHT_METRIC + "{")
                 & samples["kind"].astype(str).str.contains(f'part="{part}"', regex=False)]
    if model is not None:
        df = df[df["model"].isna() | (df["model"].astype(str) == model)]
    df = df.dropna(subset=["memory_bytes"])
    if df.empty:
        return None
    return int(df.sort_values("t_mono")["memory_bytes"].iloc[-1])


def manifest_weights(manifest: Mapping[str, Any], version: str) -> dict[str, float | None]:
    """Weight bytes of a version as the run manifest records them: ``model``, ``decoder_linear``,
    ``decoder_linear_bf16`` (None where absent).

    Read from the version's entry (:func:`_version_entry`): ``weight_bytes`` (a mapping by part, as
    the gauges give it), else the engine report's ``model_weight_bytes_after``,
    ``decoder_linear_bytes_after`` and ``decoder_linear_bytes_before`` (``services.serving.engine``).
    """
    e = _version_entry(manifest, version)
    reports = [x for x in (e, e.get("engine_report")) if isinstance(x, Mapping)]

    def report(key: str) -> float | None:
        return _first_number(*(x.get(key) for x in reports))

    w = e.get("weight_bytes")
    by_part = w if isinstance(w, Mapping) else {"model": w}
    return {
        "model": _first_number(by_part.get("model"), report("model_weight_bytes_after")),
        "decoder_linear": _first_number(by_part.get("decoder_linear"), report("decoder_linear_bytes_after")),
        "decoder_linear_bf16": _first_number(by_part.get("decoder_linear_bf16"),
                                             report("decoder_linear_bytes_before")),
    }


def _version_series(summaries: Sequence[MemorySeriesSummary], kind: str, version: str,
                    model: str) -> MemorySeriesSummary | None:
    for s in summaries:
        if s.kind == kind and str(s.version) == str(version) and (s.model in (None, model)):
            return s
    return None


def memory_side(samples: pd.DataFrame, manifest: Mapping[str, Any], version: str, *,
                model: str = settings.MODEL_NAME, first_request_t: float | None = None,
                t0: float | None = None, t1: float | None = None) -> MemorySide:
    """Baseline/peak/delta of the version's serving processes and the weights / KV / rest split."""
    summaries = memory_summary(samples, t0=t0, t1=t1, first_request_t=first_request_t) \
        if not samples.empty else []
    series = _version_series(summaries, "gpu", version, model)
    source = "gpu-process"
    if series is None:
        series = _version_series(summaries, "host", version, model)
        source = "host-process"
    if series is None:
        source = "unknown"
    notes: list[str] = []
    gauge = {part: gauge_weight_bytes(samples, version, part, model)
             for part in ("model", "decoder_linear", "decoder_linear_bf16")}
    man = manifest_weights(manifest, version)
    if gauge["model"] is not None:
        weights, wsrc = gauge["model"], f'server gauge {WEIGHT_METRIC}{{part="model"}}'
    elif man["model"] is not None:
        weights, wsrc = int(man["model"]), "run manifest"
    else:
        weights, wsrc = None, "unknown"
    dl = gauge["decoder_linear"] if gauge["decoder_linear"] is not None else man["decoder_linear"]
    dlb = gauge["decoder_linear_bf16"] if gauge["decoder_linear_bf16"] is not None else man["decoder_linear_bf16"]

    peak = series.peak_bytes if series else None
    entry = _version_entry(manifest, version)
    backend = server_backend(manifest)
    # Where a server reports them (vLLM logs its KV-cache size; a manifest may carry it):
    kv_direct = _first_number(entry.get("kv_cache_bytes"))
    util = _first_number(entry.get("gpu_memory_utilization"))
    gpu_total = _first_number(*(g.get("memory_total_bytes") for g in _gpus(manifest)))
    rest_known = _first_number(entry.get("non_kv_bytes"))
    kv: float | None = None
    rest: float | None = None
    if kv_direct is not None:
        kv, kv_note = kv_direct, "reported by the server (recorded in the run manifest)"
        if weights is not None and peak is not None and source == "gpu-process":
            rest = peak - weights - kv
            rest_note = "peak minus weights minus KV room"
        else:
            rest_note = "unknown"
    elif backend == "vllm" or util is not None:
        if util is not None and gpu_total is not None and weights is not None and rest_known is not None:
            kv = util * gpu_total - weights - rest_known
            rest = rest_known
            kv_note = (f"the version's share ({util:g} x {gpu_total / GB:.1f} GB) minus weights minus "
                       "the rest (recorded in the manifest)")
            rest_note = "recorded in the run manifest"
        else:
            missing = [n for n, v in (("gpu_memory_utilization", util), ("GPU total", gpu_total),
                                      ("weights", weights), ("non-KV rest", rest_known)) if v is None]
            kv_note = f"unknown: the server pre-allocates KV cache, but {', '.join(missing)} not recorded"
            rest_note = "unknown"
    else:
        kv_note = ("not reserved: this engine allocates KV cache per request (no pre-allocated "
                   "room); what it uses is inside the rest") if weights is not None else "unknown"
        if weights is not None and peak is not None and source != "unknown":
            rest = peak - weights
            rest_note = ("peak minus weights: activations, KV cache in use, CUDA context"
                         if source == "gpu-process" else
                         "peak minus weights: interpreter, libraries, activations, KV cache in use")
        else:
            rest_note = "unknown"
    if source == "unknown":
        notes.append("No memory samples of this version's serving processes were recorded.")
    if weights is not None and peak is not None and weights > peak and source == "host-process":
        notes.append("The weight bytes exceed the resident memory: part of the weights is not resident "
                     "(memory-mapped and not yet touched, or shared).")
    return MemorySide(
        source=source,
        baseline_bytes=series.baseline_bytes if series else None,
        peak_bytes=peak, delta_bytes=series.delta_bytes if series else None,
        samples=series.samples if series else 0,
        weights_bytes=None if weights is None else int(weights), weights_source=wsrc,
        decoder_linear_bytes=None if dl is None else int(dl),
        decoder_linear_bf16_bytes=None if dlb is None else int(dlb),
        kv_room_bytes=None if kv is None else int(kv), kv_note=kv_note,
        rest_bytes=None if rest is None else int(rest), rest_note=rest_note, notes=notes,
    )


def _first_str(*values: Any) -> str | None:
    for v in values:
        if isinstance(v, str) and v:
            return v
    return None


def _gpus(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The GPUs the manifest lists (``manifest["gpu"]["gpus"]``, NVML on the benchmark's host)."""
    g = _find(manifest, "gpu", "gpus")
    return [x for x in g if isinstance(x, Mapping)] if isinstance(g, list) else []


def server_backend(manifest: Mapping[str, Any]) -> str:
    """The Triton backend of the served model (``"vllm"``, ``"python"``), lower case, or ``""``."""
    return str(_first_str(_find(manifest, "model", "config", "backend"),
                          _find(manifest, "model", "config", "platform")) or "").lower()


def compare_memory(a: MemorySide, b: MemorySide, device: list[MemorySeriesSummary]) -> MemoryComparison:
    """Memory saved by B: on the weights when both are known, else on the serving processes' peak."""
    notes = []
    if a.weights_bytes is not None and b.weights_bytes is not None:
        saved, basis, ref = a.weights_bytes - b.weights_bytes, "weights", a.weights_bytes
    elif a.peak_bytes is not None and b.peak_bytes is not None and a.source == b.source:
        saved, basis, ref = a.peak_bytes - b.peak_bytes, "peak of the serving processes", a.peak_bytes
        notes.append("Weight bytes are unknown: the saving is on the serving processes' peak memory.")
    else:
        saved, basis, ref = None, "unknown", None
    if device and basis != "unknown":
        notes.append("Whole-GPU totals count every process on the GPU (both versions together) and, under "
                     "vLLM, the pre-allocated KV cache: they do not show the saving; the split does.")
    return MemoryComparison(a, b, device, saved, (saved / ref * 100.0) if saved is not None and ref else None,
                            basis, notes)


# =========================================================================== decode against the floor


@dataclass(frozen=True)
class GpuBandwidth:
    """Memory bandwidth of a GPU model: the datasheet value, and one measured where known."""

    match: str  # lower-case substring of the NVML name
    name: str
    datasheet_bytes_per_s: float
    measured_bytes_per_s: float | None = None
    measured_note: str | None = None


# Most specific first: "a100" contains "a10", "l40s" contains "l4", "h100 pcie" contains "h100".
GPU_BANDWIDTHS: tuple[GpuBandwidth, ...] = (
    GpuBandwidth("h100 nvl", "H100 NVL", 3.9e12),
    GpuBandwidth("h100 pcie", "H100 PCIe", 2.0e12),
    GpuBandwidth("h100", "H100 SXM 80GB", 3.35e12, 3.0e12,
                 "measured here: device-to-device copy (docs/gpu-notes.md)"),
    GpuBandwidth("h200", "H200", 4.8e12),
    GpuBandwidth("h20", "H20", 4.0e12),
    GpuBandwidth("a100-sxm4-80gb", "A100 SXM 80GB", 2.039e12),
    GpuBandwidth("a100 80gb pcie", "A100 PCIe 80GB", 1.935e12),
    GpuBandwidth("a100", "A100 40GB", 1.555e12),
    GpuBandwidth("l40s", "L40S", 0.864e12),
    GpuBandwidth("l40", "L40", 0.864e12),
    GpuBandwidth("l4", "L4", 0.300e12),
    GpuBandwidth("a10g", "A10G", 0.600e12),
    GpuBandwidth("a10", "A10", 0.600e12),
    GpuBandwidth("rtx 4090", "GeForce RTX 4090", 1.008e12),
    GpuBandwidth("t4", "T4", 0.320e12),
)


def known_gpu(name: str | None) -> GpuBandwidth | None:
    """The table entry of a GPU by its NVML name (``"NVIDIA H100 80GB HBM3"``), or None."""
    if not name:
        return None
    low = name.lower()
    return next((g for g in GPU_BANDWIDTHS if g.match in low), None)


@dataclass
class DecodeFloor:
    """Measured time per output token beside the memory-bandwidth floor of one decode step.

    ``fraction`` = ``floor_ms / measured_tpot_ms`` (1.0 would be the hardware's limit).
    ``lower_floor_ms``: the floor from the decoder's linear layers alone (bytes certainly read at
    every step); ``floor_ms`` counts all weight bytes (the vision tower too, which decode does
    not read: an upper estimate of the bytes read).
    """

    applicable: bool | None  # None: unknown
    reason: str
    gpu_name: str | None
    bandwidth_bytes_per_s: float | None
    bandwidth_source: str
    datasheet_bytes_per_s: float | None
    weight_bytes: int | None
    floor_ms: float | None
    lower_floor_ms: float | None
    measured_tpot_ms: float | None  # median over successful requests
    fraction: float | None
    lower_fraction: float | None


def run_gpu(manifest: Mapping[str, Any], version: str) -> tuple[str | None, bool | None]:
    """(GPU name, whether the version ran on a GPU), from the run manifest.

    The manifest's GPUs are NVML's view of the benchmark's own host: they are the server's GPUs
    for the embedded server (same host), and say nothing about an external server's. CPU-only:
    the engine reported device ``cpu``, or the embedded server's host has no GPU. Unknown (None):
    an external server on a host whose GPU the manifest cannot see.
    """
    device = str(_version_entry(manifest, version).get("device") or "").lower()
    embedded = bool(_find(manifest, "target", "embedded"))
    name = _first_str(*(g.get("name") for g in _gpus(manifest)))
    if device.startswith("cpu"):
        return None, False
    if embedded:
        return (name, True) if name else (None, False if manifest.get("gpu") == "none" else None)
    if device.startswith("cuda"):
        return name, True
    return None, None


def decode_floor(tpot_values: Sequence[float], weights: int | None, decoder_linear: int | None,
                 gpu_name: str | None, has_gpu: bool | None,
                 measured_bandwidth: float | None = None) -> DecodeFloor:
    """The floor and the fraction of it the measured TPOT reaches (see :class:`DecodeFloor`)."""
    tpot = float(np.median(tpot_values)) if len(tpot_values) else None
    entry = known_gpu(gpu_name)
    base = dict(gpu_name=gpu_name, weight_bytes=weights, measured_tpot_ms=tpot,
                datasheet_bytes_per_s=entry.datasheet_bytes_per_s if entry else None)
    none = dict(floor_ms=None, lower_floor_ms=None, fraction=None, lower_fraction=None)
    if has_gpu is False:
        return DecodeFloor(False, "not applicable: a CPU-only run (no GPU memory bandwidth to compare "
                                  "with)", bandwidth_bytes_per_s=None, bandwidth_source="none", **base, **none)
    if measured_bandwidth:
        bw, src = float(measured_bandwidth), "measured and recorded in the run manifest"
    elif entry and entry.measured_bytes_per_s:
        bw, src = entry.measured_bytes_per_s, f"{entry.name}: {entry.measured_note}"
    elif entry:
        bw, src = entry.datasheet_bytes_per_s, f"{entry.name} datasheet"
    else:
        bw, src = None, "unknown"
    missing = []
    if bw is None:
        missing.append("the GPU's bandwidth" + (f" ({gpu_name} is not in the table)" if gpu_name else
                                                " (the GPU was not recorded)"))
    if weights is None:
        missing.append("the weight bytes")
    if missing:
        return DecodeFloor(None, "unknown: " + " and ".join(missing) + " not known",
                           bandwidth_bytes_per_s=bw, bandwidth_source=src, **base, **none)
    floor = weights / bw * 1e3  # type: ignore[operator]
    lower = decoder_linear / bw * 1e3 if decoder_linear else None  # type: ignore[operator]
    reason = "measured TPOT vs weight bytes / bandwidth"
    if tpot is None:
        reason = "no measured TPOT (no request with a TTFT and 2 or more output tokens)"
    return DecodeFloor(True, reason, bandwidth_bytes_per_s=bw, bandwidth_source=src, floor_ms=floor,
                       lower_floor_ms=lower,
                       fraction=floor / tpot if tpot else None,
                       lower_fraction=lower / tpot if (tpot and lower) else None, **base)


# =========================================================================== verdict


def _fmt_ms(v: float) -> str:
    return f"{v:.1f} ms" if abs(v) < 100 else f"{v:.0f} ms"


def _ci_words(d: Difference, fmt: Callable[[float], str]) -> str:
    if d.significant is None:
        return f"significance unknown ({d.note or 'no interval'})"
    where = f"{int(d.confidence * 100)}% CI of the difference [{fmt(d.lo)}, {fmt(d.hi)}]"  # type: ignore[arg-type]
    if d.significant:
        return f"significant: the {where} excludes 0"
    return f"not significant: the {where} includes 0"


def format_bytes(n: float) -> str:
    """Bytes in GB (10^9) with two decimals; MB or kB below 1 GB, so that small models say something."""
    v = abs(n)
    if v >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if v >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB"


def memory_sentence(m: MemoryComparison, a: Side, b: Side) -> str:
    """Memory saved by B in GB and %, on the weights when known."""
    if m.saved_bytes is None:
        return ("Memory: unknown. Neither the weight bytes of both versions nor comparable memory samples "
                "were recorded.")
    what = "weights" if m.basis == "weights" else "peak memory of the serving processes"
    ref_a = m.a.weights_bytes if m.basis == "weights" else m.a.peak_bytes
    ref_b = m.b.weights_bytes if m.basis == "weights" else m.b.peak_bytes
    verb = "saves" if m.saved_bytes > 0 else "costs" if m.saved_bytes < 0 else "changes nothing in"
    pct = f" ({abs(m.saved_pct):.1f}%)" if m.saved_pct is not None else ""
    core = (f"Memory: {b.label} {verb} {format_bytes(abs(m.saved_bytes))}{pct} of {what} "
            f"({format_bytes(ref_b)} vs {format_bytes(ref_a)} for {a.label}).")  # type: ignore[arg-type]
    if m.basis == "weights" and m.a.kv_room_bytes is not None and m.b.kv_room_bytes is not None:
        core += f" KV-cache room: {format_bytes(m.b.kv_room_bytes)} vs {format_bytes(m.a.kv_room_bytes)}."
    return core


def latency_sentence(mc: MetricComparison, a: Side, b: Side) -> str:
    """Median change of one latency metric, B vs A, and whether it is significant."""
    d = mc.difference
    if d.diff is None or d.a is None or d.b is None:
        return f"{mc.label.capitalize()}: unknown ({d.note or 'no values'})."
    if d.diff == 0:
        change = "unchanged"
    else:
        rel = f" ({abs(d.rel) * 100:.1f}%)" if d.rel is not None else ""
        change = f"{_fmt_ms(abs(d.diff))}{rel} {'faster' if d.diff < 0 else 'slower'}"
    return (f"Median {mc.label}: {b.label} {_fmt_ms(d.b)} vs {a.label} {_fmt_ms(d.a)}, {change}; "
            f"{_ci_words(d, _fmt_ms)}.")


def _pts(v: float) -> str:
    return f"{v * 100:+.1f} pts"


def accuracy_sentence(acc: AccuracyComparison, a: Side, b: Side) -> str:
    """Mean IoU (and found share) change, B vs A, and whether it is significant."""
    if not acc.known:
        return "Accuracy: unknown (no ground truth for these images)."
    d = acc.mean_iou
    if d.diff is None or d.a is None or d.b is None:
        return f"Accuracy: unknown ({d.note or 'no IoU values'})."
    change = "unchanged" if d.diff == 0 else f"{'higher' if d.diff > 0 else 'lower'} by {abs(d.diff):.3f}"
    text = (f"Accuracy: mean IoU with the ground truth {d.b:.3f} for {b.label} vs {d.a:.3f} for {a.label}, "
            f"{change}; {_ci_words(d, lambda v: f'{v:+.3f}')}.")
    f = acc.found
    if f.diff is not None and f.a is not None and f.b is not None:
        text += (f" Tables found at IoU ≥ {FOUND_IOU}: {f.b * 100:.1f}% vs {f.a * 100:.1f}% "
                 f"({_pts(f.diff)}; {_ci_words(f, _pts)}).")
    return text


@dataclass
class Verdict:
    """The plain-words answer, one sentence per question."""

    memory: str
    latency: str
    ttft: str
    tpot: str
    accuracy: str
    agreement: str
    floor: str
    caveats: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [self.memory, self.latency, self.ttft, self.tpot, self.accuracy, self.agreement, self.floor]


def agreement_sentence(ag: Agreement, a: Side, b: Side) -> str:
    if not ag.pairs:
        return "Agreement: unknown (no image was answered by both versions)."
    parts = []
    if ag.compared:
        parts.append(f"mean IoU between the two versions' boxes {ag.mean_iou:.3f} over {ag.compared} image "
                     f"request(s), {ag.at_05 * 100:.0f}% at IoU ≥ {FOUND_IOU}")  # type: ignore[operator]
    if ag.both_no_box:
        parts.append(f"{ag.both_no_box} where both gave no box")
    if ag.same_answer_share is not None:
        parts.append(f"identical answer text in {ag.same_answer_share * 100:.0f}% of pairs")
    return f"Agreement of {b.label} with {a.label}: " + "; ".join(parts) + "."


def floor_sentence(fa: DecodeFloor, fb: DecodeFloor, a: Side, b: Side) -> str:
    if fa.applicable is False and fb.applicable is False:
        return "Decode vs the memory-bandwidth floor: not applicable (CPU-only run)."
    parts = []
    for side, f in ((a, fa), (b, fb)):
        if f.fraction is not None:
            parts.append(f"{side.label} {f.measured_tpot_ms:.2f} ms/token vs a floor of {f.floor_ms:.2f} ms, "
                         f"{f.fraction * 100:.0f}% of the bandwidth-bound speed")
        else:
            parts.append(f"{side.label}: {f.reason}")
    return "Decode vs the memory-bandwidth floor: " + "; ".join(parts) + "."


# =========================================================================== the comparison


@dataclass
class Comparison:
    """Everything the Compare page and the report show."""

    a: Side
    b: Side
    paired: bool
    pairing: str  # in words
    interleaved: bool
    runs: list[dict[str, Any]]  # id, status, created_at, reason, config, manifest of each run
    image_set: str
    measured_a: int
    measured_b: int
    unpaired_a: int
    unpaired_b: int
    latency: list[MetricComparison]
    throughput: ThroughputComparison
    memory: MemoryComparison
    accuracy: AccuracyComparison
    agreement: Agreement
    floor_a: DecodeFloor
    floor_b: DecodeFloor
    verdict: Verdict
    notes: list[str] = field(default_factory=list)

    def metric(self, name: str) -> MetricComparison:
        return next(m for m in self.latency if m.metric == name)


def _describe_image_set(config: Mapping[str, Any]) -> str:
    spec = config.get("image_set")
    if not isinstance(spec, Mapping):
        return "unknown image set"
    kind = spec.get("kind")
    if kind == "generated":
        return f"generated labels, seed {spec.get('seed')}, {spec.get('count')} images"
    if kind == "samples":
        return "the bundled samples"
    if kind == "folder":
        return f"dataset folder {spec.get('folder')}"
    if kind == "uploaded":
        return "uploaded images"
    return str(kind or "unknown image set")


def _run_record(run: RunInfo) -> dict[str, Any]:
    return {"id": run.id, "status": run.status, "reason": run.reason, "created_at": run.created_at,
            "finished_at": run.finished_at, "config": run.config, "manifest": run.manifest}


def _first_send_t(rs: Iterable[RequestRecord]) -> float | None:
    """The first send of the run (warm-up included: the memory baseline precedes it)."""
    sends = [r.send_ns for r in rs if r.send_ns is not None]
    return min(sends) / 1e9 if sends else None


def memory_window(run: RunInfo, rs: Sequence[RequestRecord]) -> tuple[float | None, float | None]:
    """The window of the run's memory samples (``perf_counter`` seconds): the benchmark's
    ``summary["sample_window"]`` when recorded, else up to the last answer."""
    w = _find(run.summary, "sample_window") if isinstance(run.summary, Mapping) else None
    t0, t1 = (_first_number(_find(w, "t0")), _first_number(_find(w, "t1"))) if w else (None, None)
    if t1 is None:
        recvs = [r.recv_ns for r in rs if r.recv_ns is not None]
        t1 = max(recvs) / 1e9 if recvs else None
    return t0, t1


# =========================================================================== the images of a run


@dataclass
class RunImage:
    """One image of a run, recovered for display and scoring.

    ``data``: the encoded image bytes (None when they cannot be recovered: uploads are not kept).
    ``truth``: ground-truth boxes on the 0..1000 grid (None: unknown; ``[]``: no table).
    ``source``: where it came from, in words.
    """

    image_id: str
    data: bytes | None
    truth: list[Box] | None
    source: str
    note: str | None = None


_TRAILING_INT = re.compile(r"(\d+)(?:\.[A-Za-z0-9]+)?$")


def _manifest_images(manifest: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The manifest's per-image records keyed by id (``image_set.images``, as the benchmark writes
    them: ``id``, ``sha256``, ``width``, ``height``, ``seed``, ``truth``)."""
    imgs = _find(manifest, "image_set", "images")
    if isinstance(imgs, Mapping):
        return {str(k): v for k, v in imgs.items() if isinstance(v, Mapping)}
    out: dict[str, Mapping[str, Any]] = {}
    if isinstance(imgs, list):
        for rec in imgs:
            if isinstance(rec, Mapping):
                key = rec.get("id", rec.get("image_id", rec.get("name")))
                if key is not None:
                    out[str(key)] = rec
    return out


def _truth_of_record(rec: Mapping[str, Any]) -> list[Box] | None:
    for key in ("truth", "grid_boxes", "truth_grid", "ground_truth"):
        if key in rec:
            value = rec[key]
            if value is None:
                return None
            boxes = boxes_of_value(value)
            if boxes is not None:
                return boxes
    return None


def _generated_index(image_id: str, rec: Mapping[str, Any] | None) -> int | None:
    if rec is not None and isinstance(rec.get("index"), int):
        return int(rec["index"])
    m = _TRAILING_INT.search(image_id)
    return int(m.group(1)) if m else None


def _encode_png(img: Any) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _check_sent(item: RunImage, rec: Mapping[str, Any] | None, max_side: Any) -> None:
    """Note whether recovered bytes, prepared as the benchmark prepares them, are the bytes it
    sent (the manifest's ``sha256``); a mismatch is said, not hidden (another Pillow, fonts...)."""
    want = rec.get("sha256") if rec is not None else None
    if item.data is None or not isinstance(want, str):
        return
    import hashlib

    from services.core.images import load_image

    try:
        sent = load_image(item.data, max_side=int(max_side) if isinstance(max_side, int) else 1024).data
    except Exception as exc:  # noqa: BLE001
        item.note = f"the recovered image does not load: {exc}"
        return
    if hashlib.sha256(sent).hexdigest() != want:
        item.note = ("the recovered image differs from the one the run sent (another library or font "
                     "version?): its boxes are drawn on an approximation")


def run_images(run: RunInfo, image_ids: Sequence[str], *, with_data: bool = True) -> dict[str, RunImage]:
    """Recover the images ``image_ids`` of ``run`` and their ground truth.

    The truth comes from the run manifest's per-image record (``image_set.images``: what the
    benchmark knew when it sent the image). The pixels: a generated image is regenerated from the
    seed recorded for it (``label_generator.generate_label``; else from the set's seed and the
    image's index, ``sample_seed``), a bundled sample is read by name, a dataset folder by id; where
    the manifest has the sent bytes' sha256, the recovered image is checked against it
    (``RunImage.note`` says when it differs). Uploaded images are not stored: ``data`` is None.
    ``with_data=False`` only recovers what the truth needs.
    """
    spec = run.config.get("image_set") if isinstance(run.config.get("image_set"), Mapping) else {}
    kind = str(spec.get("kind") or "")
    max_side = spec.get("max_side", 1024)
    records = _manifest_images(run.manifest)
    out: dict[str, RunImage] = {}
    samples = None
    folder_records = None
    for image_id in image_ids:
        rec = records.get(str(image_id))
        truth = _truth_of_record(rec) if rec is not None else None
        item = RunImage(str(image_id), None, truth, "run manifest" if truth is not None else "unknown")
        out[str(image_id)] = item
        if not with_data and truth is not None:
            continue
        try:
            if kind == "generated":
                from services.image_sets.generator import generate_label, sample_seed

                seed = rec.get("seed") if rec is not None and isinstance(rec.get("seed"), int) else None
                if seed is None:
                    index = _generated_index(str(image_id), rec)
                    if index is not None and isinstance(spec.get("seed"), int):
                        seed = sample_seed(int(spec["seed"]), index)
                if seed is None:
                    item.note = "its seed could not be recovered from the run's config"
                    continue
                sample = generate_label(int(seed))
                item.data = _encode_png(sample.image) if with_data else None
                item.truth = truth if truth is not None else list(sample.grid_boxes)
                item.source = f"regenerated from seed {seed}"
            elif kind == "samples":
                from services.image_sets.samples import list_samples

                if samples is None:
                    samples = {s.name: s for s in list_samples()}
                stem = str(image_id).split("#", 1)[0].rsplit(".", 1)[0]
                sample_image = samples.get(stem)
                if sample_image is None:
                    item.note = "no bundled sample of that name"
                    continue
                item.data = sample_image.path.read_bytes() if with_data else None
                item.truth = truth if truth is not None else sample_image.grid_boxes
                item.source = "bundled sample"
            elif kind == "folder" and spec.get("folder"):
                from services.core.boxes import pixels_to_grid
                from services.image_sets.datasets import load_labeled_images

                if folder_records is None:
                    folder_records = {r.id: r for r in load_labeled_images(str(spec["folder"])).records}
                r = folder_records.get(str(image_id).split("#", 1)[0])
                if r is None:
                    item.note = "not in the dataset folder any more"
                    continue
                if with_data:
                    item.data = r.image_bytes if r.image_bytes is not None else (
                        r.path.read_bytes() if r.path is not None else None)
                item.truth = truth if truth is not None else [pixels_to_grid(b, r.width, r.height) for b in r.boxes]
                item.source = "dataset folder"
            elif kind == "uploaded":
                item.note = "uploaded images are not stored with the run"
            if with_data:
                _check_sent(item, rec, max_side)
        except Exception as exc:  # noqa: BLE001 - one image that cannot be recovered is shown as such
            item.note = f"could not be recovered: {type(exc).__name__}: {exc}"
    return out


def truth_for_run(run: RunInfo, image_ids: Sequence[str]) -> dict[str, list[Box] | None]:
    """Ground-truth grid boxes of each image of ``run`` (None where unknown)."""
    return {k: v.truth for k, v in run_images(run, image_ids, with_data=False).items()}


TruthSource = Callable[[RunInfo, Sequence[str]], Mapping[str, "list[Box] | None"]]


def build_comparison(
    store: RunStore,
    a: tuple[int, str],
    b: tuple[int, str],
    *,
    truth: TruthSource | None = None,
    n_boot: int = N_BOOT,
    seed: int | None = BOOT_SEED,
) -> Comparison:
    """Compare version ``a[1]`` of run ``a[0]`` with version ``b[1]`` of run ``b[0]`` (B - A).

    ``truth(run, image_ids)`` gives each image's ground-truth grid boxes (None: unknown); the
    default (:func:`truth_for_run`) looks in the run's manifest, regenerates generated sets from their
    seed, and reads the bundled samples' and dataset folders' labels.
    Raises ``KeyError`` for a run that does not exist and ``ValueError`` for a side without requests.
    """
    (run_a_id, va), (run_b_id, vb) = (int(a[0]), str(a[1])), (int(b[0]), str(b[1]))
    run_a, run_b = store.get_run(run_a_id), store.get_run(run_b_id)
    for rid, run in ((run_a_id, run_a), (run_b_id, run_b)):
        if run is None:
            raise KeyError(f"no run {rid}")
    assert run_a is not None and run_b is not None
    same_run = run_a_id == run_b_id
    if same_run and va == vb:
        raise ValueError("choose two different versions (or two different runs)")
    side_a = Side(run_a_id, va, version_label(va) + ("" if same_run else f", run {run_a_id}"))
    side_b = Side(run_b_id, vb, version_label(vb) + ("" if same_run else f", run {run_b_id}"))
    if side_a.label == side_b.label:
        side_a.label, side_b.label = f"A: {side_a.label}", f"B: {side_b.label}"
    all_a = store.get_requests(run_a_id)
    all_b = all_a if same_run else store.get_requests(run_b_id)
    ra = [r for r in all_a if r.version == va and not r.warmup]
    rb = [r for r in all_b if r.version == vb and not r.warmup]
    for side, rs in ((side_a, ra), (side_b, rb)):
        if not rs:
            raise ValueError(f"run {side.run_id} has no measured requests of version {side.version}")

    notes: list[str] = []
    pairs_list = make_pairs(ra, rb)
    has_ids = any(r.image_id is not None for r in ra) and any(r.image_id is not None for r in rb)
    interleaved = same_run
    if same_run:
        paired = bool(pairs_list)
        pairing = ("paired by image and repeat: both versions were asked the same images in the same order, "
                   "interleaved in one run")
    elif has_ids and pairs_list:
        paired = True
        pairing = ("paired by image and repeat across two runs (same images, but measured at different "
                   "times: drift between the runs is not cancelled)")
    else:
        paired = False
        pairing = "unpaired: the two runs share no image ids; the sides are resampled independently"
    pairs = pairs_list if paired else None
    paired_keys = {id(p.a) for p in pairs_list} | {id(p.b) for p in pairs_list} if paired else set()
    unpaired_a = sum(1 for r in ra if id(r) not in paired_keys) if paired else 0
    unpaired_b = sum(1 for r in rb if id(r) not in paired_keys) if paired else 0
    if paired and (unpaired_a or unpaired_b):
        notes.append(f"{unpaired_a} request(s) of {side_a.label} and {unpaired_b} of {side_b.label} have no "
                     "counterpart: they count in each side's distribution, not in the paired differences.")

    latency = [compare_metric(m, ra, rb, pairs, n_boot=n_boot, seed=seed) for m in METRICS]
    throughput = compare_throughput(ra, rb, pairs, n_boot=n_boot, seed=seed)

    # accuracy and agreement
    truth_fn = truth or truth_for_run
    ids_a = sorted({r.image_id for r in ra if r.image_id is not None})
    ids_b = sorted({r.image_id for r in rb if r.image_id is not None})
    truth_a = dict(truth_fn(run_a, ids_a)) if ids_a else {}
    truth_b = truth_a if same_run else (dict(truth_fn(run_b, ids_b)) if ids_b else {})
    ev_a = {id(r): evaluate_request(r, truth_a.get(r.image_id) if r.image_id else None) for r in ra}
    ev_b = {id(r): evaluate_request(r, truth_b.get(r.image_id) if r.image_id else None) for r in rb}
    pair_evals = [(ev_a[id(p.a)], ev_b[id(p.b)]) for p in pairs] if pairs is not None else None
    accuracy = compare_accuracy(list(ev_a.values()), list(ev_b.values()), pair_evals, n_boot=n_boot, seed=seed)
    agree = agreement([pair_agreement(p, ev_a[id(p.a)], ev_b[id(p.b)]) for p in pairs_list])

    # memory
    model_a = str(run_a.config.get("model", settings.MODEL_NAME))
    smp_a = store.samples_frame(run_a_id)
    smp_b = smp_a if same_run else store.samples_frame(run_b_id)
    t0a, t1a = memory_window(run_a, all_a)
    t0b, t1b = memory_window(run_b, all_b)
    mem_a = memory_side(smp_a, run_a.manifest, va, model=model_a, first_request_t=_first_send_t(all_a),
                        t0=t0a, t1=t1a)
    mem_b = memory_side(smp_b, run_b.manifest, vb, model=str(run_b.config.get("model", settings.MODEL_NAME)),
                        first_request_t=_first_send_t(all_b), t0=t0b, t1=t1b)
    device = [s for s in (memory_summary(smp_a, t0=t0a, t1=t1a, first_request_t=_first_send_t(all_a))
                          if not smp_a.empty else []) if s.kind == "device"]
    memory = compare_memory(mem_a, mem_b, device)

    # decode floor
    gpu_a, has_gpu_a = run_gpu(run_a.manifest, va)
    gpu_b, has_gpu_b = run_gpu(run_b.manifest, vb)
    bw_a = _measured_bandwidth(run_a.manifest)
    bw_b = _measured_bandwidth(run_b.manifest)
    floor_a = decode_floor(latency[2].values_a, mem_a.weights_bytes, mem_a.decoder_linear_bytes, gpu_a,
                           has_gpu_a, bw_a)
    floor_b = decode_floor(latency[2].values_b, mem_b.weights_bytes, mem_b.decoder_linear_bytes, gpu_b,
                           has_gpu_b, bw_b)

    caveats = []
    for run in {run_a.id: run_a, run_b.id: run_b}.values():
        if run.status != "completed":
            caveats.append(f"Run {run.id} is {run.status}" + (f": {run.reason}" if run.reason else "") + ".")
    fails = [(s, sum(1 for r in rs if not r.ok)) for s, rs in ((side_a, ra), (side_b, rb))]
    for s, n in fails:
        if n:
            caveats.append(f"{n} measured request(s) of {s.label} failed: they are left out of the latency "
                           "statistics and count as no box for accuracy.")
    small = min(len(ra), len(rb))
    if small < 20:
        caveats.append(f"Only {small} measured requests per version: intervals are wide and p99 is the "
                       "maximum in disguise.")
    verdict = Verdict(
        memory=memory_sentence(memory, side_a, side_b),
        latency=latency_sentence(latency[0], side_a, side_b),
        ttft=latency_sentence(latency[1], side_a, side_b),
        tpot=latency_sentence(latency[2], side_a, side_b),
        accuracy=accuracy_sentence(accuracy, side_a, side_b),
        agreement=agreement_sentence(agree, side_a, side_b),
        floor=floor_sentence(floor_a, floor_b, side_a, side_b),
        caveats=caveats,
    )
    runs = [_run_record(run_a)] + ([] if same_run else [_run_record(run_b)])
    image_set = _describe_image_set(run_a.config)
    if not same_run and _describe_image_set(run_b.config) != image_set:
        image_set += f" vs {_describe_image_set(run_b.config)}"
    return Comparison(
        a=side_a, b=side_b, paired=paired, pairing=pairing, interleaved=interleaved, runs=runs,
        image_set=image_set, measured_a=len(ra), measured_b=len(rb), unpaired_a=unpaired_a,
        unpaired_b=unpaired_b, latency=latency, throughput=throughput, memory=memory, accuracy=accuracy,
        agreement=agree, floor_a=floor_a, floor_b=floor_b, verdict=verdict,
        notes=notes + throughput.notes + accuracy.notes + memory.notes,
    )


def _measured_bandwidth(manifest: Mapping[str, Any]) -> float | None:
    """A memory bandwidth measured on the run's GPU and recorded in the manifest, if any."""
    return _first_number(_find(manifest, "gpu", "measured_bandwidth_bytes_per_s"),
                         *(g.get("measured_bandwidth_bytes_per_s") for g in _gpus(manifest)))


def compare_run(store: RunStore, run_id: int, versions: Sequence[str] | None = None, **kwargs: Any) -> Comparison:
    """Compare two versions of one paired run (default: its first two versions, e.g. 1 vs 2)."""
    vs = [str(v) for v in versions] if versions else store.versions(run_id)
    if len(vs) < 2:
        raise ValueError(f"run {run_id} asked only version(s) {vs}: a comparison needs two")
    return build_comparison(store, (run_id, vs[0]), (run_id, vs[1]), **kwargs)


@dataclass
class RunChoice:
    """A stored run as the Compare page lists it."""

    id: int
    status: str
    created_at: str
    versions: list[str]
    image_set: str
    measured: int

    @property
    def paired(self) -> bool:
        return len(self.versions) >= 2

    @property
    def title(self) -> str:
        vs = " + ".join(version_label(v) for v in self.versions) or "no requests"
        return (f"run {self.id} · {self.created_at[:19].replace('T', ' ')} · {vs} · {self.image_set} · "
                f"{self.measured} measured · {self.status}")


def _measured_count(run: RunInfo) -> int | None:
    """Measured requests of a finished benchmark run, from its summary (None when not recorded)."""
    versions = _find(run.summary, "versions") if isinstance(run.summary, Mapping) else None
    if not isinstance(versions, Mapping):
        return None
    counts = [(_first_number(_find(v, "count")) or 0) + (_first_number(_find(v, "failures")) or 0)
              for v in versions.values()]
    return int(sum(counts))


def run_choices(store: RunStore, limit: int | None = 200) -> list[RunChoice]:
    """Finished runs that sent requests, newest first (runs still going are left out)."""
    out = []
    for run in store.list_runs(limit=limit):
        if run.status == "running":
            continue
        versions = store.versions(run.id)
        measured = _measured_count(run)
        if measured is None:
            measured = sum(1 for r in store.get_requests(run.id, include_warmup=False))
        if not measured:
            continue
        out.append(RunChoice(run.id, run.status, run.created_at, versions, _describe_image_set(run.config),
                             measured))
    return out


# =========================================================================== plain data


def _plain(obj: Any) -> Any:
    if isinstance(obj, Box):
        return [obj.x1, obj.y1, obj.x2, obj.y2]
    if is_dataclass(obj) and not isinstance(obj, type):
        d = {f: _plain(getattr(obj, f)) for f in obj.__dataclass_fields__}  # type: ignore[attr-defined]
        if isinstance(obj, Difference):
            d["significant"] = obj.significant
        return d
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return _plain(obj.item())
    return obj


def comparison_to_dict(c: Comparison) -> dict[str, Any]:
    """The whole comparison as JSON-ready data (requests as their numbers, boxes as lists)."""
    d = _plain(c)
    d["verdict"]["lines"] = c.verdict.lines
    return d


SUMMARY_CSV_COLUMNS = ["section", "metric", "statistic", "unit", "a", "b", "diff", "rel", "ci_lo", "ci_hi",
                       "significant", "n_a", "n_b", "paired", "note"]


def summary_rows(c: Comparison) -> list[dict[str, Any]]:
    """One row per compared number (the summary CSV)."""
    rows: list[dict[str, Any]] = []

    def diff_row(section: str, d: Difference) -> None:
        rows.append({"section": section, "metric": d.metric, "statistic": d.statistic, "unit": d.unit,
                     "a": d.a, "b": d.b, "diff": d.diff, "rel": d.rel, "ci_lo": d.lo, "ci_hi": d.hi,
                     "significant": d.significant, "n_a": d.n_a, "n_b": d.n_b, "paired": d.paired,
                     "note": d.note})

    def value_row(section: str, metric: str, a: Any, b: Any, unit: str, note: str | None = None) -> None:
        diff = b - a if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
        rel = diff / a if diff is not None and a else None
        rows.append({"section": section, "metric": metric, "statistic": "value", "unit": unit, "a": a, "b": b,
                     "diff": diff, "rel": rel, "ci_lo": None, "ci_hi": None, "significant": None, "n_a": None,
                     "n_b": None, "paired": None, "note": note})

    for m in c.latency:
        diff_row("latency", m.difference)
        for q in ("mean", "p50", "p90", "p99", "min", "max"):
            value_row("latency", f"{m.metric} {q}", getattr(m.dist_a, q), getattr(m.dist_b, q), "ms")
        value_row("latency", f"{m.metric} count", m.dist_a.count, m.dist_b.count, "requests")
    t = c.throughput
    diff_row("throughput", t.requests_per_s)
    value_row("throughput", "output_tokens_per_s", t.a.output_tokens_per_s, t.b.output_tokens_per_s, "tok/s",
              "over each version's measured window")
    diff_row("throughput", t.stream_tokens_per_s)
    mem = c.memory
    for f_, unit in (("baseline_bytes", "bytes"), ("peak_bytes", "bytes"), ("delta_bytes", "bytes"),
                     ("weights_bytes", "bytes"), ("decoder_linear_bytes", "bytes"), ("kv_room_bytes", "bytes"),
                     ("rest_bytes", "bytes")):
        value_row("memory", f_, getattr(mem.a, f_), getattr(mem.b, f_), unit,
                  f"a: {mem.a.source}, b: {mem.b.source}" if f_ in ("baseline_bytes", "peak_bytes", "delta_bytes")
                  else None)
    rows.append({"section": "memory", "metric": "saved_bytes", "statistic": mem.basis, "unit": "bytes", "a": None,
                 "b": None, "diff": mem.saved_bytes, "rel": None if mem.saved_pct is None else mem.saved_pct / 100,
                 "ci_lo": None, "ci_hi": None, "significant": None, "n_a": None, "n_b": None, "paired": None,
                 "note": "A minus B"})
    acc = c.accuracy
    diff_row("accuracy", acc.mean_iou)
    diff_row("accuracy", acc.found)
    diff_row("accuracy", acc.no_box)
    value_row("accuracy", "no_box_answers", acc.a.no_box, acc.b.no_box, "requests")
    value_row("accuracy", "failed_requests", acc.a.failed, acc.b.failed, "requests")
    ag = c.agreement
    rows.append({"section": "agreement", "metric": "versions_mean_iou", "statistic": "mean", "unit": "",
                 "a": None, "b": None, "diff": ag.mean_iou, "rel": None, "ci_lo": None, "ci_hi": None,
                 "significant": None, "n_a": ag.compared, "n_b": ag.compared, "paired": True,
                 "note": f"{ag.both_no_box} pair(s) with no box on both sides"})
    value_row("floor", "measured_tpot_ms", c.floor_a.measured_tpot_ms, c.floor_b.measured_tpot_ms, "ms")
    value_row("floor", "floor_ms", c.floor_a.floor_ms, c.floor_b.floor_ms, "ms", c.floor_a.reason)
    value_row("floor", "fraction_of_floor", c.floor_a.fraction, c.floor_b.fraction, "")
    return rows


PAIR_CSV_COLUMNS = [
    "key", "image_id", "occurrence", "seq_a", "seq_b", "status_a", "status_b", "latency_ms_a", "latency_ms_b",
    "ttft_ms_a", "ttft_ms_b", "tpot_ms_a", "tpot_ms_b", "output_tokens_a", "output_tokens_b", "boxes_a",
    "boxes_b", "truth", "truth_iou_a", "truth_iou_b", "versions_iou", "agreement", "same_answer",
]


def pair_rows(store: RunStore, c: Comparison) -> list[dict[str, Any]]:
    """One row per pair with both requests' raw numbers (the pairs CSV)."""
    ra = {r.seq: r for r in store.get_requests(c.a.run_id, c.a.version, include_warmup=False)}
    rb = {r.seq: r for r in store.get_requests(c.b.run_id, c.b.version, include_warmup=False)}
    out = []
    for p in c.agreement.pairs:
        a, b = ra.get(p.seq_a), rb.get(p.seq_b)
        def v(r: RequestRecord | None, m: str) -> float | None:
            return None if r is None else metric_value(r, m)
        out.append({
            "key": p.key, "image_id": p.image_id, "occurrence": p.occurrence, "seq_a": p.seq_a, "seq_b": p.seq_b,
            "status_a": a.status if a else None, "status_b": b.status if b else None,
            "latency_ms_a": v(a, "latency_ms"), "latency_ms_b": v(b, "latency_ms"),
            "ttft_ms_a": v(a, "ttft_ms"), "ttft_ms_b": v(b, "ttft_ms"),
            "tpot_ms_a": v(a, "tpot_ms"), "tpot_ms_b": v(b, "tpot_ms"),
            "output_tokens_a": a.output_tokens if a else None, "output_tokens_b": b.output_tokens if b else None,
            "boxes_a": json.dumps(_plain(p.boxes_a)), "boxes_b": json.dumps(_plain(p.boxes_b)),
            "truth": json.dumps(_plain(p.truth)), "truth_iou_a": p.truth_iou_a, "truth_iou_b": p.truth_iou_b,
            "versions_iou": p.iou, "agreement": p.status, "same_answer": p.same_answer,
        })
    return out
