"""The report's recommendation and its "Capacity and cost" section (HTML parts), from a stored sweep.

:func:`report_decision` makes the recommendation a report leads with (capacity from the run when it is
a sweep, at the price of ``QWEN_GPU_PRICE_PER_HOUR``); :func:`recommendation_html` and
:func:`capacity_html` give the HTML parts that ``services.compare.report`` places. No streamlit here.
"""

from __future__ import annotations

import html
from typing import Any, Callable

import plotly.graph_objects as go

from services.bench.store import RunStore
from services.compare.capacity import SweepResult, capacity_table, level_table, sweep_result
from services.compare.capacity_figures import sweep_figures
from services.compare.comparison import Comparison
from services.compare.recommendation import Recommendation, recommend
from services.core import settings

CSS = ".recommendation{background:#ebfbee;border-left:4px solid #2b8a3e;padding:10px 16px;font-size:1.1em}"


def report_decision(store: RunStore, c: Comparison,
                    price_per_gpu_hour: float | None = None) -> tuple[SweepResult | None, Recommendation]:
    """The sweep behind the comparison (one run that is a sweep, else None) and the recommendation."""
    if price_per_gpu_hour is None:
        try:
            price_per_gpu_hour = settings.gpu_price_per_hour()
        except ValueError:
            price_per_gpu_hour = None
    result = sweep_result(store, c.a.run_id, price_per_gpu_hour=price_per_gpu_hour) \
        if c.a.run_id == c.b.run_id else None
    return result, recommend(result, c.accuracy, c.a.version, c.b.version)


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def recommendation_html(rec: Recommendation) -> list[str]:
    """The recommendation, its decisive numbers and what was not measured."""
    return [f"<style>{CSS}</style>", "<h2>Recommendation</h2>",
            f"<div class='recommendation' id='recommendation'><p><b>{_esc(rec.sentence)}</b></p><ul>",
            *(f"<li>{_esc(line)}</li>" for line in rec.decisive),
            *(f"<li class='caveat'>Not measured: {_esc(line)}</li>" for line in rec.not_measured), "</ul></div>"]


def capacity_html(result: SweepResult | None, fig_html: Callable[[go.Figure, str], str]) -> list[str]:
    """The capacity and level tables and the sweep's figures (nothing when the run is no sweep)."""
    if result is None:
        return []
    figs = sweep_figures(result)
    return ["<h2>Capacity and cost</h2>", _table(*capacity_table(result)),
            f"<p class='note'>Targets: {_esc(result.targets.describe())}. {_esc(' '.join(result.notes))}</p>",
            _table(*level_table(result)), fig_html(figs["capacity"], "fig-capacity"),
            fig_html(figs["goodput"], "fig-goodput"), fig_html(figs["cost"], "fig-cost")]
