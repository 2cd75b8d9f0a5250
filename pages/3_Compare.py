"""Compare: what fp8 buys over bf16, and what it costs, from a paired run.

A thin view over ``services.compare.comparison`` (the numbers and the verdict, from the run store),
``services.compare.report`` (figures, tables, the HTML/JSON/CSV report) and
``services.bench.runner`` (a fresh paired run: both versions interleaved on the same images in the
same order). The comparison of a run is computed once per session and run state and kept in
``st.session_state``; a fresh run's handle lives there too (never in a module global).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from services.compare import figures as cf
from services.compare import gallery as cg
from services.compare import report as cr
from services.bench.runner import BenchmarkConfig, start_benchmark
from services.image_sets.image_set import ImageSetSpec
from services.compare.comparison import Comparison, build_comparison
from services.compare.runs import RunChoice, run_choices
from services.core.versions import version_label
from services.bench.store import FINAL_STATUSES
from ui.sidebar import render_sidebar
from ui.store import open_store

PLOTLY_CONFIG = {"displaylogo": False}
SOURCES = {
    "stored": "a stored paired run",
    "two": "two stored runs",
    "new": "a new paired run",
}
IMAGE_KINDS = {"generated": "generated labelled set (seeded)", "samples": "bundled samples"}
# session-state keys (this page only)
SOURCE = "cmp_source"
JOB = "cmp_job"  # a fresh paired run: {"handle", "store", "versions"}
NEW_RUN = "cmp_new_run"  # the id of the session's last fresh run
CACHE = "cmp_cache"  # {selection key: Comparison}
GALLERY = "cmp_gallery"  # {selection key: [GalleryItem]}
ERROR = "cmp_error"

st.set_page_config(page_title="Compare · nutrition-table detector", page_icon="⚖️", layout="wide")
conn = render_sidebar()
ss = st.session_state

st.title("Compare bf16 and fp8")
st.markdown("What does **fp8 (v2)** buy over **bf16 (v1)** for this model, and what does it cost? Both versions "
            "answer the same images in the same order (interleaved), so each image gives a pair; differences are "
            "B − A with a bootstrap 95% confidence interval over the pairs.")


def side_choice(label: str, choices: list[RunChoice], key: str, default_version: str) -> tuple[int, str] | None:
    """A run and one of its versions."""
    if not choices:
        return None
    titles = {c.id: c.title for c in choices}
    cols = st.columns([3, 1])
    run_id = cols[0].selectbox(f"Run {label}", list(titles), format_func=titles.get, key=f"{key}_run")
    versions = next(c.versions for c in choices if c.id == run_id)
    index = versions.index(default_version) if default_version in versions else 0
    version = cols[1].selectbox(f"Version {label}", versions, index=index, format_func=version_label,
                                key=f"{key}_version")
    return int(run_id), str(version)


def finish_job() -> None:
    """A fresh run has ended: show its comparison."""
    job = ss.pop(JOB, None)
    if job is None:
        return
    outcome = job["handle"].wait(10.0)
    progress = job["handle"].progress()
    run_id = getattr(outcome, "run_id", None) or progress.run_id
    status = getattr(outcome, "status", None) or progress.status
    reason = getattr(outcome, "reason", None) or progress.last_error
    job["store"].close()
    if run_id is not None and status in ("completed", "partial"):
        ss[NEW_RUN] = (int(run_id), job["versions"])
    else:
        ss[ERROR] = f"The paired run {status}" + (f": {reason}" if reason else "")


def launch(config: BenchmarkConfig) -> None:
    if conn.target is None:
        ss[ERROR] = conn.error or "No server: see the sidebar."
        return
    store = open_store()
    try:
        handle = start_benchmark(config, store=store, target=conn.target)
    except Exception as exc:  # noqa: BLE001 - shown, never raised into the page
        store.close()
        ss[ERROR] = f"The paired run could not start: {type(exc).__name__}: {exc}"
        return
    ss[JOB] = {"handle": handle, "store": store, "versions": tuple(config.versions)}
    ss.pop(NEW_RUN, None)


def new_run_form() -> tuple[tuple[int, str], tuple[int, str]] | None:
    """The form of a fresh paired run, its progress while it runs, then its selection."""
    job = ss.get(JOB)
    if job is not None and job["handle"].progress().status in FINAL_STATUSES:
        finish_job()
        job = None
    with st.form("cmp_new_form"):
        cols = st.columns(3)
        kind = cols[0].selectbox("Images", list(IMAGE_KINDS), format_func=IMAGE_KINDS.get, key="cmp_kind")
        seed = cols[1].number_input("Seed of the generated set", min_value=0, value=0, step=1, key="cmp_seed")
        count = cols[2].number_input("Images in the generated set", min_value=1, max_value=500, value=8,
                                     key="cmp_count")
        cols = st.columns(4)
        requests = cols[0].number_input("Measured requests per version", min_value=2, max_value=5000, value=16,
                                        key="cmp_requests")
        warmup = cols[1].number_input("Warm-up requests per version", min_value=0, max_value=100, value=1,
                                      key="cmp_warmup")
        max_tokens = cols[2].number_input("Max tokens", min_value=1, max_value=4096, value=128, key="cmp_max_tokens")
        max_side = cols[3].number_input("Max image side (px)", min_value=28, max_value=4096, value=1024,
                                        key="cmp_max_side")
        submitted = st.form_submit_button("Run bf16 (v1) and fp8 (v2), interleaved", type="primary",
                                          disabled=job is not None)
    if submitted and job is None:
        spec = ImageSetSpec(kind=kind, seed=int(seed), count=int(count), max_side=int(max_side))
        launch(BenchmarkConfig(versions=("1", "2"), image_set=spec, requests=int(requests), warmup=int(warmup),
                               max_tokens=int(max_tokens)))
        job = ss.get(JOB)
    if job is not None:
        live_progress()
        return None
    new = ss.get(NEW_RUN)
    if new is None:
        return None
    run_id, versions = new
    return (run_id, versions[0]), (run_id, versions[1])


@st.fragment(run_every=1.0)
def live_progress() -> None:
    job = ss.get(JOB)
    if job is None:
        return
    p = job["handle"].progress()
    st.progress(p.done / p.total if p.total else 0.0,
                text=f"Paired run {p.run_id or ''}: {p.status}, {p.done} of {p.total or '?'} requests"
                     + (f", {p.failures} failed" if p.failures else ""))
    if st.button("Cancel the run", key="cmp_cancel"):
        job["handle"].cancel()
    if p.status in FINAL_STATUSES:
        st.rerun(scope="app")


# --------------------------------------------------------------------------- which comparison

source = st.radio("Compare", list(SOURCES), format_func=SOURCES.get, key=SOURCE, horizontal=True)
store = open_store()
selection = None
try:
    if source == "new":
        selection = new_run_form()
    else:
        choices = run_choices(store)
        if source == "stored":
            paired = [c for c in choices if c.paired]
            if not paired:
                st.info("No stored paired run yet: start one with “a new paired run” above (or on the Benchmark "
                        "page, with both versions).")
            else:
                titles = {c.id: c.title for c in paired}
                run_id = st.selectbox("Paired run", list(titles), format_func=titles.get, key="cmp_run")
                versions = next(c.versions for c in paired if c.id == run_id)
                if len(versions) > 2:
                    cols = st.columns(2)
                    va = cols[0].selectbox("Version A", versions, index=0, format_func=version_label, key="cmp_va")
                    vb = cols[1].selectbox("Version B", versions, index=1, format_func=version_label, key="cmp_vb")
                else:
                    va, vb = versions[0], versions[1]
                selection = ((int(run_id), str(va)), (int(run_id), str(vb)))
        else:
            if not choices:
                st.info("No stored run yet.")
            else:
                a = side_choice("A", choices, "cmp_a", "1")
                b = side_choice("B", choices, "cmp_b", "2")
                selection = (a, b) if a and b else None
finally:
    store.close()

if ERROR in ss:
    st.error(ss.pop(ERROR))

if selection is None:
    st.stop()


# --------------------------------------------------------------------------- the comparison

def comparison_key(sel: Any) -> tuple:
    """The selection and each run's state (a run that changes is compared again)."""
    with open_store() as s:
        states = tuple((r.id, r.status, r.finished_at) for r in (s.get_run(sel[0][0]), s.get_run(sel[1][0])) if r)
    return (sel, states)


