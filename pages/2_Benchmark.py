"""Benchmark: send the same requests to bf16 and fp8, watch memory, latency and throughput live.

A thin page over ``ui.benchmark_form`` (the launch form and the run it describes),
``ui.run_lifecycle`` (the run in a background thread, watched across reruns),
``ui.benchmark_live`` (progress and live charts), ``ui.benchmark_views`` (a recorded run's
results) and ``ui.benchmark_history`` (past runs); the logic lives in ``services.bench``.

Per session: the handle of the session's own run lives in ``st.session_state`` (never in a module
global), so two browser sessions each run and watch their own run; the sampler is shared. While a
run is going, one fragment refreshes the progress and the charts about once a second without
rerunning the page; when the run ends the page reruns once and shows the run's summary.
"""

from __future__ import annotations

import streamlit as st

from ui import run_lifecycle
from ui.benchmark_form import form_config, render_launch_form
from ui.benchmark_history import render_history
from ui.benchmark_live import draw_live_run
from ui.benchmark_session import JOB, OUTCOME, START_ERROR, VIEW, collect_ended_run, launch
from ui.benchmark_views import show_run
from ui.sidebar import render_sidebar
from ui.store import open_store

st.set_page_config(page_title="Benchmark · nutrition-table detector", page_icon="⏱️", layout="wide")
conn = render_sidebar()
ss = st.session_state

st.title("Benchmark bf16 against fp8")
st.markdown("Send the same images, in the same order, to one or both versions; watch memory, latency and "
            "throughput while the run goes; compare the versions afterwards. Every request and memory "
            "reading is recorded, so a run stopped early keeps what it measured.")

collect_ended_run()
job = run_lifecycle.current_run(JOB)

st.subheader("Launch a run")
form = render_launch_form(conn.timeout_s, can_start=job is None and conn.target is not None, versions=conn.keys)

if conn.target is None:
    st.error(conn.error or "No usable server: see the sidebar.")
elif conn.status is not None and conn.status.error:
    st.warning(f"The server does not answer its health check ({conn.status.error}): a run now will fail.")
if job is not None:
    st.info("A run of this session is going (below): wait for it or cancel it to start another.")

if form.submitted and job is None:
    ss.pop(START_ERROR, None)
    config = form_config(form)
    if isinstance(config, str):
        ss[START_ERROR] = config
    elif launch(config, conn):
        st.rerun()  # draw the page again with the run going: the form waits, the live panel shows

if ss.get(START_ERROR):
    st.error(ss[START_ERROR])

if job is not None:
    st.subheader("Running")
    run_lifecycle.live_fragment(JOB, draw_live_run)

if ss.get(OUTCOME):
    kind, text = ss[OUTCOME]
    getattr(st, kind)(text)

page_store = open_store()
try:
    view_id = ss.get(VIEW)
    if view_id is not None and not (job is not None and job.run_id == view_id):
        show_run(page_store, int(view_id), job.run_id if job is not None else None)
    render_history(page_store, run_lifecycle.current_run(JOB))
finally:
    page_store.close()
