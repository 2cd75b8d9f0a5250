"""Benchmark: send the same requests to bf16 and fp8, watch memory, latency and throughput live.

A thin view over ``services.bench.runner`` (the run, in a background thread), ``services.bench.store``
(every request and memory sample, the history, the exports), ``services.bench.stats`` (the
numbers), ``services.bench.sampler`` (the process-wide memory sampler) and
``services.bench.figures`` (figures and tables).

Per session: the handle of the session's own run lives in ``st.session_state`` (never in a module
global), so two browser sessions each run and watch their own run; the sampler is shared. While a
run is going, one fragment refreshes the progress and the charts about once a second without
rerunning the page; when the run ends the page reruns once and shows the run's summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import streamlit as st

from services.core.images import UPLOAD_TYPES
from services.bench import figures as bf
from services.bench.stats import summarize
from services.bench.runner import BenchmarkConfig, BenchmarkProgress, start_benchmark
from services.image_sets.image_set import ImageSetSpec
from services.core.versions import VERSION_LABELS, version_label
from services.bench.sampler import get_shared_sampler
from services.bench.store import FINAL_STATUSES, RunStore, default_data_dir
from ui.sidebar import render_sidebar
from ui.store import open_store

LIVE_REFRESH_S = 1.0  # the live fragment's period
BASELINE_S = 2.0  # memory shown from this long before the run started (the baseline)
LIVE_MAX_POINTS = 600  # per memory series in the live chart
FINISH_WAIT_S = 10.0  # how long the page waits for a finished run's outcome
HISTORY_LIMIT = 200
IMAGE_KINDS = {
    "samples": "bundled samples",
    "generated": "generated set",
    "uploaded": "uploaded images",
    "folder": "dataset folder",
}
LOAD_MODES = {"closed": "closed loop (concurrency)", "open": "open loop (request rate)"}
STATUS_BANNER = {"completed": "success", "partial": "warning", "failed": "error", "cancelled": "info",
                 "running": "info"}
PLOTLY_CONFIG = {"displaylogo": False}

# session-state keys (this page only)
JOB = "bench_job"  # the session's own run: LiveRun
VIEW = "bench_view_run"  # the run whose results are shown
OUTCOME = "bench_outcome"  # (banner kind, text) of the session's last finished run
START_ERROR = "bench_start_error"
CONFIRM = "bench_confirm_delete"  # run id waiting for a delete confirmation
NOTICE = "bench_notice"  # (banner kind, text) from a history action
PICK = "bench_history_pick"


@dataclass
class LiveRun:
    """This session's running benchmark: its handle, its own store, and when it started."""

    handle: Any  # services.bench.runner handle: progress() / cancel() / wait()
    store: RunStore  # given to the run; closed when it has ended
    t_start: float  # time.perf_counter() just before the start
    started_wall: float
    versions: tuple[str, ...]
    cancel_requested: bool = False
    run_id: int | None = None


st.set_page_config(page_title="Benchmark · nutrition-table detector", page_icon="⏱️", layout="wide")
conn = render_sidebar()
ss = st.session_state

st.title("Benchmark bf16 against fp8")
st.markdown("Send the same images, in the same order, to one or both versions; watch memory, latency and "
            "throughput while the run goes; compare the versions afterwards. Every request and memory "
            "reading is recorded, so a run stopped early keeps what it measured.")


def read_progress(job: LiveRun) -> BenchmarkProgress:
    """The run's progress; a handle that cannot tell counts as a failed run (shown, not raised)."""
    try:
        p = job.handle.progress()
    except Exception as exc:  # noqa: BLE001 - the page shows it and ends the run's view
        return BenchmarkProgress(job.run_id, "failed", 0, 0, 0, f"The run's progress could not be read: {exc}")
    if p.run_id is not None:
        job.run_id = p.run_id
    return p


