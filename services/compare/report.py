"""The comparison's figures and its report: one self-contained HTML file, JSON and CSV.

No streamlit here: the Compare page shows the same figures and offers the same files.

* Figures (plotly): :func:`cdf_figure` per latency metric, :func:`change_figure` (each difference in %
  of A with its 95 % interval), :func:`memory_figure` (weights / KV room / rest per version),
  :func:`throughput_figure`, :func:`accuracy_figure`, :func:`agreement_figure`, :func:`floor_figure`,
  and :func:`gallery` (the images where the versions disagree most, both boxes drawn, through
  ``services.detect.figures.detection_figure``).
* Files (:func:`report_files`): ``<stem>.html`` (every figure, plotly.js inlined once: opens offline),
  ``<stem>.json`` (the whole comparison, :func:`services.compare.comparison.comparison_to_dict`),
  ``<stem>_summary.csv`` (one row per compared number) and ``<stem>_pairs.csv`` (one row per
  pair of requests, both sides' raw numbers).

Command line::

    python -m services.compare.report --run RUN_ID --out DIR [--versions 1 2]
    python -m services.compare.report --run-a 3 --version-a 1 --run-b 5 --version-b 2 --out DIR
    python -m services.compare.report --fresh [--image-set generated --seed 0 --count 8]
        [--requests 16 --warmup 1 --max-tokens 64] [--url host:8000] --out DIR

``--fresh`` first runs a paired benchmark (both versions interleaved, same images in the same
order) through :mod:`services.bench.runner` against ``--url`` (default ``QWEN_TRITON_URL``, else the
embedded server), then reports on it.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from services.core.boxes import Box
from services.compare.comparison import (
    FOUND_IOU,
    GB,
    PAIR_CSV_COLUMNS,
    SUMMARY_CSV_COLUMNS,
    Comparison,
    DecodeFloor,
    Difference,
    MetricComparison,
    PairAgreement,
    RunImage,
    build_comparison,
    comparison_to_dict,
    compare_run,
    format_bytes,
    pair_rows,
    run_images,
    summary_rows,
)
from services.bench.store import RunStore

A_COLOR = "#1f6feb"  # bf16 blue (services.detect.figures.VERSION_COLORS["1"])
B_COLOR = "#f76707"  # fp8 orange
UNKNOWN_COLOR = "#ced4da"
HEIGHT = 340
GALLERY_SIZE = 6
REPORT_IMAGE_SIDE = 640  # images in the HTML are shrunk to this longest side


def side_colors(c: Comparison) -> tuple[str, str]:
    """The colours of A and B: each version's own colour (services.detect.figures), distinct sides."""
    try:
        from services.detect.figures import version_color

        ca, cb = version_color(c.a.version), version_color(c.b.version)
    except Exception:  # noqa: BLE001 - colours are cosmetic
        ca, cb = A_COLOR, B_COLOR
    return (ca, cb) if ca != cb else (A_COLOR, B_COLOR)


def _layout(fig: go.Figure, title: str, xtitle: str | None = None, ytitle: str | None = None,
            height: int = HEIGHT, subtitle: str | None = None) -> go.Figure:
    """Title (and a subtitle line) on top, the legend under the plot: nothing overlaps in a narrow column."""
    t: dict[str, Any] = {"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}}
    if subtitle:
        t["subtitle"] = {"text": subtitle, "font": {"size": 12, "color": "#495057"}}
    fig.update_layout(title=t, height=height, margin={"l": 60, "r": 20, "t": 80 if subtitle else 50, "b": 40},
                      template="plotly_white",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0})
    if xtitle:
        fig.update_xaxes(title_text=xtitle)
    if ytitle:
        fig.update_yaxes(title_text=ytitle)
    return fig


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 14, "color": "#868e96"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


# =========================================================================== latency