key = comparison_key(selection)
cache: dict = ss.setdefault(CACHE, {})
if key not in cache:
    try:
        with st.spinner("Comparing (regenerating images for the ground truth where needed)..."), open_store() as s:
            cache.clear()
            cache[key] = build_comparison(s, selection[0], selection[1])
    except (KeyError, ValueError) as exc:
        st.error(f"These two cannot be compared: {exc}")
        st.stop()
c: Comparison = cache[key]

st.caption(" · ".join([
    "; ".join(f"run {r['id']} ({r['status']}, {r['created_at'][:19].replace('T', ' ')})" for r in c.runs),
    c.image_set, f"{c.measured_a} / {c.measured_b} measured requests", c.pairing]))

st.header("Verdict")
with st.container(border=True, key="cmp_verdict"):
    st.markdown("\n".join(f"- {line}" for line in c.verdict.lines))
for caveat in c.verdict.caveats:
    st.warning(caveat)
st.plotly_chart(cf.change_figure(c), key="cmp_fig_change", config=PLOTLY_CONFIG)


def table(columns: list[str], rows: list[list[Any]], key: str) -> None:
    st.dataframe(pd.DataFrame([[str(v) for v in r] for r in rows], columns=columns), hide_index=True, key=key)


st.header("Memory")
table(["", c.a.label, c.b.label], cr.memory_rows(c), "cmp_memory_table")
for note in c.memory.notes + c.memory.a.notes + c.memory.b.notes:
    st.caption(note)