def finish(job: LiveRun, progress: BenchmarkProgress) -> None:
    """The session's run has ended: keep its outcome, show its results, release its store."""
    outcome, problem = None, None
    try:
        outcome = job.handle.wait(FINISH_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - shown with the run's status
        problem = f"{type(exc).__name__}: {exc}"
    status = getattr(outcome, "status", None) or progress.status
    reason = getattr(outcome, "reason", None) or getattr(progress, "reason", None) or progress.last_error or problem
    run_id = getattr(outcome, "run_id", None) or progress.run_id or job.run_id
    if run_id is not None:  # its results (status and reason first) are shown below the form
        ss[VIEW] = run_id
        ss.pop(OUTCOME, None)
    else:  # it ended before it was recorded
        ss[OUTCOME] = (STATUS_BANNER.get(status, "error"), f"The run {status}" + (f": {reason}" if reason else ""))
    ss.pop(JOB, None)
    try:
        job.store.close()
    except Exception:  # noqa: BLE001 - closing a store of a run that is over cannot hurt the page
        pass


def launch(config: BenchmarkConfig) -> None:
    """Start a run for this session; a failure to start becomes the page's error."""
    if conn.target is None:
        ss[START_ERROR] = conn.error or "No server: see the sidebar."
        return
    get_shared_sampler()  # started once per process; the run adds its own sink
    store = RunStore(default_data_dir())
    t_start = time.perf_counter()
    try:
        handle = start_benchmark(config, store=store, target=conn.target)
    except Exception as exc:  # noqa: BLE001 - any failure to start is shown, never raised into the page
        store.close()
        ss[START_ERROR] = f"The benchmark could not start: {type(exc).__name__}: {exc}"
        return
    ss[JOB] = LiveRun(handle=handle, store=store, t_start=t_start, started_wall=time.time(),
                      versions=tuple(config.versions))
    ss.pop(OUTCOME, None)


# --------------------------------------------------------------------------- the form

job: LiveRun | None = ss.get(JOB)
if job is not None:
    progress_now = read_progress(job)
    if progress_now.status in FINAL_STATUSES:
        finish(job, progress_now)
        job = None

st.subheader("Launch a run")
top = st.columns(2)
image_kind = top[0].radio("Images", list(IMAGE_KINDS), format_func=IMAGE_KINDS.get, key="bench_image_kind",
                          horizontal=True,
                          help="Bundled samples and generated sets carry the true box; uploaded images and "
                               "folders without labels do not.")
load_mode = top[1].radio("Load", list(LOAD_MODES), format_func=LOAD_MODES.get, key="bench_load", horizontal=True,
                         help="Closed loop: a fixed number of requests in flight. Open loop: requests arrive "
                              "at a rate (Poisson), whether or not earlier ones have finished.")

with st.form("bench_form", border=True):
    versions = st.multiselect("Versions", list(VERSION_LABELS), default=list(VERSION_LABELS),
                              format_func=version_label, key="bench_versions",
                              help="With both, the requests are interleaved in the same image order.")
    uploads, folder, gen_seed, gen_count = None, "", 0, 16
    if image_kind == "generated":
        g = st.columns(2)
        gen_seed = g[0].number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="bench_gen_seed")
        gen_count = g[1].number_input("Images", min_value=1, max_value=1000, value=16, step=1, key="bench_gen_count")
    elif image_kind == "uploaded":
        uploads = st.file_uploader("Label images", type=list(UPLOAD_TYPES), accept_multiple_files=True,
                                   key="bench_uploads")
    elif image_kind == "folder":
        folder = st.text_input("Dataset folder", key="bench_folder", placeholder="/path/to/dataset",
                               help="A folder with labels.jsonl, or OpenFoodFacts parquet files, on the "
                                    "machine that runs the dashboard.")
    c = st.columns(4)
    n_requests = c[0].number_input("Requests per version", min_value=1, max_value=100_000, value=20, step=1,
                                   key="bench_requests", help="Measured requests, warm-up not included.")
    warmup = c[1].number_input("Warm-up per version", min_value=0, max_value=1000, value=2, step=1,
                               key="bench_warmup", help="Sent first and not counted: the first request of a "
                                                        "version compiles and allocates.")
    if load_mode == "closed":
        concurrency = c[2].number_input("Concurrency", min_value=1, max_value=1024, value=1, step=1,
                                        key="bench_concurrency", help="Requests in flight at once.")
        rate = 1.0
    else:
        rate = c[2].number_input("Rate (requests/s)", min_value=0.01, max_value=10_000.0, value=1.0, step=0.5,
                                 key="bench_rate", help="All versions together; Poisson arrivals.")
        concurrency = 1
    max_tokens = c[3].number_input("Max tokens", min_value=1, max_value=4096, value=128, step=16,
                                   key="bench_max_tokens")
    d = st.columns(4)
    temperature = d[0].number_input("Temperature", min_value=0.0, max_value=2.0, value=0.0, step=0.1,
                                    key="bench_temperature", help="0: greedy decoding.")
    timeout_s = d[1].number_input("Timeout per request (s)", min_value=1.0, max_value=3600.0,
                                  value=float(conn.timeout_s), step=10.0, key="bench_timeout")
    stream = d[2].toggle("Streaming", value=True, key="bench_stream",
                         help="Stream the answers: needed for time to first token and TPOT.")
    arrival_seed = 0
    if load_mode == "open":
        arrival_seed = d[3].number_input("Arrival seed", min_value=0, max_value=2**31 - 1, value=0, step=1,
                                         key="bench_arrival_seed", help="Seeds the Poisson arrival times.")
    submitted = st.form_submit_button("Start the benchmark", type="primary", key="bench_start",
                                      disabled=job is not None or conn.target is None)

