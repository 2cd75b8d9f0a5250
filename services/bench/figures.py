"""Plotly figures and tables of a benchmark run (the Benchmark page draws them; no streamlit here).

Inputs are the shapes the services already produce:

- memory: sampler samples (``services.bench.sample_series.Sample``), stored rows (``SampleRow``) or
  the run store's ``samples_frame`` (columns of ``SampleRow``), turned into the long chart frame of
  :func:`services.bench.sample_series.series_for_chart` by :func:`memory_chart_frame`;
- requests: the run store's ``requests_frame`` (one row per request, ``*_ns`` stamps on the
  ``perf_counter`` clock, ``warmup`` 0/1, ``status`` ok/error);
- summaries: ``services.bench.stats.VersionSummary`` objects (or their dicts) per version.

Time axes are seconds since ``t0``, a ``time.perf_counter()`` value (the clock of both the
requests' ``*_ns`` stamps and the samples' ``t_mono``), so that the memory, latency and throughput
charts of one run line up. :func:`run_t0` picks it for a stored run.

Memory charts show, where the source allows: the used memory of each GPU (NVML, else Triton's
metric), the GPU memory of the processes serving each model version, and each version's weight
bytes as the server reports them (dotted). Without any GPU reading (the CPU demo) they show the
resident host memory of the serving processes instead, and say so in the title and the axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from services.bench.stats import memory_summary
from services.core.versions import version_label
from services.detect.figures import version_color
from services.bench.sample_series import CHART_COLUMNS, Sample, SampleRow, series_for_chart
from services.bench.triton_metrics import parse_series_key
from services.core.units import memory_unit
DEFAULT_ROLLING = 10  # requests in the rolling median
SERVER_COLOR = "#495057"
OTHER_COLOR = "#adb5bd"
GPU_COLORS = ("#2b8a3e", "#862e9c", "#0b7285", "#5f3dc4", "#e67700", "#c2255c", "#364fc7", "#087f5b")
FAIL_COLOR = "#e03131"
WEIGHT_METRIC = "qwen_engine_weight_bytes"
FIGURE_HEIGHT = 340

SAMPLE_FIELDS = ["t_wall", "t_mono", "source", "kind", "memory_bytes", "gpu", "model", "version",
                 "utilization", "pid"]

# The summary's two tables: narrow columns, the unit in each header (min, max and TTFT p99 are in the exports).
SUMMARY_COLUMNS = [
    "version", "count", "failures", "warm-up", "p50 (ms)", "p90 (ms)", "p99 (ms)", "mean (ms)",
    "TTFT p50 (ms)", "TPOT (ms)", "req/s", "tok/s",
]
MEMORY_FIELDS = ("baseline", "peak", "delta")


# --------------------------------------------------------------------------- memory


def memory_chart_frame(samples: Iterable[Sample | SampleRow] | pd.DataFrame | None) -> pd.DataFrame:
    """The long chart frame (``gpu_sampler.CHART_COLUMNS``) of sampler samples, stored rows or
    the run store's ``samples_frame``."""
    if samples is None:
        return pd.DataFrame(columns=CHART_COLUMNS)
    if isinstance(samples, pd.DataFrame):
        if samples.empty:
            return pd.DataFrame(columns=CHART_COLUMNS)
        rows = [
            SampleRow(**{k: _none(rec.get(k)) for k in SAMPLE_FIELDS})
            for rec in samples.to_dict("records")
        ]
        return series_for_chart(rows)
    return series_for_chart(samples)


def _none(value: Any) -> Any:
    """NaN/NA (pandas' missing values) as None; numpy scalars as Python values."""
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class MemorySeries:
    """One line of a memory chart."""

    key: tuple
    name: str  # legend label
    group: str  # "device", "version", "server", "other", "weights"
    color: str
    dash: str  # plotly line dash
    frame: pd.DataFrame  # t_mono, memory_bytes, time (one row per time)
    width: float = 2.0


# Versions' lines often coincide (same process sizes): the first is drawn wide and solid, the next ones
# narrower and dashed on top of it, so that each stays visible; the legend shows each style.
VERSION_LINES = (("solid", 4.5), ("dash", 2.0), ("dot", 2.0), ("dashdot", 2.0))
WEIGHT_DASHES = ("dot", "dashdot", "longdashdot", "longdash")


