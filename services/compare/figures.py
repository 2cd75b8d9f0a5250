"""The comparison's figures (plotly), shared by the Compare page and the HTML report.

:func:`cdf_figure` per latency metric, :func:`change_figure` (each difference in % of A with its 95 %
interval), :func:`memory_figure` (weights / KV room / rest per version), :func:`throughput_figure`,
:func:`accuracy_figure`, :func:`agreement_figure`, :func:`floor_figure`; :func:`figures` gives them
all by name, in page order. No streamlit here.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from services.compare.comparison import Comparison
from services.compare.decode_floor import DecodeFloor
from services.compare.differences import Difference
from services.compare.request_boxes import FOUND_IOU
from services.compare.speed import MetricComparison
from services.core.units import format_bytes, memory_unit as unit_for

A_COLOR = "#1f6feb"  # bf16 blue (services.detect.figures.VERSION_COLORS["1"])
B_COLOR = "#f76707"  # fp8 orange
UNKNOWN_COLOR = "#ced4da"
HEIGHT = 340


def side_colors(c: Comparison) -> tuple[str, str]:
    """The colours of A and B: each version's own colour (services.detect.figures), distinct sides."""
    try:
        from services.detect.figures import version_color

        ca, cb = (version_color(v, (c.a.version, c.b.version)) for v in (c.a.version, c.b.version))
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
        ci = f", {d.confidence * 100:.3g}% CI [{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo is not None else ""
        sub = f"median B−A {d.diff:+.2f} ms{ci}"
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return _layout(fig, title, "ms", "share of requests", height=HEIGHT + 60, subtitle=sub)


def change_figure(c: Comparison) -> go.Figure:
    """Each latency and throughput difference as % of A with its interval (0 = no change): 95 %, and
    98.3 % for the three timings the verdict judges together (:data:`services.compare.speed.TIMING_CONFIDENCE`)."""
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
    title = f"Change of {c.b.label} vs {c.a.label} (% of A; timings: 98.3% CIs, Bonferroni; throughput: 95%)"
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


def memory_unit(c: Comparison) -> tuple[float, str]:
    """GiB, or MiB when every known memory number is below 1 GiB (a small demo model):
    :func:`services.core.units.memory_unit`."""
    m = c.memory
    known = [abs(v) for s in (m.a, m.b) for v in (s.baseline_bytes, s.peak_bytes, s.weights_bytes, s.rest_bytes,
                                                   s.kv_room_bytes) if v is not None]
    return unit_for(max(known, default=0))


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
        ci = f", {d.confidence * 100:.3g}% CI [{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo is not None else ""
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
