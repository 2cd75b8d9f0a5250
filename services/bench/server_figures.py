"""The server's own timings of a run, as the Benchmark page shows them (no streamlit here).

- :func:`server_timings_frame`: per version and metric, the client's median beside the server's
  p50 / p90 / p99 / mean (``vllm:*`` histograms over the measured window, as stored in the run
  store's ``server_timings``: :mod:`services.bench.server_timings`);
- :func:`server_timing_notes`: why the server's timings are unknown, and where bursts make the
  client's TTFT / TPOT unreliable;
- :func:`generation_rate_figure`: generated tokens per second over time per version
  (``vllm:generation_tokens_total`` between successive readings);
- :func:`server_percentile_figure`: the server's TTFT and TPOT p50 / p90 / p99 per version over time,
  each point over the observations between two successive readings (interpolated in the buckets as
  Prometheus' ``histogram_quantile`` does);
- :func:`server_load_figure`: the KV-cache usage (%) and requests running / waiting per version (variant)
  over time (``vllm:kv_cache_usage_perc``, ``vllm:num_requests_*``: a standalone ``vllm serve``'s gauges,
  read by the sampler under each variant's key).

Inputs: the run store's ``samples_frame`` (rows with ``value``: the ``vllm:*`` series) and
``get_server_timings``; time axes in seconds since ``t0`` (``perf_counter``), like the other charts.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from services.bench.figures import FIGURE_HEIGHT, _as_dict, _empty_note, _layout, _natural, _round
from services.bench.sample_series import sample_rows
from services.bench.server_timings import (
    GENERATION_TOKENS,
    HISTOGRAM_METRICS,
    NO_HISTOGRAMS,
    histogram_delta,
    histogram_from,
    histogram_quantile,
)
from services.bench.stats import bursts_unreliable
from services.core.versions import version_label
from services.detect.figures import version_color

CLIENT_MEDIAN = {"ttft": "ttft_p50_ms", "tpot": "tpot_p50_ms", "e2e": "p50_ms"}
SERVER_COLUMNS = ["version", "metric", "client p50 (ms)", "server p50 (ms)", "server p90 (ms)", "server p99 (ms)",
                  "server mean (ms)", "server n"]
QUANTILE_DASH = {0.5: "solid", 0.9: "dash", 0.99: "dot"}


def server_timings_frame(rows: Sequence[Mapping[str, Any]], summaries: Mapping[str, Any]) -> pd.DataFrame:
    """One row per version and metric: the client's median beside the server's numbers (empty when the
    server's are unknown). ``rows``: ``RunStore.get_server_timings``; ``summaries``: version ->
    ``VersionSummary`` (or its dict)."""
    out = []
    for r in sorted(rows, key=lambda r: (_natural(r["version"]), list(HISTOGRAM_METRICS).index(r["metric"]))):
        client = _as_dict(summaries.get(r["version"], {})).get(CLIENT_MEDIAN[r["metric"]])
        out.append({"version": version_label(str(r["version"])), "metric": HISTOGRAM_METRICS[r["metric"]][1],
                    "client p50 (ms)": _round(client), "server p50 (ms)": _round(r["p50_ms"]),
                    "server p90 (ms)": _round(r["p90_ms"]), "server p99 (ms)": _round(r["p99_ms"]),
                    "server mean (ms)": _round(r["mean_ms"]), "server n": int(r["count"])})
    return pd.DataFrame(out, columns=SERVER_COLUMNS)


def server_timing_notes(rows: Sequence[Mapping[str, Any]], summaries: Mapping[str, Any],
                        run_summary: Any) -> list[str]:
    """Why the server's timings are unknown; per version whose requests arrived in bursts on a
    meaningful share, that its client-side TTFT / TPOT are unreliable and which numbers to read."""
    notes = []
    if not rows:
        recorded = (run_summary.get("server_timings") or {}) if isinstance(run_summary, dict) else {}
        notes.append(f"Server-side timings: {recorded.get('reason') or 'unknown (none recorded with this run)'}.")
    for v in sorted(summaries, key=_natural):
        s = _as_dict(summaries[v])
        if bursts_unreliable(int(s.get("bursty") or 0), int(s.get("burst_judged") or 0)):
            where = "read the server's numbers" if any(r["version"] == v for r in rows) else \
                "and the server's are unknown"
            notes.append(f"{version_label(str(v))}: {s.get('bursty')} of {s.get('burst_judged')} requests arrived "
                         f"in bursts: its client-side TTFT and TPOT are unreliable; {where}.")
    return notes


def _readings(samples: pd.DataFrame) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """The ``vllm:*`` rows of a samples frame as ``{version: [(t_mono, {kind: value}), ...]}`` by time."""
    if samples is None or samples.empty or "value" not in samples:
        return {}
    df = samples[samples["kind"].astype(str).str.startswith("vllm:") & samples["value"].notna()
                 & samples["version"].notna()]
    out: dict[str, list[tuple[float, dict[str, float]]]] = {}
    for (version, t), g in df.groupby(["version", "t_mono"], sort=True):
        out.setdefault(str(version), []).append((float(t), dict(zip(g["kind"], g["value"].astype(float)))))
    return out


def generation_rate_figure(samples: pd.DataFrame, t0: float | None = None, height: int = FIGURE_HEIGHT) -> go.Figure:
    """Generated tokens per second per version over time (the counter's rise between two readings)."""
    fig = go.Figure()
    for version, readings in sorted(_readings(samples).items(), key=lambda kv: _natural(kv[0])):
        xs, ys = [], []
        for (ta, a), (tb, b) in zip(readings, readings[1:]):
            if GENERATION_TOKENS in a and GENERATION_TOKENS in b and tb > ta and b[GENERATION_TOKENS] >= a[GENERATION_TOKENS]:
                xs.append(round(tb - (t0 or 0.0), 3))
                ys.append(round((b[GENERATION_TOKENS] - a[GENERATION_TOKENS]) / (tb - ta), 2))
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=version_label(version),
                                     line={"color": version_color(version)},
                                     hovertemplate="%{x:.1f} s: %{y:,.1f} tokens/s<extra></extra>"))
    _layout(fig, "Generated tokens/s (server, vllm:generation_tokens_total)", "tokens/s", height)
    if not fig.data:
        _empty_note(fig, NO_HISTOGRAMS)
    return fig


