"""The Benchmark page's view of a recorded run: status, summary table, charts, exports, what it ran against."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import streamlit as st

from services.bench import figures as bf
from services.bench.stats import summarize
from services.bench.store import RunStore
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
    """Per version: the numbers of its requests and its memory; the open loop's punctuality."""
    requests, samples = frames
    summaries = summarize(store.get_requests(run_id))
    memory = bf.version_memory(samples, store.versions(run_id), bf.first_request_t(requests))
    if not summaries:
        st.info("This run recorded no request.")
        return
    st.dataframe(bf.summary_frame(summaries, memory), hide_index=True, key="bench_summary")
    notes = [n for s in summaries.values() for n in s.notes if "p99" in n][:1]
    for note in notes:
        st.caption(f"Note: {note}.")
    if open_loop:
        st.caption(f"Open loop at {open_loop.get('rate')} requests/s (seed {open_loop.get('seed')}): "
                   f"{open_loop.get('late_sends', 0)} sends started more than "
                   f"{open_loop.get('late_threshold_ms')} ms late (the most: {open_loop.get('max_lag_ms')} ms).")


def _charts(requests: pd.DataFrame, samples: pd.DataFrame) -> None:
    t0 = bf.run_t0(requests, samples)
    with st.container(key="bench_result"):
        left, right = st.columns(2)
        left.plotly_chart(bf.memory_figure(bf.memory_chart_frame(samples), t0=t0), key="bench_result_memory",
                          config=PLOTLY_CONFIG)
        right.plotly_chart(bf.latency_figure(requests, t0=t0), key="bench_result_latency", config=PLOTLY_CONFIG)
        st.plotly_chart(bf.throughput_figure(requests, t0=t0), key="bench_result_throughput",
                        config=PLOTLY_CONFIG)


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
    _charts(*frames)
    _exports(store, run_id)
    with st.expander("What the run ran against"):
        st.json({"config": run.config, "manifest": run.manifest}, expanded=False)
    if run.status == "running" and running_id != run_id:
        st.button("Refresh", key="bench_refresh_view")