def ecdf(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and their empirical cumulative share (i / n, i = 1..n)."""
    x = np.sort(np.asarray(values, dtype=float))
    return x, np.arange(1, x.size + 1) / x.size if x.size else np.asarray([])


def cdf_figure(c: Comparison, metric: str) -> go.Figure:
    """Empirical CDF of one latency metric for both sides, medians marked, difference in the title."""
    mc: MetricComparison = c.metric(metric)
    ca, cb = side_colors(c)
    fig = go.Figure()
    title = f"{mc.label[0].upper()}{mc.label[1:]}"
    if not mc.values_a and not mc.values_b:
        return _layout(_empty(fig, "no values (failed requests, or too few output tokens)"), title)
    for side, values, color in ((c.a, mc.values_a, ca), (c.b, mc.values_b, cb)):
        if not values:
            continue
        x, y = ecdf(values)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"shape": "hv", "color": color, "width": 2},
                                 name=f"{side.label} (n={len(values)})",
                                 hovertemplate="%{x:.2f} ms: %{y:.0%} of requests<extra>" + side.label + "</extra>"))
        med = float(np.median(values))
        fig.add_vline(x=med, line={"color": color, "dash": "dot", "width": 1})
    d = mc.difference
    sub = None
    if d.diff is not None:
        ci = f", 95% CI [{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo is not None else ""
        sub = f"median B−A {d.diff:+.2f} ms{ci}"
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return _layout(fig, title, "ms", "share of requests", height=HEIGHT + 60, subtitle=sub)


def change_figure(c: Comparison) -> go.Figure:
    """Each latency and throughput difference as % of A with its 95 % interval (0 = no change)."""
    rows: list[tuple[str, Difference]] = [(m.label, m.difference) for m in c.latency]
    rows.append(("single-stream output tokens/s", c.throughput.stream_tokens_per_s))
    fig = go.Figure()
    names, x, lo, hi, colors, text = [], [], [], [], [], []
    for name, d in rows:
        if d.diff is None or not d.a:
            continue
        rel = d.diff / d.a * 100
        names.append(name)
        x.append(rel)
        lo.append(rel - d.lo / d.a * 100 if d.lo is not None else 0)
        hi.append(d.hi / d.a * 100 - rel if d.hi is not None else 0)
        sig = d.significant
        colors.append("#2b8a3e" if sig else "#868e96")
        text.append(f"{rel:+.1f}% ({'significant' if sig else 'not significant' if sig is False else 'no CI'})")
    title = f"Change of {c.b.label} vs {c.a.label} (% of A, 95% CI)"
    if not names:
        return _layout(_empty(fig, "no differences could be computed"), title)
    fig.add_trace(go.Scatter(x=x, y=names, mode="markers+text", text=text, textposition="top center",
                             marker={"size": 11, "color": colors},
                             error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo,
                                      "color": "#495057", "thickness": 2},
                             hovertemplate="%{y}: %{x:+.2f}%<extra></extra>", showlegend=False))
    fig.add_vline(x=0, line={"color": "#212529", "width": 1})
    return _layout(fig, title, "change (% of A); green: the interval excludes 0", None,
                   height=120 + 60 * len(names))


# =========================================================================== memory


def memory_figure(c: Comparison) -> go.Figure:
    """Per version: weights, KV-cache room and the rest, stacked where known; the measured peak as a
    marker; what is unknown is written on the chart, never drawn as a number."""
    m = c.memory
    fig = go.Figure()
    labels = [c.a.label, c.b.label]
    sides = [m.a, m.b]
    scale, unit = memory_unit(c)
    weights = [s.weights_bytes / scale if s.weights_bytes is not None else None for s in sides]
    kv = [s.kv_room_bytes / scale if s.kv_room_bytes is not None else None for s in sides]
    rest = [s.rest_bytes / scale if s.rest_bytes is not None else None for s in sides]
    peaks = [s.peak_bytes / scale if s.peak_bytes is not None else None for s in sides]
    title = "Memory: weights / KV-cache room / rest"
    if all(v is None for v in weights + kv + rest + peaks):
        return _layout(_empty(fig, "memory unknown: no samples and no weight gauges were recorded"), title)
    for name, values, color, notes in (
        ("weights", weights, "#364fc7", [s.weights_source for s in sides]),
        ("KV-cache room", kv, "#2b8a3e", [s.kv_note for s in sides]),
        ("rest", rest, "#adb5bd", [s.rest_note for s in sides]),
    ):
        fig.add_trace(go.Bar(x=labels, y=[v or 0 for v in values], name=name, marker_color=color,
                             text=[f"{v:.2f}" if v is not None else "unknown" for v in values],
                             textposition="inside", customdata=notes,
                             hovertemplate=f"{name}: %{{text}} {unit}<br>%{{customdata}}<extra></extra>"))
    src = {s.source for s in sides}
    what = ("GPU memory of the serving processes" if src == {"gpu-process"} else
            "resident host memory of the serving processes (CPU-only server)" if src == {"host-process"} else
            "memory of the serving processes")
    if any(p is not None for p in peaks):
        fig.add_trace(go.Scatter(x=labels, y=peaks, mode="markers+text", name=f"peak ({what})",
                                 marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 3},
                                         "color": "#e03131"},
                                 text=[f"peak {p:.2f}" if p is not None else "" for p in peaks],
                                 textposition="top center"))
    for i, s in enumerate(sides):
        if s.kv_room_bytes is None:
            fig.add_annotation(x=labels[i], y=0, yref="y", text="KV room: " + s.kv_note.split(":")[0],
                               showarrow=False, yanchor="top", yshift=-18, font={"size": 10, "color": "#495057"})
    fig.update_layout(barmode="stack")
    sub = None
    if m.saved_bytes is not None:
        pct = f" ({m.saved_pct:.1f}%)" if m.saved_pct is not None else ""
        sub = f"saved by {c.b.label}: {format_bytes(m.saved_bytes)}{pct} of {m.basis}"
    return _layout(fig, title, None, unit, height=HEIGHT + 80, subtitle=sub)


# =========================================================================== throughput, accuracy, floor


def throughput_figure(c: Comparison) -> go.Figure:
    """Single-stream output tokens per second (request time) and requests per second (window),
    each on its own axis."""
    from plotly.subplots import make_subplots

    t = c.throughput
    ca, cb = side_colors(c)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("output tokens/s per stream (Σ tokens / Σ latency)",
                                                        "requests/s over the measured window"))
    for side, ts, color in ((c.a, t.a, ca), (c.b, t.b, cb)):
        for col, v in ((1, ts.stream_tokens_per_s), (2, ts.requests_per_s)):
            fig.add_trace(go.Bar(x=[side.label], y=[v or 0], name=side.label, marker_color=color,
                                 text=[f"{v:.2f}" if v is not None else "unknown"], textposition="outside",
                                 showlegend=col == 1, legendgroup=side.label), row=1, col=col)
    d = t.stream_tokens_per_s
    sub = None
    if d.diff is not None:
        ci = f", 95% CI [{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo is not None else ""
        sub = f"tokens/s per stream B−A {d.diff:+.2f}{ci}"
    fig.update_annotations(font_size=12, yshift=6)
    _layout(fig, "Throughput", None, "per second", height=HEIGHT + 60, subtitle=sub)
    fig.update_layout(margin={"t": 110})
    return fig


def accuracy_figure(c: Comparison) -> go.Figure:
    """Mean IoU with the truth, share of tables found at IoU 0.5, and share without a box."""
    acc = c.accuracy
    ca, cb = side_colors(c)
    fig = go.Figure()
    title = "Accuracy against the ground truth"
    names = ["mean IoU", f"tables found (IoU ≥ {FOUND_IOU})", "no box (incl. failures)"]
    if not acc.known:
        fig.add_annotation(text="no ground truth for these images: accuracy unknown", x=0.5, y=1.08,
                           xref="paper", yref="paper", showarrow=False, font={"color": "#868e96"})
    for side, s, color in ((c.a, acc.a, ca), (c.b, acc.b, cb)):
        vals = [s.mean_iou, s.found_share, s.no_box_share]
        fig.add_trace(go.Bar(x=names, y=[v or 0 for v in vals], name=side.label, marker_color=color,
                             text=[f"{v:.3f}" if v is not None else "unknown" for v in vals], textposition="outside"))
    fig.update_yaxes(range=[0, 1.1])
    fig.update_layout(barmode="group")
    return _layout(fig, title, None, "share / IoU")


def agreement_figure(c: Comparison) -> go.Figure:
    """Histogram of the IoU between the two versions' boxes, per pair (both no box counted apart)."""
    ag = c.agreement
    fig = go.Figure()
    values = [p.iou for p in ag.pairs if p.status == "compared" and p.iou is not None]
    title = f"IoU between the {c.a.label} and {c.b.label} boxes, per image"
    if values:
        fig.add_trace(go.Histogram(x=values, xbins={"start": 0, "end": 1.0001, "size": 0.1},
                                   marker_color="#5f3dc4", name="pairs"))
    other = {}
    for p in ag.pairs:
        if p.status != "compared":
            other[p.status] = other.get(p.status, 0) + 1
    if other:
        fig.add_annotation(text="; ".join(f"{k}: {v}" for k, v in sorted(other.items())), x=1, y=1.08,
                           xref="paper", yref="paper", showarrow=False, xanchor="right")
    if not values and not other:
        return _layout(_empty(fig, "no pairs"), title)
    if not values:
        fig.add_annotation(text="no pair where a version gave a box", x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font={"color": "#868e96"})
    fig.update_xaxes(range=[0, 1])
    return _layout(fig, title, "IoU between the versions' boxes", "pairs")


def floor_figure(c: Comparison) -> go.Figure:
    """Measured median TPOT beside the memory-bandwidth floor, per version."""
    fig = go.Figure()
    title = "Decode: measured time per output token vs the bandwidth floor"
    floors: list[tuple[str, DecodeFloor]] = [(c.a.label, c.floor_a), (c.b.label, c.floor_b)]
    if all(f.applicable is False for _, f in floors):
        return _layout(_empty(fig, "not applicable: CPU-only run"), title)
    labels = [n for n, _ in floors]
    measured = [f.measured_tpot_ms for _, f in floors]
    floor = [f.floor_ms for _, f in floors]
    fig.add_trace(go.Bar(x=labels, y=[v or 0 for v in measured], name="measured TPOT (median)",
                         marker_color="#495057",
                         text=[f"{v:.2f} ms" if v is not None else "unknown" for v in measured],
                         textposition="outside"))
    fig.add_trace(go.Bar(x=labels, y=[v or 0 for v in floor], name="floor: weight bytes / bandwidth",
                         marker_color="#2b8a3e",
                         text=[f"{v:.2f} ms" + (f" ({f.fraction * 100:.0f}% of measured)" if f.fraction else "")
                               if v is not None else f.reason for v, (_, f) in zip(floor, floors)],
                         textposition="outside"))
    fig.update_layout(barmode="group")
    return _layout(fig, title, None, "ms per output token")


# =========================================================================== gallery


@dataclass
class GalleryItem:
    pair: PairAgreement
    image: RunImage
    caption: str
    figure: go.Figure | None  # None when the image could not be recovered


def _parsed(boxes: Sequence[Box] | None, width: int, height: int) -> list[Any]:
    from services.core.boxes import LABEL, ParsedBox, grid_to_pixels

    return [ParsedBox(grid=b, pixels=grid_to_pixels(b, width, height), label=LABEL) for b in boxes or []]


def gallery_figure(c: Comparison, pair: PairAgreement, image: RunImage, answers: dict[str, str | None],
                   max_side: int = REPORT_IMAGE_SIDE) -> go.Figure:
    """The image with both versions' boxes (and the truth, dashed) through services.detect.figures."""
    from services.detect.detection import ImageResult, VersionResult
    from services.detect.figures import detection_figure
    from services.core.images import load_image

    assert image.data is not None
    loaded = load_image(image.data, max_side=max_side, name=image.image_id)
    w, h = loaded.original_width, loaded.original_height
    key_a, key_b = (c.a.version, c.b.version) if c.a.version != c.b.version else ("A", "B")
    result = ImageResult(index=0, name=image.image_id, source=image.source, image=loaded, truth=image.truth)
    for key, boxes, answer in ((key_a, pair.boxes_a, answers.get("a")), (key_b, pair.boxes_b, answers.get("b"))):
        if boxes is None:
            result.versions[key] = VersionResult(version=key, error="request failed")
        else:
            result.versions[key] = VersionResult(version=key, text=answer, boxes=_parsed(boxes, w, h))
    return detection_figure(result, height=420)


def gallery(store: RunStore, c: Comparison, k: int = GALLERY_SIZE,
            max_side: int = REPORT_IMAGE_SIDE) -> list[GalleryItem]:
    """The ``k`` images where the versions agree least, both boxes drawn (see Agreement.worst)."""
    worst = c.agreement.worst(k)
    if not worst:
        return []
    run = store.get_run(c.a.run_id)
    assert run is not None
    ids = [p.image_id for p in worst if p.image_id is not None]
    images = run_images(run, ids) if ids else {}
    ra = {r.seq: r for r in store.get_requests(c.a.run_id, c.a.version, include_warmup=False)}
    rb = {r.seq: r for r in store.get_requests(c.b.run_id, c.b.version, include_warmup=False)}
    items = []
    for p in worst:
        img = images.get(p.image_id) if p.image_id is not None else None
        if img is None:
            img = RunImage(p.image_id or p.key, None, p.truth, "unknown", "the run recorded no image id")
        iou = f"IoU between versions {p.iou:.3f}" if p.iou is not None else p.status
        truth = ""
        if p.truth_iou_a is not None or p.truth_iou_b is not None:
            fa = "—" if p.truth_iou_a is None else f"{p.truth_iou_a:.3f}"
            fb = "—" if p.truth_iou_b is None else f"{p.truth_iou_b:.3f}"
            truth = f"; IoU with the truth: {c.a.label} {fa}, {c.b.label} {fb}"
        caption = f"{img.image_id} (request {p.occurrence + 1}): {iou}{truth}"
        fig = None
        if img.data is not None:
            try:
                answers = {"a": getattr(ra.get(p.seq_a), "answer", None), "b": getattr(rb.get(p.seq_b), "answer", None)}
                fig = gallery_figure(c, p, img, answers, max_side=max_side)
                fig.update_layout(title={"text": caption.replace(": ", ":<br>", 1), "font": {"size": 12},
                                         "yref": "container", "y": 1, "yanchor": "top", "pad": {"t": 14}},
                                  margin={"l": 10, "r": 10, "t": 90, "b": 10})
            except Exception as exc:  # noqa: BLE001 - a picture that cannot be drawn is said, not fatal
                img.note = f"could not be drawn: {exc}"
        items.append(GalleryItem(p, img, caption, fig))
    return items


# =========================================================================== files


def report_stem(c: Comparison) -> str:
    if c.a.run_id == c.b.run_id:
        return f"comparison_run{c.a.run_id}_v{c.a.version}_v{c.b.version}"
    return f"comparison_run{c.a.run_id}v{c.a.version}_run{c.b.run_id}v{c.b.version}"


def _csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue().encode()


def report_json(c: Comparison) -> dict[str, Any]:
    """The JSON report: the comparison's data plus when and by what it was made."""
    return {"schema": "qwen-compare/1",
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "comparison": comparison_to_dict(c)}


def figures(c: Comparison) -> dict[str, go.Figure]:
    """Every chart of the comparison, by name, in page order."""
    return {
        "change": change_figure(c),
        "memory": memory_figure(c),
        "latency_cdf": cdf_figure(c, "latency_ms"),
        "ttft_cdf": cdf_figure(c, "ttft_ms"),
        "tpot_cdf": cdf_figure(c, "tpot_ms"),
        "throughput": throughput_figure(c),
        "accuracy": accuracy_figure(c),
        "agreement": agreement_figure(c),
        "floor": floor_figure(c),
    }


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any, nd: int = 2) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def memory_unit(c: Comparison) -> tuple[float, str]:
    """GB, or MB when every known memory number is below 1 GB (a small demo model)."""
    m = c.memory
    known = [abs(v) for s in (m.a, m.b) for v in (s.baseline_bytes, s.peak_bytes, s.weights_bytes, s.rest_bytes,
                                                   s.kv_room_bytes) if v is not None]
    return (GB, "GB") if not known or max(known) >= GB else (1e6, "MB")


