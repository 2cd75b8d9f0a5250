"""The Benchmark page's live panel: the running run's progress, its cancel button, its live charts.

:func:`draw_live_run` is drawn by :func:`ui.run_lifecycle.live_fragment` about once a second
while the session's run goes: memory from the process-wide sampler (from a little before the
start, the baseline), latency and throughput from the requests the run has recorded so far.
"""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from services.bench import figures as bf
from services.bench import server_figures as sf
from services.bench.runner import BenchmarkProgress
from services.bench.sampler import get_shared_sampler
from services.core.versions import version_label
from ui.run_lifecycle import LiveRun, cancel_run
from ui.store import open_store

BASELINE_S = 2.0  # memory shown from this long before the run started (the baseline)
LIVE_MAX_POINTS = 600  # per memory series in the live chart
PLOTLY_CONFIG = {"displaylogo": False}


def progress_text(p: BenchmarkProgress, live: LiveRun) -> str:
    """The progress bar's line: run, stage, requests done and failed, seconds."""
    elapsed = p.elapsed_s or (time.perf_counter() - live.t_start)
    stage = f"warm-up {p.warmup_done} of {p.warmup_total}" if p.status == "warmup" and p.warmup_total else p.status
    return (f"Run #{p.run_id if p.run_id is not None else '…'}: {stage}; {p.done} of {p.total} "
            f"requests, {p.failures} failed; {elapsed:.0f} s")


def progress_and_cancel(live: LiveRun, p: BenchmarkProgress) -> None:
    fraction = min(1.0, p.done / p.total) if p.total else 0.0
    st.progress(fraction, text=progress_text(p, live))
    if p.by_version:
        st.caption(" · ".join(f"{version_label(v)}: {c.get('done', 0)} done, {c.get('failures', 0)} failed"
                              for v, c in sorted(p.by_version.items())))
    if p.last_error:
        st.warning(f"Last error: {p.last_error}")
    if p.stopping or live.cancel_requested:
        st.info(f"Stopping ({p.stopping or 'cancel requested'}): no new requests are sent; those in flight finish.")
    elif st.button("Cancel the run", key="bench_cancel", icon=":material/stop:"):
        cancel_run(live)
        st.info("Cancelling: no new requests are sent; those in flight finish.")


def _live_charts(live: LiveRun, p: BenchmarkProgress) -> None:
    sampler = get_shared_sampler()
    samples = bf.thin(sampler.samples_since(live.t_start - BASELINE_S), LIVE_MAX_POINTS)
    if p.run_id is not None:
        store = open_store()
        try:
            requests = store.requests_frame(p.run_id)
        finally:
            store.close()
    else:
        requests = pd.DataFrame()
    with st.container(key="bench_live"):
        left, right = st.columns(2)
        left.plotly_chart(bf.memory_figure(bf.memory_chart_frame(samples), t0=live.t_start),
                          key="bench_live_memory", config=PLOTLY_CONFIG)
        errors = sampler.errors()
        if errors:
            left.caption("Memory sources not read: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
        right.plotly_chart(bf.latency_figure(requests, t0=live.t_start), key="bench_live_latency",
                           config=PLOTLY_CONFIG)
        st.plotly_chart(bf.throughput_figure(requests, t0=live.t_start), key="bench_live_throughput",
                        config=PLOTLY_CONFIG)
        load = sf.server_load_figure(sf.live_series_frame(samples), t0=live.t_start)
        if load.data:  # where a server publishes its KV-cache usage and queue (vllm serve)
            st.plotly_chart(load, key="bench_live_server_load", config=PLOTLY_CONFIG)


def draw_live_run(live: LiveRun, p: BenchmarkProgress) -> None:
    """Progress, cancel and the live charts of the session's run (a sweep's: ``ui.sweep_live``)."""
    if live.sweep:
        from ui.sweep_live import draw_live_sweep

        draw_live_sweep(live, p)
        return
    progress_and_cancel(live, p)
    _live_charts(live, p)