def version_line(index: int) -> tuple[str, float]:
    """(dash, width) of the ``index``-th version line of a chart (:data:`VERSION_LINES`)."""
    return VERSION_LINES[index % len(VERSION_LINES)]


def _version_name(model: str | None, version: str | None) -> str:
    return version_label(version) if version is not None else (model or "other")


def memory_series(chart: pd.DataFrame, include_host: bool | None = None) -> tuple[list[MemorySeries], str]:
    """The lines a memory chart draws, and which memory they are (``"gpu"`` or ``"host"``).

    GPU lines: each GPU's used memory (``kind == "device"``; NVML preferred, Triton's metric when
    NVML gave nothing), then the GPU memory of each served version's processes (summed over GPUs
    and instances), tritonserver's own, and unattributed processes. Host lines (resident memory, PSS, of
    the serving processes per version) are used when there is no GPU reading, or when
    ``include_host`` is True. Weight gauges (``qwen_engine_weight_bytes``, part ``model``) are drawn
    dotted per version in either case.
    """
    out: list[MemorySeries] = []
    if chart is None or chart.empty:
        return out, "host" if include_host else "gpu"
    df = chart.dropna(subset=["memory_bytes"])
    device = df[df["kind"] == "device"]
    if not device.empty and (device["source"] == "nvml").any():
        device = device[device["source"] == "nvml"]
    procs_gpu = df[df["kind"] == "gpu"]
    has_gpu = not device.empty or not procs_gpu.empty
    use_host = (not has_gpu) if include_host is None else include_host
    mode = "gpu" if has_gpu else "host"

    def summed(frame: pd.DataFrame) -> pd.DataFrame:
        return (frame.groupby("t_mono", as_index=False)
                .agg(memory_bytes=("memory_bytes", "sum"), time=("time", "first"))
                .sort_values("t_mono"))

    if has_gpu:
        gpus = sorted(device["gpu"].dropna().unique(), key=_natural)
        for i, gpu in enumerate(gpus):
            name = f"GPU {gpu} used (all processes)" if str(gpu).isdigit() else f"GPU {str(gpu)[:12]} used"
            out.append(MemorySeries(("device", gpu), name, "device", GPU_COLORS[i % len(GPU_COLORS)], "solid",
                                    summed(device[device["gpu"] == gpu])))
        out += _process_lines(procs_gpu, summed, "GPU memory")
    if use_host:
        out += _process_lines(df[df["kind"] == "host"], summed, "host memory (PSS)" if has_gpu else "host memory")
    out += _weight_lines(df, summed)
    return out, mode


def _natural(value: Any) -> tuple:
    text = str(value)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _process_lines(procs: pd.DataFrame, summed: Any, what: str) -> list[MemorySeries]:
    if procs.empty:
        return []
    out: list[MemorySeries] = []
    keyed = procs.assign(_model=procs["model"].fillna(""), _version=procs["version"].fillna(""))
    groups = sorted(keyed.groupby(["_model", "_version"]).groups, key=lambda k: (k[1] == "", k[0] == "server", k))
    n_versions = 0
    for model, version in groups:
        part = keyed[(keyed["_model"] == model) & (keyed["_version"] == version)]
        dash, width = "solid", 2.0
        if version:
            name, group, color = f"{_version_name(model, version)} {what}", "version", version_color(version)
            dash, width = version_line(n_versions)
            n_versions += 1
        elif model == "server":
            name, group, color = f"tritonserver {what}", "server", SERVER_COLOR
        else:
            name, group, color = f"other processes {what}", "other", OTHER_COLOR
        out.append(MemorySeries((what, model, version), name, group, color, dash, summed(part), width))
    return out


def _weight_lines(df: pd.DataFrame, summed: Any) -> list[MemorySeries]:
    out: list[MemorySeries] = []
    gauges = df[df["kind"].astype(str).str.startswith(WEIGHT_METRIC)]
    if gauges.empty:
        return out
    parts = gauges["kind"].map(lambda k: parse_series_key(k)[1])
    gauges = gauges.assign(_part=parts.map(lambda lab: lab.get("part")),
                           _precision=parts.map(lambda lab: lab.get("precision", "")))
    gauges = gauges[gauges["_part"].isin(["model", None])]
    for i, version in enumerate(sorted(gauges["version"].dropna().unique(), key=_natural)):
        part = gauges[gauges["version"] == version]
        precision = next((p for p in part["_precision"] if p), "")
        name = f"{version_label(version)} weights" + (f" ({precision})" if precision else "")
        out.append(MemorySeries(("weights", version), name, "weights", version_color(version),
                                WEIGHT_DASHES[i % len(WEIGHT_DASHES)], summed(part.drop_duplicates(["t_mono", "gpu"])),
                                3.0 if i == 0 else 2.0))
    return out


