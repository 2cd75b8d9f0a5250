"""A sweep on the Benchmark page: its live view while it goes, and a recorded sweep's section.

:func:`draw_live_sweep` is drawn by :func:`ui.run_lifecycle.live_fragment` about once a second: the
progress and cancel button (``ui.benchmark_live``), where the sweep is (level, version, load, which
versions saturated), the latency of its requests so far, and the sweep's tables and figures from the
levels finished so far (read from the store, as a recorded sweep's are). :func:`render_sweep_run`
shows a recorded sweep: its recommendation, with the price, demand and tolerance settings, then the
same tables and figures.
"""

from __future__ import annotations

import streamlit as st

from services.bench import figures as bf
from services.bench.runner import BenchmarkProgress
from services.bench.store import RunStore
from services.bench.sweep import level_words
from services.compare.capacity import sweep_result
from services.compare.recommendation import decide_run
from services.core.versions import version_label
from ui.benchmark_live import PLOTLY_CONFIG, progress_and_cancel
from ui.compare_recommendation import cost_inputs, default_price, show_recommendation, show_sweep
from ui.run_lifecycle import LiveRun
from ui.store import open_store


def place_text(sweep: dict) -> str:
    """Where the sweep is: level, version and load; which versions stopped and why."""
    parts = []
    if "level" in sweep:
        parts.append(f"level {sweep['level'] + 1}: {version_label(sweep['version'])} at "
                     f"{level_words(sweep['load'], sweep['value'])}"
                     + (f", repeat {sweep['repeat'] + 1}" if sweep.get("repeat") else ""))
    parts.append(f"{sweep.get('finished_levels', 0)} level(s) finished")
    parts += [f"{version_label(v)} {why}" for v, why in sorted((sweep.get("stopped") or {}).items())]
    return "; ".join(parts)


def draw_live_sweep(live: LiveRun, p: BenchmarkProgress) -> None:
    """Progress, cancel, where the sweep is, and its tables and figures so far."""
    progress_and_cancel(live, p)
    if p.sweep:
        st.caption(place_text(p.sweep))
    if p.run_id is None:
        return
    store = open_store()
    try:
        result = sweep_result(store, p.run_id, price_per_gpu_hour=default_price())
        requests = store.requests_frame(p.run_id)
    finally:
        store.close()
    with st.container(key="sweep_live"):
        st.plotly_chart(bf.latency_figure(requests, t0=live.t_start), key="sweep_live_latency", config=PLOTLY_CONFIG)
        if result is not None:
            show_sweep(result, "sweep_live")


def render_sweep_run(store: RunStore, run_id: int) -> None:
    """A recorded sweep: the recommendation (with its settings), capacity, levels and figures."""
    st.markdown("**Sweep: capacity and cost**")
    s = cost_inputs("sweep_view")
    decision = decide_run(store, run_id, price_per_gpu_hour=s.price_per_gpu_hour, demand_rps=s.demand_rps,
                          tolerance=s.tolerance)
    if decision.recommendation is not None:
        show_recommendation(decision.recommendation, "sweep_recommendation")
    if decision.sweep is not None:
        with st.container(key="sweep_result"):
            show_sweep(decision.sweep, "sweep_view")
