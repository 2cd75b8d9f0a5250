"""The sweep's figures (plotly), shared by the Benchmark page's live sweep, its recorded sweep and the
HTML report: :func:`capacity_curve_figure` (throughput against p50 and p90 latency per version, the
end-to-end target drawn), :func:`goodput_figure` (goodput per level, throughput behind it) and
:func:`cost_figure` (cost per 1,000 images at capacity). No streamlit here.
"""

from __future__ import annotations

import plotly.graph_objects as go

from services.compare.capacity import SweepResult
from services.compare.figures import _empty, _layout
from services.detect.figures import version_color


def _load_title(result: SweepResult) -> str:
    return "concurrency" if result.load == "closed" else "request rate (req/s)"


def capacity_curve_figure(result: SweepResult) -> go.Figure:
    """Per version, throughput (x) against p50 (solid) and p90 (dotted) latency (y), one point per
    finished level, labelled with its load; the end-to-end target as a dashed line."""
    fig = go.Figure()
    for v, vc in result.versions.items():
        levels = [lv for lv in vc.levels if lv.finished and lv.stats.throughput_rps is not None]
        x = [lv.stats.throughput_rps for lv in levels]
        text = [f"{lv.value:g}" for lv in levels]
        for q, dash in (("p50", "solid"), ("p90", "dot")):
            fig.add_trace(go.Scatter(
                x=x, y=[getattr(lv.stats, f"{q}_ms") for lv in levels], mode="lines+markers+text", text=text,
                textposition="top center", name=f"{vc.label} {q}", line={"color": version_color(v), "dash": dash},
                hovertemplate=f"{vc.label} {q}: %{{y:.0f}} ms at %{{x:.2f}} req/s ({_load_title(result)} %{{text}})"
                              "<extra></extra>"))
    if result.targets.e2e_ms is not None:
        fig.add_hline(y=result.targets.e2e_ms, line_dash="dash", line_color="#c92a2a",
                      annotation_text=f"end-to-end target {result.targets.e2e_ms:g} ms",
                      annotation_position="top left")
    if not fig.data or not any(len(t.x or ()) for t in fig.data):
        return _empty(_layout(fig, "Capacity curves"), "no finished level yet")
    return _layout(fig, "Capacity curves: throughput against latency", "throughput (requests/s)",
                   "latency (ms)", subtitle=f"each point a level (labelled with its {_load_title(result)}); "
                                            "solid p50, dotted p90")


def goodput_figure(result: SweepResult) -> go.Figure:
    """Goodput (requests/s that met every target) per level and version, throughput as a faint bar."""
    fig = go.Figure()
    for v, vc in result.versions.items():
        levels = [lv for lv in vc.levels if lv.finished]
        x = [f"{lv.value:g}" + (f" #{lv.repeat + 1}" if lv.repeat else "") for lv in levels]
        fig.add_trace(go.Bar(x=x, y=[lv.stats.throughput_rps for lv in levels], name=f"{vc.label} throughput",
                             marker={"color": version_color(v), "opacity": 0.3}, offsetgroup=v))
        fig.add_trace(go.Bar(x=x, y=[lv.stats.goodput_rps for lv in levels], name=f"{vc.label} goodput",
                             marker={"color": version_color(v)}, offsetgroup=v,
                             hovertemplate=f"{vc.label} goodput %{{y:.2f}}/s at %{{x}}<extra></extra>"))
    if not any(len(t.x or ()) for t in fig.data):
        return _empty(_layout(fig, "Goodput per level"), "no finished level yet")
    fig.update_layout(barmode="overlay")
    return _layout(fig, "Goodput per level", _load_title(result), "requests/s",
                   subtitle=f"goodput: requests/s meeting every target ({result.targets.describe()})")


def cost_figure(result: SweepResult) -> go.Figure:
    """Cost per 1,000 images at each version's capacity (needs a price per GPU-hour)."""
    fig = go.Figure()
    vcs = [vc for vc in result.versions.values() if vc.cost_per_1k_images is not None]
    if not vcs:
        why = "set a price per GPU-hour" if result.price_per_gpu_hour is None else "no capacity above 0"
        return _empty(_layout(fig, "Cost per 1,000 images"), f"cost unknown: {why}")
    fig.add_trace(go.Bar(x=[vc.label for vc in vcs], y=[vc.cost_per_1k_images for vc in vcs],
                         marker={"color": [version_color(vc.version) for vc in vcs]},
                         text=[f"${vc.cost_per_1k_images:.4f}" for vc in vcs], textposition="outside",
                         showlegend=False))
    return _layout(fig, "Cost per 1,000 images at capacity", None, "dollars",
                   subtitle=f"at ${result.price_per_gpu_hour:g} per GPU-hour")


def sweep_figures(result: SweepResult) -> dict[str, go.Figure]:
    """Every sweep figure by name, in page order."""
    return {"capacity": capacity_curve_figure(result), "goodput": goodput_figure(result),
            "cost": cost_figure(result)}