def memory_figure(
    chart: pd.DataFrame,
    t0: float | None = None,
    title: str | None = None,
    include_host: bool | None = None,
    height: int = FIGURE_HEIGHT,
) -> go.Figure:
    """Memory over time: one line per GPU / version (see :func:`memory_series`).

    ``chart``: :func:`memory_chart_frame` output. x: seconds since ``t0`` (the first sample when
    None). An empty frame gives an empty figure that says there are no readings yet.
    """
    series, mode = memory_series(chart, include_host)
    if t0 is None and chart is not None and not chart.empty:
        t0 = float(chart["t_mono"].min())
    peak = max((float(s.frame["memory_bytes"].max()) for s in series if not s.frame.empty), default=0.0)
    div, unit = memory_unit(peak)
    fig = go.Figure()
    for s in series:
        x = (s.frame["t_mono"] - (t0 or 0.0)).round(3)
        y = (s.frame["memory_bytes"] / div).round(3)
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines", name=s.name, line={"color": s.color, "dash": s.dash, "width": s.width},
            hovertemplate=f"{s.name}<br>%{{x:.1f}} s: %{{y:,.2f}} {unit}<extra></extra>",
            meta={"group": s.group},
        ))
    what = "GPU memory" if mode == "gpu" else "Host memory (RSS) of the serving processes — no GPU reading"
    _layout(fig, title or what, f"{'GPU' if mode == 'gpu' else 'host'} memory ({unit})", height)
    if not series:
        _empty_note(fig, "no memory readings yet")
    return fig


# --------------------------------------------------------------------------- requests


def requests_chart_frame(requests: pd.DataFrame | None, t0: float | None = None) -> pd.DataFrame:
    """The run store's ``requests_frame`` with ``t_s`` (seconds since ``t0`` at which the request
    finished: ``recv_ns``, else ``send_ns``), ``latency`` (ms), ``ok`` and ``warmup`` as booleans,
    sorted by ``t_s``. ``t0``: the earliest ``send_ns`` when None."""
    cols = ["seq", "version", "warmup", "send_ns", "recv_ns", "latency_ms", "output_tokens", "status",
            "error", "image_id"]
    if requests is None or requests.empty:
        return pd.DataFrame(columns=[*cols, "t_s", "latency", "ok"])
    df = requests.copy()
    for c in cols:
        if c not in df.columns:
            df[c] = None
    df["version"] = df["version"].astype(str)
    df["warmup"] = df["warmup"].fillna(0).astype(bool)
    df["ok"] = df["status"] == "ok"
    send = pd.to_numeric(df["send_ns"], errors="coerce")
    recv = pd.to_numeric(df["recv_ns"], errors="coerce")
    end_s = recv.fillna(send) / 1e9
    latency = pd.to_numeric(df["latency_ms"], errors="coerce")
    df["latency"] = latency.fillna((recv - send) / 1e6)
    if end_s.notna().any():
        base = t0 if t0 is not None else float((send / 1e9).min(skipna=True)) if send.notna().any() else float(end_s.min())
        df["t_s"] = (end_s - base).round(4)
        df["t_s"] = df["t_s"].fillna(df["seq"].astype(float))
    else:  # no stamps at all: place requests by their order
        df["t_s"] = np.arange(len(df), dtype=float)
    return df.sort_values(["t_s", "seq"], kind="stable").reset_index(drop=True)


def rolling_median(values: Sequence[float] | pd.Series, window: int = DEFAULT_ROLLING) -> pd.Series:
    """Median of the last ``window`` values at each position (fewer at the start)."""
    return pd.Series(values, dtype=float).rolling(window, min_periods=1).median()