def memory_rows(c: Comparison) -> list[list[str]]:
    """The memory table, one row per quantity, A and B columns; each number with its unit
    (GB, or MB / kB for a small model: :func:`services.compare.comparison.format_bytes`)."""
    def fmt(v: int | None) -> str:
        return "unknown" if v is None else format_bytes(v)
    a, b = c.memory.a, c.memory.b
    return [
        ["measured", a.source, b.source],
        ["baseline", fmt(a.baseline_bytes), fmt(b.baseline_bytes)],
        ["peak", fmt(a.peak_bytes), fmt(b.peak_bytes)],
        ["delta", fmt(a.delta_bytes), fmt(b.delta_bytes)],
        ["weights", fmt(a.weights_bytes), fmt(b.weights_bytes)],
        ["weights from", a.weights_source, b.weights_source],
        ["decoder linear layers", fmt(a.decoder_linear_bytes), fmt(b.decoder_linear_bytes)],
        ["KV-cache room", fmt(a.kv_room_bytes), fmt(b.kv_room_bytes)],
        ["KV-cache room: how", a.kv_note, b.kv_note],
        ["rest", fmt(a.rest_bytes), fmt(b.rest_bytes)],
        ["rest: how", a.rest_note, b.rest_note],
    ]


def latency_rows(c: Comparison) -> list[list[str]]:
    """One row per latency metric: both sides' p50/p90/p99/mean, the median difference and its CI."""
    rows = []
    for m in c.latency:
        d = m.difference
        ci = f"[{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo is not None else (d.note or "no interval")
        sig = {True: "yes", False: "no", None: "unknown"}[d.significant]
        rows.append([m.label, m.dist_a.count, m.dist_b.count,
                     f"{_num(m.dist_a.p50)} / {_num(m.dist_a.p90)} / {_num(m.dist_a.p99)}",
                     f"{_num(m.dist_b.p50)} / {_num(m.dist_b.p90)} / {_num(m.dist_b.p99)}",
                     _num(m.dist_a.mean), _num(m.dist_b.mean),
                     "unknown" if d.diff is None else f"{d.diff:+.2f}", ci, sig])
    return rows


