"""The Benchmark page's view of a recorded run: status, summary table, charts, exports, what it ran against."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

from services.bench import figures as bf
from services.bench import server_figures as sf
from services.bench.stats import summarize
from services.bench.store import RunInfo, RunStore
from ui.benchmark_live import PLOTLY_CONFIG
from ui.benchmark_session import STATUS_BANNER, VIEW


def export_file(data_dir: Path, run_id: int, name: str) -> Callable[[], bytes]:
    """A callable for ``st.download_button``: the file ``name`` of ``RunStore.export_files``, made
    when the button is pressed (in a thread of its own, with a store of its own)."""

    def make() -> bytes:
        with RunStore(data_dir) as store:
            files = store.export_files(run_id)
        if name not in files:
            raise KeyError(f"run #{run_id} has no export {name!r} (it has {', '.join(files)})")
        return files[name]

    return make


def _summary(store: RunStore, run_id: int, frames: tuple[pd.DataFrame, pd.DataFrame],
             open_loop: dict | None) -> None:
    """Per version: the numbers of its requests, then its memory; the open loop's punctuality."""
    requests, samples = frames
    summaries = summarize(store.get_requests(run_id))
    if not summaries:
        st.info("This run recorded no request.")
        return
    st.dataframe(bf.summary_frame(summaries), hide_index=True, key="bench_summary")
    for note in bf.summary_notes(summaries):
        st.caption(f"Note: {note}.")
    _server_timings(store, run_id, summaries)
    memory = bf.version_memory(samples, store.versions(run_id), bf.first_request_t(requests))
    if memory:
        st.dataframe(bf.memory_frame(memory), hide_index=True, key="bench_summary_memory")
    if open_loop:
        st.caption(f"Open loop at {open_loop.get('rate')} requests/s (seed {open_loop.get('seed')}): "
                   f"{open_loop.get('late_sends', 0)} sends started more than "
                   f"{open_loop.get('late_threshold_ms')} ms late (the most: {open_loop.get('max_lag_ms')} ms).")


def _server_timings(store: RunStore, run_id: int, summaries: dict) -> None:
    """The server's own TTFT / TPOT / end-to-end beside the client's, and when to trust which."""
    rows = store.get_server_timings(run_id)
    run = store.get_run(run_id)
    st.markdown("**Server-side timings** (vllm:* histograms over the measured window; percentiles "
                "interpolated in the buckets as Prometheus' histogram_quantile does)")
    if rows:
        st.dataframe(sf.server_timings_frame(rows, summaries), hide_index=True, key="bench_server_timings")
    for note in sf.server_timing_notes(rows, summaries, run.summary if run else None):
        (st.warning if "unreliable" in note else st.caption)(note)


def _server_charts(samples: pd.DataFrame, t0: float | None) -> None:
    """Generated tokens/s, the server's TTFT / TPOT percentiles and its KV-cache usage and queue per variant
    over time (where vllm:* series exist)."""
    if samples.empty or "value" not in samples or not samples["value"].notna().any():
        return
    left, right = st.columns([1, 2])
    left.plotly_chart(sf.generation_rate_figure(samples, t0=t0), key="bench_result_tokens", config=PLOTLY_CONFIG)
    right.plotly_chart(sf.server_percentile_figure(samples, t0=t0), key="bench_result_server_pct",
                       config=PLOTLY_CONFIG)
    load = sf.server_load_figure(samples, t0=t0)
    if load.data:  # a chart of nothing only where some server publishes the gauges
        st.plotly_chart(load, key="bench_result_server_load", config=PLOTLY_CONFIG)


def no_chart_reason(run: RunInfo, what: str) -> str:
    """Why a recorded run has no ``what`` to chart, in one sentence (shown in place of the chart)."""
    if run.status == "running":
        return f"No {what} recorded yet: the run is starting."
    how = {"failed": "failed", "cancelled": "was cancelled", "partial": "stopped"}.get(run.status)
    why = f" ({run.reason})" if run.reason else ""
    if how:
        return f"No {what} to chart: run #{run.id} {how} before any was recorded{why}."
    return f"No {what} to chart: run #{run.id} recorded none{why}."


def _charts(run: RunInfo, requests: pd.DataFrame, samples: pd.DataFrame) -> None:
    """The run's memory, latency and throughput charts; in place of a chart with nothing to draw, why."""
    t0 = bf.run_t0(requests, samples)
    with st.container(key="bench_result"):
        left, right = st.columns(2)
        if samples.empty:
            left.info(no_chart_reason(run, "memory readings"))
        else:
            left.plotly_chart(bf.memory_figure(bf.memory_chart_frame(samples), t0=t0), key="bench_result_memory",
                              config=PLOTLY_CONFIG)
        if requests.empty:
            right.info(no_chart_reason(run, "requests"))
            return
        right.plotly_chart(bf.latency_figure(requests, t0=t0), key="bench_result_latency", config=PLOTLY_CONFIG)
        st.plotly_chart(bf.throughput_figure(requests, t0=t0), key="bench_result_throughput",
                        config=PLOTLY_CONFIG)
        _server_charts(samples, t0)


def _exports(store: RunStore, run_id: int) -> None:
    st.markdown("**Export**")
    st.caption("Per version latency_vN.json and memory_vN.csv (the seed's formats); every request and every "
               "memory reading as CSV; the whole run as JSON. Each file is made when its button is pressed.")
    names = bf.export_names(run_id, store.versions(run_id))
    cols = st.columns(min(4, len(names)))
    for i, name in enumerate(names):
        cols[i % len(cols)].download_button(
            name, export_file(store.data_dir, run_id, name), file_name=name, mime=bf.export_mime(name),
            key=f"bench_export_{name}", on_click="ignore", icon=":material/download:")


def show_run(store: RunStore, run_id: int, running_id: int | None) -> None:
    """A recorded run; ``running_id``: the session's own running run, which refreshes by itself."""
    run = store.get_run(run_id)
    if run is None:
        st.warning(f"Run #{run_id} no longer exists.")
        st.session_state.pop(VIEW, None)
        return
    st.subheader(f"Run #{run.id}")
    text = f"Status: {run.status}" + (f": {run.reason}" if run.reason else "")
    if run.status == "running":
        text += " (still going: refresh to see more)"
    getattr(st, STATUS_BANNER.get(run.status, "info"))(text)
    st.caption(f"Started {bf.short_time(run.created_at)} UTC"
               + (f", finished {bf.short_time(run.finished_at)} UTC" if run.finished_at else "")
               + (f"; {bf.describe_config(run.config)}" if run.config else ""))
    if isinstance(run.config.get("sweep"), dict):
        from ui.sweep_live import render_sweep_run

        render_sweep_run(store, run_id)
    frames = store.requests_frame(run_id), store.samples_frame(run_id)
    _summary(store, run_id, frames, run.summary.get("open_loop") if isinstance(run.summary, dict) else None)
    _charts(run, *frames)
    _exports(store, run_id)
    with st.expander("What the run ran against"):
        st.json({"config": run.config, "manifest": run.manifest}, expanded=False)
    if run.status == "running" and running_id != run_id:
        st.button("Refresh", key="bench_refresh_view")