def server_percentile_figure(samples: pd.DataFrame, t0: float | None = None,
                             height: int = FIGURE_HEIGHT) -> go.Figure:
    """The server's TTFT (left) and TPOT (right) p50 / p90 / p99 per version over time (ms)."""
    keys = ("ttft", "tpot")
    fig = make_subplots(rows=1, cols=2, subplot_titles=[HISTOGRAM_METRICS[k][1] for k in keys])
    for version, readings in sorted(_readings(samples).items(), key=lambda kv: _natural(kv[0])):
        for col, key in enumerate(keys, start=1):
            name = HISTOGRAM_METRICS[key][0]
            points: dict[float, list[tuple[float, float]]] = {q: [] for q in QUANTILE_DASH}
            for (_, a), (tb, b) in zip(readings, readings[1:]):
                hb = histogram_from(b, name)
                h = None if hb is None else histogram_delta(histogram_from(a, name), hb)
                if h is None or h.count <= 0:
                    continue
                for q in QUANTILE_DASH:
                    value = histogram_quantile(q, h)
                    if value is not None:
                        points[q].append((round(tb - (t0 or 0.0), 3), round(value * 1e3, 3)))
            for q, pts in points.items():
                if pts:
                    fig.add_trace(go.Scatter(
                        x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                        name=f"{version_label(version)} p{q * 100:g}", legendgroup=version, showlegend=col == 1,
                        line={"color": version_color(version), "dash": QUANTILE_DASH[q]},
                        hovertemplate=f"p{q * 100:g} %{{y:.2f}} ms at %{{x:.1f}} s<extra></extra>"), row=1, col=col)
    _layout(fig, "Server-side percentiles per reading interval (vllm:* histograms)", "ms", height)
    if not fig.data:
        _empty_note(fig, NO_HISTOGRAMS)
    return fig


KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM before 0.10
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
NO_LOAD_SERIES = "no KV-cache or queue series: the servers publish no vllm:kv_cache_usage_perc / num_requests_*"


def live_series_frame(samples: Sequence[Any]) -> pd.DataFrame:
    """The ``vllm:*`` readings among sampler samples (``services.bench.sample_series.Sample``, a thinned
    list too) as the run store's samples frame has them, each reading once at the time it was taken:
    what :func:`server_load_figure` charts while a run goes on."""
    seen: set[float] = set()
    out = []
    for s in samples:
        read_at = s.t_mono if s.metrics_t_mono is None else s.metrics_t_mono
        if not s.metrics or read_at in seen:
            continue
        seen.add(read_at)
        out += [{"t_mono": r.t_mono, "kind": r.kind, "version": r.version, "value": r.value}
                for r in sample_rows(s, carried=True) if r.value is not None]
    return pd.DataFrame(out, columns=["t_mono", "kind", "version", "value"])


def server_load_figure(samples: pd.DataFrame, t0: float | None = None, height: int = FIGURE_HEIGHT) -> go.Figure:
    """Per version (variant), the server's KV-cache usage in % (left) and its requests running (solid) and
    waiting (dotted) over time (right), from the ``vllm:*`` gauges each reading carries (a standalone
    ``vllm serve`` publishes them; Triton's vLLM backend may not)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["KV-cache usage (%)", "requests running / waiting"])
    for version, readings in sorted(_readings(samples).items(), key=lambda kv: _natural(kv[0])):
        color, name = version_color(version), version_label(version)
        series = [(KV_USAGE, 1, "", 100.0, "solid"), (RUNNING, 2, " running", 1.0, "solid"),
                  (WAITING, 2, " waiting", 1.0, "dot")]
        for metric, col, suffix, scale, dash in series:
            pts = [(round(t - (t0 or 0.0), 3), r.get(metric, r.get(KV_USAGE_OLD) if metric == KV_USAGE else None))
                   for t, r in readings]
            pts = [(x, y * scale) for x, y in pts if y is not None]
            if pts:
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines", name=f"{name}{suffix or ' KV'}",
                    legendgroup=version, line={"color": color, "dash": dash, "shape": "hv"},
                    hovertemplate=f"{name}{suffix} %{{y:.1f}} at %{{x:.1f}} s<extra></extra>"), row=1, col=col)
    _layout(fig, "Server load per variant (vllm:* gauges)", None, height)
    if not fig.data:
        _empty_note(fig, NO_LOAD_SERIES)
    return fig