def latency_figure(
    requests: pd.DataFrame | None,
    t0: float | None = None,
    window: int = DEFAULT_ROLLING,
    height: int = FIGURE_HEIGHT,
) -> go.Figure:
    """Latency of every request (markers) and the rolling median of the last ``window`` successful
    measured requests (line) per version; warm-up requests hollow and grey-edged, failures as red
    crosses (at their latency, else at 0) with the error in the hover."""
    df = requests_chart_frame(requests, t0)
    fig = go.Figure()
    for version in sorted(df["version"].unique(), key=_natural):
        v = df[df["version"] == version]
        color, label = version_color(version), version_label(version)
        measured = v[v["ok"] & ~v["warmup"]]
        warm = v[v["ok"] & v["warmup"]]
        failed = v[~v["ok"]]
        fig.add_trace(go.Scatter(
            x=measured["t_s"], y=measured["latency"].round(3), mode="markers", name=f"{label} requests",
            marker={"color": color, "size": 7, "opacity": 0.75}, customdata=measured[["seq"]].to_numpy(),
            hovertemplate=f"{label} #%{{customdata[0]}}<br>%{{x:.2f}} s: %{{y:,.1f}} ms<extra></extra>",
            legendgroup=version,
        ))
        if not measured.empty:
            fig.add_trace(go.Scatter(
                x=measured["t_s"], y=rolling_median(measured["latency"], window).round(3).to_numpy(),
                mode="lines", name=f"{label} rolling median ({window})", line={"color": color, "width": 2.5},
                hovertemplate=f"{label} median of last {window}: %{{y:,.1f}} ms<extra></extra>",
                legendgroup=version,
            ))
        if not warm.empty:
            fig.add_trace(go.Scatter(
                x=warm["t_s"], y=warm["latency"].round(3), mode="markers", name=f"{label} warm-up (not counted)",
                marker={"color": "rgba(0,0,0,0)", "size": 8, "line": {"color": color, "width": 1.5}},
                hovertemplate=f"{label} warm-up<br>%{{x:.2f}} s: %{{y:,.1f}} ms<extra></extra>",
                legendgroup=version,
            ))
        if not failed.empty:
            errors = failed["error"].fillna("failed").astype(str).str.slice(0, 200)
            fig.add_trace(go.Scatter(
                x=failed["t_s"], y=failed["latency"].fillna(0.0).round(3), mode="markers",
                name=f"{label} failed ({len(failed)})",
                marker={"color": FAIL_COLOR, "symbol": "x", "size": 9, "line": {"color": color, "width": 1}},
                customdata=np.stack([failed["seq"].to_numpy(), errors.to_numpy()], axis=1),
                hovertemplate=f"{label} #%{{customdata[0]}} failed: %{{customdata[1]}}<extra></extra>",
                legendgroup=version,
            ))
    _layout(fig, "Latency per request (when it finished)", "latency (ms)", height)
    if df.empty:
        _empty_note(fig, "no requests finished yet")
    return fig