LATENCY_COLUMNS = ["metric (ms)", "n A", "n B", "A p50 / p90 / p99", "B p50 / p90 / p99", "A mean", "B mean",
                   "median B−A", "95% CI", "significant"]


def accuracy_rows(c: Comparison) -> list[list[str]]:
    acc = c.accuracy
    rows = []
    for name, d in (("mean IoU", acc.mean_iou), (f"found at IoU ≥ {FOUND_IOU}", acc.found),
                    ("no box (incl. failures)", acc.no_box)):
        ci = f"[{d.lo:+.3f}, {d.hi:+.3f}]" if d.lo is not None else (d.note or "no interval")
        rows.append([name, _num(d.a, 3), _num(d.b, 3), "unknown" if d.diff is None else f"{d.diff:+.3f}", ci,
                     {True: "yes", False: "no", None: "unknown"}[d.significant]])
    rows.append(["answers without a box", acc.a.no_box, acc.b.no_box, "", "", ""])
    rows.append(["failed requests", acc.a.failed, acc.b.failed, "", "", ""])
    return rows


ACCURACY_COLUMNS = ["", "A", "B", "B−A", "95% CI", "significant"]


def floor_rows(c: Comparison) -> list[list[str]]:
    rows = []
    for side, f in ((c.a, c.floor_a), (c.b, c.floor_b)):
        bw = "unknown" if f.bandwidth_bytes_per_s is None else f"{f.bandwidth_bytes_per_s / 1e12:.2f} TB/s"
        rows.append([side.label, f.gpu_name or "unknown", f"{bw} ({f.bandwidth_source})",
                     "unknown" if f.weight_bytes is None else format_bytes(f.weight_bytes),
                     _num(f.floor_ms, 3), _num(f.measured_tpot_ms, 3),
                     "unknown" if f.fraction is None else f"{f.fraction * 100:.1f}%", f.reason])
    return rows