if conn.target is None:
    st.error(conn.error or "No usable server: see the sidebar.")
elif conn.status is not None and conn.status.error:
    st.warning(f"The server does not answer its health check ({conn.status.error}): a run now will fail.")
if job is not None:
    st.info("A run of this session is going (below): wait for it or cancel it to start another.")

if submitted and job is None:
    ss.pop(START_ERROR, None)
    problem = None
    images: tuple[tuple[str, bytes], ...] = ()
    if not versions:
        problem = "Pick at least one version."
    elif image_kind == "uploaded":
        images = tuple((f.name, f.getvalue()) for f in uploads or [])
        if not images:
            problem = "Upload at least one image, or pick another image set."
    elif image_kind == "folder":
        if not folder.strip():
            problem = "Name the dataset folder."
        elif not Path(folder.strip()).expanduser().exists():
            problem = f"There is no folder {folder.strip()!r} on this machine."
    if problem:
        ss[START_ERROR] = problem
    else:
        spec = ImageSetSpec(kind=image_kind, seed=int(gen_seed), count=int(gen_count),  # type: ignore[arg-type]
                            folder=str(Path(folder.strip()).expanduser()) if image_kind == "folder" else None,
                            images=images)
        config = BenchmarkConfig(versions=tuple(str(v) for v in sorted(versions)), image_set=spec,
                                 requests=int(n_requests), warmup=int(warmup), load=load_mode,  # type: ignore[arg-type]
                                 concurrency=int(concurrency), rate=float(rate), max_tokens=int(max_tokens),
                                 temperature=float(temperature), stream=bool(stream), timeout_s=float(timeout_s),
                                 seed=int(arrival_seed))
        launch(config)
        if ss.get(JOB) is not None:
            st.rerun()  # draw the page again with the run going: the form waits, the live panel shows

if ss.get(START_ERROR):
    st.error(ss[START_ERROR])


# --------------------------------------------------------------------------- the live run