def throughput_frame(requests: pd.DataFrame | None, t0: float | None = None,
                     bin_s: float | None = None) -> pd.DataFrame:
    """Requests and output tokens per second per version in time bins of successful measured
    requests, by the time they finished. Columns: version, t_s (bin end), bin_s (its width),
    req_per_s, tok_per_s. ``bin_s``: :func:`throughput_bin_s` when None."""
    df = requests_chart_frame(requests, t0)
    df = df[df["ok"] & ~df["warmup"]] if not df.empty else df
    cols = ["version", "t_s", "bin_s", "req_per_s", "tok_per_s"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    start, end = min(0.0, float(df["t_s"].min())), float(df["t_s"].max())
    if bin_s is None:
        bin_s = throughput_bin_s(end - start, int(df.groupby("version").size().min()))
    edges = np.arange(start, end + bin_s, bin_s)
    if len(edges) < 2:
        edges = np.array([start, start + bin_s])
    rows = []
    for version in sorted(df["version"].unique(), key=_natural):
        v = df[df["version"] == version]
        idx = np.clip(np.searchsorted(edges, v["t_s"].to_numpy(dtype=float), side="left") - 1, 0, len(edges) - 2)
        counts = np.bincount(idx, minlength=len(edges) - 1)
        tokens = np.bincount(idx, weights=pd.to_numeric(v["output_tokens"], errors="coerce").fillna(0).to_numpy(),
                             minlength=len(edges) - 1)
        last = int(idx.max())  # no trailing empty bins after the version's last request
        for i in range(last + 1):
            rows.append((version, round(float(edges[i + 1]), 3), float(bin_s), counts[i] / bin_s,
                         tokens[i] / bin_s))
    return pd.DataFrame(rows, columns=cols)


def throughput_bin_s(span_s: float, n: int) -> float:
    """Whole seconds per throughput bin over ``span_s`` seconds holding ``n`` requests (of the
    sparsest version): 1 s, wider so that there are at most about 60 bins, and wider again so that
    a bin holds about 5 requests on average, but never fewer than 4 bins."""
    if span_s <= 0 or n <= 0:
        return 1.0
    return float(max(1.0, np.ceil(max(span_s / 60.0, min(5.0 * span_s / n, span_s / 4.0)))))


def throughput_figure(requests: pd.DataFrame | None, t0: float | None = None, bin_s: float | None = None,
                      height: int = FIGURE_HEIGHT + 60) -> go.Figure:
    """Finished requests per second (top) and output tokens per second (bottom) per version, in
    time bins (see :func:`throughput_frame`)."""
    tp = throughput_frame(requests, t0, bin_s)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("requests / s", "output tokens / s"))
    for version in sorted(tp["version"].unique(), key=_natural):
        v = tp[tp["version"] == version]
        color, label = version_color(version), version_label(version)
        mid = (v["t_s"] - v["bin_s"] / 2).round(3)  # a bar spans its bin
        span = np.stack([(v["t_s"] - v["bin_s"]).round(1).to_numpy(), v["t_s"].round(1).to_numpy()], axis=1)
        for row, col, unit, fmt in ((1, "req_per_s", "req/s", ".2f"), (2, "tok_per_s", "tok/s", ".1f")):
            fig.add_trace(go.Bar(
                x=mid, y=v[col].round(3), name=label if row == 1 else f"{label} tokens", showlegend=row == 1,
                marker={"color": color}, legendgroup=version, customdata=span,
                hovertemplate=f"{label}: %{{y:{fmt}}} {unit} from %{{customdata[0]}} to %{{customdata[1]}} s"
                              "<extra></extra>",
            ), row=row, col=1)
    fig.update_layout(barmode="group", bargap=0.15)
    _layout(fig, "Throughput", None, height)
    if tp.empty:
        _empty_note(fig, "no measured request finished yet")
    return fig


# --------------------------------------------------------------------------- summary table


@dataclass(frozen=True)
class VersionMemory:
    """Baseline, peak and delta of the memory attributed to one version in a run (bytes)."""

    version: str
    baseline_bytes: int
    peak_bytes: int
    delta_bytes: int
    measured: str  # which memory: "GPU memory of its processes", "host memory of its processes (PSS...)", ...


def version_memory(
    samples: pd.DataFrame | Iterable[Sample | SampleRow] | None,
    versions: Sequence[str],
    first_request_t: float | None = None,
) -> dict[str, VersionMemory]:
    """Memory baseline/peak/delta per version (``bench_stats.memory_summary`` over the version's
    series), preferring, per version: the GPU memory of its processes (summed over GPUs and
    instances), else their host memory (PSS), else the used memory of all GPUs (not specific to the
    version, and said so). ``first_request_t``: ``perf_counter`` seconds of the first request, the
    baseline is the last reading before it."""
    chart = samples if isinstance(samples, pd.DataFrame) and "label" in samples.columns else memory_chart_frame(samples)
    out: dict[str, VersionMemory] = {}
    if chart.empty:
        return out
    for version in versions:
        version = str(version)
        for kind, measured in (("gpu", "GPU memory of its processes"),
                               ("host", "host memory of its processes (PSS: shared pages once)")):
            part = chart[(chart["kind"] == kind) & (chart["version"].astype(str) == version)]
            if not part.empty:
                break
        else:
            device = chart[chart["kind"] == "device"]
            if not device.empty and (device["source"] == "nvml").any():
                device = device[device["source"] == "nvml"]
            part, measured = device, "used memory of all GPUs (not per version)"
        if part.empty:
            continue
        frame = part.assign(source="x", kind="x", gpu=None, model=None, version=version)
        summ = memory_summary(frame, first_request_t=first_request_t)
        if summ:
            s = summ[0]
            out[version] = VersionMemory(version, s.baseline_bytes, s.peak_bytes, s.delta_bytes, measured)
    return out


