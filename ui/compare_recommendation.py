"""The recommendation that leads the Compare page (and a recorded sweep on the Benchmark page): the
price, demand and accuracy-tolerance settings, the sentence, its decisive numbers and what was not
measured; with a sweep, its capacity table and figures.

The numbers come from ``services.compare.capacity`` and ``services.compare.recommendation``; this
module only lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from services.compare import capacity as cap
from services.compare.accuracy import AccuracyComparison
from services.compare.capacity_figures import sweep_figures
from services.compare.recommendation import ACCURACY_TOLERANCE, Recommendation, recommend
from services.core import settings
from ui.store import open_store

PLOTLY_CONFIG = {"displaylogo": False}


@dataclass
class CostSettings:
    price_per_gpu_hour: float | None
    demand_rps: float | None
    tolerance: float


def default_price() -> float | None:
    try:
        return settings.gpu_price_per_hour()
    except ValueError as exc:
        st.warning(str(exc))
        return None


def cost_inputs(key: str) -> CostSettings:
    """The price per GPU-hour (default ``QWEN_GPU_PRICE_PER_HOUR``), the demand and the tolerance."""
    cols = st.columns(3)
    price = cols[0].number_input("Price per GPU-hour ($)", min_value=0.0, value=default_price(), step=0.5,
                                 key=f"{key}_price", placeholder="unset: cost unknown",
                                 help="Gives the cost per 1,000 images at each version's capacity.")
    demand = cols[1].number_input("Images/s to serve", min_value=0.0, value=None, step=1.0, key=f"{key}_demand",
                                  placeholder="unset", help="How many GPUs each version needs for it.")
    tolerance = cols[2].number_input("Accuracy tolerance (mean IoU)", min_value=0.0, max_value=1.0,
                                     value=ACCURACY_TOLERANCE, step=0.005, format="%.3f", key=f"{key}_tolerance",
                                     help="A version losing more mean IoU than this is not recommended, "
                                          "whatever its speed.")
    return CostSettings(price or None, demand or None, float(tolerance))


def show_recommendation(rec: Recommendation, key: str) -> None:
    """The sentence (a success banner when it decides), then the decisive numbers and the gaps."""
    with st.container(border=True, key=key):
        (st.success if rec.decision == "deploy" else st.info)(rec.sentence)
        if rec.decisive:
            st.markdown("\n".join(f"- {line}" for line in rec.decisive))
        if rec.not_measured:
            st.caption("Not measured: " + " ".join(rec.not_measured))


def show_sweep(result: cap.SweepResult, key: str) -> None:
    """The capacity table, the level table and the sweep's figures."""
    columns, rows = cap.capacity_table(result)
    st.dataframe({c: [r[i] for r in rows] for i, c in enumerate(columns)}, hide_index=True, key=f"{key}_capacity")
    columns, rows = cap.level_table(result)
    st.dataframe({c: [r[i] for r in rows] for i, c in enumerate(columns)}, hide_index=True, key=f"{key}_levels")
    st.caption(f"Targets: {result.targets.describe()}. " + " ".join(result.notes))
    figs = sweep_figures(result)
    left, right = st.columns(2)
    left.plotly_chart(figs["capacity"], key=f"{key}_fig_capacity", config=PLOTLY_CONFIG)
    right.plotly_chart(figs["goodput"], key=f"{key}_fig_goodput", config=PLOTLY_CONFIG)
    st.plotly_chart(figs["cost"], key=f"{key}_fig_cost", config=PLOTLY_CONFIG)


def render_recommendation(run_id: int | None, accuracy: AccuracyComparison | None, a: str, b: str,
                          key: str) -> None:
    """Lead a comparison with the recommendation: capacity from the run when it is a sweep."""
    st.header("Recommendation")
    settings_ = cost_inputs(key)
    result = None
    if run_id is not None:
        with open_store() as store:
            result = cap.sweep_result(store, run_id, price_per_gpu_hour=settings_.price_per_gpu_hour,
                                      demand_rps=settings_.demand_rps)
    show_recommendation(recommend(result, accuracy, a, b, tolerance=settings_.tolerance), f"{key}_sentence")
    if result is not None:
        with st.expander("Capacity and cost of the sweep", expanded=True):
            show_sweep(result, key)
