"""The comparison as plain data: JSON-ready (:func:`comparison_to_dict`), the summary CSV's rows
(:func:`summary_rows`, one per compared number) and the pairs CSV's rows (:func:`pair_rows`, one per
pair of requests with both sides' raw numbers).
"""

from __future__ import annotations

import json
import math
from dataclasses import is_dataclass
from typing import Any, Mapping

import numpy as np

from services.bench.stats import RequestRecord
from services.bench.store import RunStore
from services.compare.comparison import Comparison
from services.compare.differences import Difference
from services.compare.speed import metric_value
from services.core.boxes import Box


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
    for sm in c.server.metrics if c.server is not None else []:  # the server's own (vllm:* histograms)
        diff_row("server timings", sm.difference)
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