def _as_dict(summary: Any) -> dict[str, Any]:
    if summary is None:
        return {}
    if is_dataclass(summary) and not isinstance(summary, type):
        return asdict(summary)
    return dict(summary)


def _round(value: Any, nd: int = 2) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else round(f, nd)


def summary_frame(summaries: Mapping[str, Any]) -> pd.DataFrame:
    """One row per version (:data:`SUMMARY_COLUMNS`): count, failures, warm-up, latency p50/p90/p99
    and mean, TTFT p50, TPOT mean, req/s and tok/s. The versions' notes are :func:`summary_notes`;
    memory is :func:`memory_frame`.

    ``summaries``: version -> ``bench_stats.VersionSummary`` (or its dict)."""
    rows = []
    for version in sorted(summaries, key=_natural):
        s = _as_dict(summaries[version])
        rows.append({
            "version": version_label(str(version)),
            "count": int(s.get("count") or 0),
            "failures": int(s.get("failures") or 0),
            "warm-up": int(s.get("warmup") or 0),
            "p50 (ms)": _round(s.get("p50_ms"), 1),
            "p90 (ms)": _round(s.get("p90_ms"), 1),
            "p99 (ms)": _round(s.get("p99_ms"), 1),
            "mean (ms)": _round(s.get("mean_ms"), 1),
            "TTFT p50 (ms)": _round(s.get("ttft_p50_ms"), 1),
            "TPOT (ms)": _round(s.get("tpot_mean_ms")),
            "req/s": _round(s.get("requests_per_s"), 3),
            "tok/s": _round(s.get("output_tokens_per_s"), 1),
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def summary_notes(summaries: Mapping[str, Any]) -> list[str]:
    """Each version's notes, named: ``"fp8 (v2): 3 of 10 measured requests failed"``."""
    return [f"{version_label(str(v))}: {note}" for v in sorted(summaries, key=_natural)
            for note in (_as_dict(summaries[v]).get("notes") or [])]


def memory_columns(unit: str) -> list[str]:
    """The memory table's columns, its unit in the headers."""
    return ["version", *(f"{f} ({unit})" for f in MEMORY_FIELDS), "what was measured"]


def memory_frame(memory: Mapping[str, VersionMemory]) -> pd.DataFrame:
    """One row per version with memory readings: baseline, peak and delta in one binary unit
    (:func:`services.core.units.memory_unit` of the largest), and which memory that is. Empty
    when no version has any (the page then says why instead)."""
    top = max((abs(b) for m in memory.values() for b in (m.baseline_bytes, m.peak_bytes, m.delta_bytes)), default=0)
    div, unit = memory_unit(top)
    rows = [[version_label(v), *(round(getattr(memory[v], f"{f}_bytes") / div, 2) for f in MEMORY_FIELDS),
             memory[v].measured] for v in sorted(memory, key=_natural)]
    return pd.DataFrame(rows, columns=memory_columns(unit))


# --------------------------------------------------------------------------- run helpers


def run_t0(requests: pd.DataFrame | None, samples: pd.DataFrame | None = None) -> float | None:
    """The start of a stored run on the ``perf_counter`` clock: its first request's send time,
    or its first sample when that is earlier (or there is no request)."""
    candidates = []
    if requests is not None and not requests.empty and "send_ns" in requests:
        send = pd.to_numeric(requests["send_ns"], errors="coerce").dropna()
        if not send.empty:
            candidates.append(float(send.min()) / 1e9)
    if samples is not None and not samples.empty and "t_mono" in samples:
        candidates.append(float(samples["t_mono"].min()))
    return min(candidates) if candidates else None


def first_request_t(requests: pd.DataFrame | None) -> float | None:
    """``perf_counter`` seconds of the first measured (non-warm-up) request's send, else of any."""
    if requests is None or requests.empty or "send_ns" not in requests:
        return None
    send = pd.to_numeric(requests["send_ns"], errors="coerce")
    warm = requests["warmup"].fillna(0).astype(bool) if "warmup" in requests else pd.Series(False, index=requests.index)
    for sel in (send[~warm].dropna(), send.dropna()):
        if not sel.empty:
            return float(sel.min()) / 1e9
    return None


# --------------------------------------------------------------------------- shared layout


def _layout(fig: go.Figure, title: str, ytitle: str | None, height: int) -> None:
    """Shared look: title at the left, legend under the plot, x in seconds since the start
    (``" s"`` after each tick instead of an axis title the legend would cover)."""
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"}, height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 30},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0.0},
        hovermode="closest", uirevision="keep",  # zoom and hidden traces survive live updates
    )
    fig.update_xaxes(ticksuffix=" s", rangemode="tozero")
    fig.update_yaxes(rangemode="tozero")
    if ytitle:
        fig.update_yaxes(title_text=ytitle)


def _empty_note(fig: go.Figure, text: str) -> None:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font={"size": 14, "color": OTHER_COLOR})