FLOOR_COLUMNS = ["version", "GPU", "bandwidth", "weight bytes", "floor ms/token", "measured TPOT ms (median)",
                 "floor / measured", "note"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#212529}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #dee2e6;padding-bottom:4px}
.verdict{background:#f1f3f5;border-left:4px solid #364fc7;padding:10px 16px}
.verdict li{margin:6px 0}.caveat{color:#862e9c}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #dee2e6;padding:4px 8px;text-align:left}
th{background:#f8f9fa}.note{color:#495057;font-size:.9em}
"""


def report_html(c: Comparison, items: Sequence[GalleryItem] | None = None) -> str:
    """The self-contained HTML report: verdict, tables and every figure; plotly.js inlined once."""
    figs = figures(c)
    first = [True]

    def fig_html(fig: go.Figure, div_id: str) -> str:
        include: Any = "inline" if first[0] else False
        first[0] = False
        return pio.to_html(fig, include_plotlyjs=include, full_html=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})

    runs = "; ".join(f"run {r['id']} ({r['status']}, {r['created_at'][:19]})" for r in c.runs)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(c.b.label)} vs {_esc(c.a.label)}: comparison report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>What {_esc(c.b.label)} buys over {_esc(c.a.label)}, and what it costs</h1>",
        f"<p class='note'>{_esc(runs)} · {_esc(c.image_set)} · {c.measured_a} / {c.measured_b} measured requests · "
        f"{_esc(c.pairing)} · generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}</p>",
        "<h2>Verdict</h2><div class='verdict' id='verdict'><ul>",
        *(f"<li>{_esc(line)}</li>" for line in c.verdict.lines),
        *(f"<li class='caveat'>{_esc(line)}</li>" for line in c.verdict.caveats),
        "</ul></div>",
        fig_html(figs["change"], "fig-change"),
        "<h2>Memory</h2>", _table(["", c.a.label, c.b.label], memory_rows(c)),
        *(f"<p class='note'>{_esc(n)}</p>" for n in c.memory.notes),
        fig_html(figs["memory"], "fig-memory"),
        "<h2>Latency</h2>", _table(LATENCY_COLUMNS, latency_rows(c)),
        fig_html(figs["latency_cdf"], "fig-latency"), fig_html(figs["ttft_cdf"], "fig-ttft"),
        fig_html(figs["tpot_cdf"], "fig-tpot"),
        "<h2>Throughput</h2>", *(f"<p class='note'>{_esc(n)}</p>" for n in c.throughput.notes),
        fig_html(figs["throughput"], "fig-throughput"),
        "<h2>Accuracy</h2>", _table(ACCURACY_COLUMNS, accuracy_rows(c)),
        *(f"<p class='note'>{_esc(n)}</p>" for n in c.accuracy.notes),
        fig_html(figs["accuracy"], "fig-accuracy"),
        "<h2>Agreement between the versions</h2>", f"<p>{_esc(c.verdict.agreement)}</p>",
        fig_html(figs["agreement"], "fig-agreement"),
    ]
    if items:
        parts.append("<h3>Where they disagree most</h3>")
        for i, it in enumerate(items):
            if it.figure is not None:
                parts.append(fig_html(it.figure, f"fig-gallery-{i}"))
            else:
                parts.append(f"<p class='note'>{_esc(it.caption)}: image not available "
                             f"({_esc(it.image.note or it.image.source)})</p>")
    parts += [
        "<h2>Decode against the memory-bandwidth floor</h2>", _table(FLOOR_COLUMNS, floor_rows(c)),
        "<p class='note'>Floor = weight bytes read per decode step / the GPU's memory bandwidth; the fraction "
        "floor / measured says how close the serving stack gets to the hardware (100% = the limit).</p>",
        fig_html(figs["floor"], "fig-floor"),
    ]
    if c.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in c.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def html_bytes(store: RunStore, c: Comparison, items: Sequence[GalleryItem] | None = None,
               gallery_size: int = GALLERY_SIZE) -> bytes:
    """The HTML report (the gallery is drawn here unless ``items`` are given)."""
    if items is None:
        items = gallery(store, c, gallery_size) if gallery_size > 0 else []
    return report_html(c, items).encode()


def json_bytes(c: Comparison) -> bytes:
    return (json.dumps(report_json(c), indent=1, ensure_ascii=False) + "\n").encode()


def summary_csv(c: Comparison) -> bytes:
    return _csv(SUMMARY_CSV_COLUMNS, summary_rows(c))


def pairs_csv(store: RunStore, c: Comparison) -> bytes:
    return _csv(PAIR_CSV_COLUMNS, pair_rows(store, c))


def report_files(store: RunStore, c: Comparison, *, gallery_size: int = GALLERY_SIZE,
                 items: Sequence[GalleryItem] | None = None) -> dict[str, bytes]:
    """``{file name: bytes}``: the HTML report, the JSON, the summary CSV and the pairs CSV."""
    stem = report_stem(c)
    return {
        f"{stem}.html": html_bytes(store, c, items, gallery_size),
        f"{stem}.json": json_bytes(c),
        f"{stem}_summary.csv": summary_csv(c),
        f"{stem}_pairs.csv": pairs_csv(store, c),
    }


def cli_command(c: Comparison) -> str:
    """The command line that writes this comparison's report."""
    if c.a.run_id == c.b.run_id:
        return (f"python -m services.compare.report --run {c.a.run_id} --versions {c.a.version} {c.b.version} "
                "--out DIR")
    return (f"python -m services.compare.report --run-a {c.a.run_id} --version-a {c.a.version} "
            f"--run-b {c.b.run_id} --version-b {c.b.version} --out DIR")


def write_report(store: RunStore, c: Comparison, out: str | Path, **kwargs: Any) -> list[Path]:
    """Write :func:`report_files` into ``out`` (created); returns the paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in report_files(store, c, **kwargs).items():
        p = folder / name
        p.write_bytes(data)
        paths.append(p)
    return paths


# =========================================================================== command line


def fresh_run(store: RunStore, args: argparse.Namespace) -> int:
    """Run a paired benchmark (both versions interleaved) and return its run id."""
    from services.bench.runner import BenchmarkConfig, run_benchmark
    from services.image_sets.image_set import ImageSetSpec
    from services.client.server_target import current_target

    spec = ImageSetSpec(kind=args.image_set, seed=args.seed, count=args.count, folder=args.folder,
                        max_side=args.max_side)
    config = BenchmarkConfig(versions=tuple(args.versions), image_set=spec, requests=args.requests,
                             warmup=args.warmup, max_tokens=args.max_tokens, concurrency=args.concurrency)
    target = current_target(args.url, args.protocol)

    def progress(p: Any) -> None:
        print(f"\r{p.status}: {p.done}/{p.total} requests, {p.failures} failed", end="", file=sys.stderr)

    outcome = run_benchmark(config, store, target, on_progress=progress)
    print(f"\nrun {outcome.run_id}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else ""),
          file=sys.stderr)
    return outcome.run_id


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.compare.report",
                                description="Compare two model versions from stored runs: HTML, JSON and CSV report.")
    p.add_argument("--run", type=int, help="a stored paired run (both versions)")
    p.add_argument("--versions", nargs=2, default=None, metavar=("A", "B"),
                   help="the two versions to compare, A then B (default: the run's first two; fresh runs: 1 2)")
    p.add_argument("--run-a", type=int, help="two stored runs: run of side A")
    p.add_argument("--version-a")
    p.add_argument("--run-b", type=int, help="two stored runs: run of side B")
    p.add_argument("--version-b")
    p.add_argument("--fresh", action="store_true", help="run a fresh paired benchmark first, then report on it")
    p.add_argument("--image-set", choices=["samples", "generated", "folder"], default="generated")
    p.add_argument("--seed", type=int, default=0, help="seed of a generated image set")
    p.add_argument("--count", type=int, default=8, help="images of a generated set")
    p.add_argument("--folder", help="dataset folder (--image-set folder)")
    p.add_argument("--max-side", type=int, default=1024, help="longest image side sent (px)")
    p.add_argument("--requests", type=int, default=16, help="measured requests per version")
    p.add_argument("--warmup", type=int, default=1, help="warm-up requests per version")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--url", help="Triton server (default: QWEN_TRITON_URL, else the embedded server)")
    p.add_argument("--protocol", choices=["http", "grpc"])
    p.add_argument("--data-dir", help="where the run store lives (default: QWEN_DATA_DIR, else data/)")
    p.add_argument("--gallery", type=int, default=GALLERY_SIZE, help="images in the disagreement gallery")
    p.add_argument("--out", required=True, help="folder to write the report into")
    args = p.parse_args(argv)

    with RunStore(args.data_dir) as store:
        if args.fresh:
            args.versions = args.versions or ["1", "2"]
            c = compare_run(store, fresh_run(store, args), args.versions)
        elif args.run is not None:
            c = compare_run(store, args.run, args.versions)
        elif None not in (args.run_a, args.version_a, args.run_b, args.version_b):
            c = build_comparison(store, (args.run_a, args.version_a), (args.run_b, args.version_b))
        else:
            p.error("give --run, or --run-a/--version-a/--run-b/--version-b, or --fresh")
        paths = write_report(store, c, args.out, gallery_size=args.gallery)
    for line in c.verdict.lines:
        print(line)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