st.plotly_chart(cf.memory_figure(c), key="cmp_fig_memory", config=PLOTLY_CONFIG)

st.header("Latency")
table(cr.LATENCY_COLUMNS, cr.latency_rows(c), "cmp_latency_table")
cols = st.columns(3)
for col, metric in zip(cols, ("latency_ms", "ttft_ms", "tpot_ms")):
    with col:
        st.plotly_chart(cf.cdf_figure(c, metric), key=f"cmp_fig_{metric}", config=PLOTLY_CONFIG)

st.header("Throughput")
for note in c.throughput.notes:
    st.caption(note)
st.plotly_chart(cf.throughput_figure(c), key="cmp_fig_throughput", config=PLOTLY_CONFIG)

st.header("Accuracy")
table(cr.ACCURACY_COLUMNS, cr.accuracy_rows(c), "cmp_accuracy_table")
for note in c.accuracy.notes:
    st.caption(note)
st.plotly_chart(cf.accuracy_figure(c), key="cmp_fig_accuracy", config=PLOTLY_CONFIG)

st.header("Agreement")
st.markdown(c.verdict.agreement)
st.plotly_chart(cf.agreement_figure(c), key="cmp_fig_agreement", config=PLOTLY_CONFIG)
st.subheader("Where they disagree most")
galleries: dict = ss.setdefault(GALLERY, {})
if key not in galleries:
    with st.spinner("Drawing the images where the versions disagree..."), open_store() as s:
        galleries.clear()
        galleries[key] = cg.gallery(s, c)
items = galleries[key]
if not items:
    st.info("No image where the versions disagree: wherever both answered, their boxes match (or both gave none).")
cols = st.columns(2)
for i, item in enumerate(items):
    with cols[i % 2]:
        if item.figure is not None:
            st.plotly_chart(item.figure, key=f"cmp_gallery_{i}", config=PLOTLY_CONFIG)
            if item.image.note:
                st.caption(item.image.note)
        else:
            st.info(f"{item.caption}: the image is not available ({item.image.note or item.image.source}).")

st.header("Decode against the memory-bandwidth floor")
table(cr.FLOOR_COLUMNS, cr.floor_rows(c), "cmp_floor_table")
st.caption("Floor = weight bytes read per decode step / the GPU's memory bandwidth. The fraction floor / measured "
           "says how close the serving stack gets to the hardware (100% = the limit).")
st.plotly_chart(cf.floor_figure(c), key="cmp_fig_floor", config=PLOTLY_CONFIG)

if c.notes:
    st.header("Notes")
    st.markdown("\n".join(f"- {n}" for n in c.notes))


# --------------------------------------------------------------------------- downloads

def _html() -> bytes:
    with open_store() as s:
        return cr.html_bytes(s, c, galleries.get(key))


def _pairs() -> bytes:
    with open_store() as s:
        return cr.pairs_csv(s, c)


st.header("Report")
stem = cr.report_stem(c)
cols = st.columns(4)
cols[0].download_button("Report (HTML, self-contained)", _html, file_name=f"{stem}.html", mime="text/html",
                        key="cmp_dl_html", on_click="ignore")
cols[1].download_button("Numbers (JSON)", lambda: cr.json_bytes(c), file_name=f"{stem}.json",
                        mime="application/json", key="cmp_dl_json", on_click="ignore")
cols[2].download_button("Summary (CSV)", lambda: cr.summary_csv(c), file_name=f"{stem}_summary.csv",
                        mime="text/csv", key="cmp_dl_summary", on_click="ignore")
cols[3].download_button("Pairs (CSV)", _pairs, file_name=f"{stem}_pairs.csv", mime="text/csv",
                        key="cmp_dl_pairs", on_click="ignore")
st.caption(f"The same files from the command line: `{cr.cli_command(c)}` (`--fresh` runs a new paired benchmark "
           "first).")