# --------------------------------------------------------------------------- history and live helpers

STATUS_ICONS = {"running": "⏳", "completed": "✅", "partial": "⚠️", "failed": "❌", "cancelled": "⏹️"}
HISTORY_COLUMNS = ["run", "status", "reason", "started (UTC)", "finished (UTC)", "versions", "workload"]


def describe_config(config: Mapping[str, Any] | None) -> str:
    """A one-line description of a stored run's config: requests, warm-up, load, images, tokens."""
    c = dict(config or {})
    if not c:
        return ""
    parts = []
    if c.get("requests") is not None:
        parts.append(f"{c['requests']} req/version")
    if c.get("warmup"):
        parts.append(f"{c['warmup']} warm-up")
    if c.get("load") == "open":
        parts.append(f"open loop {c.get('rate')} req/s")
    elif c.get("load") == "closed":
        parts.append(f"closed loop ×{c.get('concurrency')}")
    images = c.get("image_set")
    if isinstance(images, Mapping) and images.get("kind"):
        kind = images["kind"]
        if kind == "generated":
            parts.append(f"generated images (seed {images.get('seed')}, {images.get('count')})")
        elif kind == "folder":
            parts.append(f"folder {images.get('folder')}")
        else:
            parts.append(f"{kind} images")
    if c.get("max_tokens") is not None:
        parts.append(f"max {c['max_tokens']} tokens")
    if c.get("stream") is not None:
        parts.append("streaming" if c["stream"] else "not streaming")
    return ", ".join(parts)


def short_time(text: str | None) -> str:
    if not text:
        return ""
    return str(text).replace("T", " ")[:19]


def history_frame(runs: Iterable[Any]) -> pd.DataFrame:
    """One row per stored run (``run_store.RunInfo``), newest first as given: id, status with its
    icon, reason, start and end, versions, and the workload (:func:`describe_config`)."""
    rows = []
    for r in runs:
        versions = (r.config or {}).get("versions") or []
        rows.append({
            "run": int(r.id),
            "status": f"{STATUS_ICONS.get(r.status, '')} {r.status}".strip(),
            "reason": r.reason or "",
            "started (UTC)": short_time(r.created_at),
            "finished (UTC)": short_time(r.finished_at),
            "versions": ", ".join(version_label(str(v)) for v in versions),
            "workload": describe_config(r.config),
        })
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def thin(items: Sequence[Any], max_points: int) -> list[Any]:
    """At most about ``max_points`` items spread evenly over ``items``, the last one always kept
    (live charts of long runs stay light)."""
    n = len(items)
    if max_points <= 0 or n <= max_points:
        return list(items)
    step = int(np.ceil(n / max_points))
    out = list(items[::step])
    if out[-1] is not items[-1]:
        out.append(items[-1])
    return out


def export_names(run_id: int, versions: Sequence[str]) -> list[str]:
    """The names of ``RunStore.export_files(run_id)`` for a run of these versions, in its order,
    known without building the files (the page builds them only when one is downloaded)."""
    names = []
    for v in versions:
        names += [f"latency_v{v}.json", f"memory_v{v}.csv"]
    return names + [f"run_{run_id}_requests.csv", f"run_{run_id}_samples.csv", f"run_{run_id}.json"]


def export_mime(name: str) -> str:
    """The MIME type of an export file, by its extension."""
    return "application/json" if name.endswith(".json") else "text/csv"