@st.fragment(run_every=LIVE_REFRESH_S)
def live_panel() -> None:
    """Progress, cancel and the live charts of this session's run; reruns itself every second."""
    live: LiveRun | None = ss.get(JOB)
    if live is None:
        return
    p = read_progress(live)
    if p.status in FINAL_STATUSES:
        st.rerun()  # the whole page: the summary, the history
    elapsed = getattr(p, "elapsed_s", 0.0) or (time.perf_counter() - live.t_start)
    fraction = min(1.0, p.done / p.total) if p.total else 0.0
    if p.status == "warmup" and getattr(p, "warmup_total", 0):
        stage = f"warm-up {p.warmup_done} of {p.warmup_total}"
    else:
        stage = p.status
    st.progress(fraction, text=f"Run #{p.run_id if p.run_id is not None else '…'}: {stage}; {p.done} of {p.total} "
                               f"requests, {p.failures} failed; {elapsed:.0f} s")
    by_version = getattr(p, "by_version", None) or {}
    if by_version:
        st.caption(" · ".join(f"{version_label(v)}: {c.get('done', 0)} done, {c.get('failures', 0)} failed"
                              for v, c in sorted(by_version.items())))
    if p.last_error:
        st.warning(f"Last error: {p.last_error}")
    stopping = getattr(p, "stopping", None)
    if stopping or live.cancel_requested:
        st.info(f"Stopping ({stopping or 'cancel requested'}): no new requests are sent; those in flight finish.")
    elif st.button("Cancel the run", key="bench_cancel", icon=":material/stop:"):
        live.cancel_requested = True
        live.handle.cancel()
        st.info("Cancelling: no new requests are sent; those in flight finish.")

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


if job is not None:
    st.subheader("Running")
    live_panel()


# --------------------------------------------------------------------------- a run's results


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


def show_run(store: RunStore, run_id: int) -> None:
    run = store.get_run(run_id)
    if run is None:
        st.warning(f"Run #{run_id} no longer exists.")
        ss.pop(VIEW, None)
        return
    st.subheader(f"Run #{run.id}")
    text = f"Status: {run.status}" + (f": {run.reason}" if run.reason else "")
    if run.status == "running":
        text += " (still going: refresh to see more)"
    getattr(st, STATUS_BANNER.get(run.status, "info"))(text)
    st.caption(f"Started {bf.short_time(run.created_at)} UTC"
               + (f", finished {bf.short_time(run.finished_at)} UTC" if run.finished_at else "")
               + (f"; {bf.describe_config(run.config)}" if run.config else ""))
    requests = store.requests_frame(run_id)
    samples = store.samples_frame(run_id)
    versions = store.versions(run_id)
    summaries = summarize(store.get_requests(run_id))
    memory = bf.version_memory(samples, versions, bf.first_request_t(requests))
    if summaries:
        st.dataframe(bf.summary_frame(summaries, memory), hide_index=True, key="bench_summary")
        notes = [n for s in summaries.values() for n in s.notes if "p99" in n][:1]
        for note in notes:
            st.caption(f"Note: {note}.")
        open_loop = (run.summary or {}).get("open_loop") if isinstance(run.summary, dict) else None
        if open_loop:
            st.caption(f"Open loop at {open_loop.get('rate')} requests/s (seed {open_loop.get('seed')}): "
                       f"{open_loop.get('late_sends', 0)} sends started more than "
                       f"{open_loop.get('late_threshold_ms')} ms late (the most: {open_loop.get('max_lag_ms')} ms).")
    else:
        st.info("This run recorded no request.")
    t0 = bf.run_t0(requests, samples)
    with st.container(key="bench_result"):
        left, right = st.columns(2)
        left.plotly_chart(bf.memory_figure(bf.memory_chart_frame(samples), t0=t0), key="bench_result_memory",
                          config=PLOTLY_CONFIG)
        right.plotly_chart(bf.latency_figure(requests, t0=t0), key="bench_result_latency", config=PLOTLY_CONFIG)
        st.plotly_chart(bf.throughput_figure(requests, t0=t0), key="bench_result_throughput",
                        config=PLOTLY_CONFIG)

    st.markdown("**Export**")
    st.caption("Per version latency_vN.json and memory_vN.csv (the seed's formats); every request and every "
               "memory reading as CSV; the whole run as JSON. Each file is made when its button is pressed.")
    names = bf.export_names(run_id, versions)
    cols = st.columns(min(4, len(names)))
    for i, name in enumerate(names):
        cols[i % len(cols)].download_button(
            name, export_file(store.data_dir, run_id, name), file_name=name, mime=bf.export_mime(name),
            key=f"bench_export_{name}", on_click="ignore", icon=":material/download:")
    with st.expander("What the run ran against"):
        st.json({"config": run.config, "manifest": run.manifest}, expanded=False)
    if run.status == "running" and (job is None or job.run_id != run_id):
        st.button("Refresh", key="bench_refresh_view")


if ss.get(OUTCOME):
    kind, text = ss[OUTCOME]
    getattr(st, kind)(text)

page_store = open_store()
try:
    view_id = ss.get(VIEW)
    if view_id is not None and not (job is not None and job.run_id == view_id):
        show_run(page_store, int(view_id))

    # ----------------------------------------------------------------------- history

    def open_picked() -> None:
        if ss.get(PICK) is not None:
            ss[VIEW] = int(ss[PICK])
            ss.pop(CONFIRM, None)
            ss.pop(OUTCOME, None)

    def ask_delete() -> None:
        ss[CONFIRM] = ss.get(PICK)

    def cancel_delete() -> None:
        ss.pop(CONFIRM, None)

    def confirm_delete(run_id: int) -> None:
        ss.pop(CONFIRM, None)
        store = open_store()
        try:
            run = store.get_run(run_id)
            if run is None:
                ss[NOTICE] = ("warning", f"Run #{run_id} was already deleted.")
            elif run.status == "running":
                ss[NOTICE] = ("error", f"Run #{run_id} is still running: cancel it (or wait for it) first.")
            elif store.delete_run(run_id):
                ss[NOTICE] = ("success", f"Run #{run_id} deleted, with its requests and memory samples.")
                if ss.get(VIEW) == run_id:
                    ss.pop(VIEW, None)
                    ss.pop(OUTCOME, None)
        except Exception as exc:  # noqa: BLE001 - shown, the page stays
            ss[NOTICE] = ("error", f"Run #{run_id} could not be deleted: {exc}")
        finally:
            store.close()

    st.subheader("History")
    runs = page_store.list_runs(limit=HISTORY_LIMIT)
    if ss.get(NOTICE):
        kind, text = ss.pop(NOTICE)
        getattr(st, kind)(text)
    if not runs:
        st.info("No runs yet.")
    else:
        st.dataframe(bf.history_frame(runs), hide_index=True, key="bench_history")
        by_id = {r.id: r for r in runs}
        if ss.get(PICK) not in by_id:
            ss.pop(PICK, None)
        row = st.columns([3, 1, 1])
        row[0].selectbox("Run", list(by_id), key=PICK,
                         format_func=lambda i: f"#{i} · {by_id[i].status} · {bf.short_time(by_id[i].created_at)}")
        row[1].button("Open", key="bench_open", on_click=open_picked, icon=":material/open_in_new:")
        row[2].button("Delete…", key="bench_delete", on_click=ask_delete, icon=":material/delete:")
        pending = ss.get(CONFIRM)
        if pending is not None and pending in by_id:
            n_requests_stored = len(page_store.requests_frame(pending))
            st.warning(f"Delete run #{pending} ({by_id[pending].status}) with its {n_requests_stored} recorded "
                       "requests and memory samples? This cannot be undone.")
            yes_no = st.columns([1, 1, 4])
            yes_no[0].button("Yes, delete", key="bench_delete_yes", type="primary", on_click=confirm_delete,
                             args=(int(pending),))
            yes_no[1].button("Keep it", key="bench_delete_no", on_click=cancel_delete)
finally:
    page_store.close()
