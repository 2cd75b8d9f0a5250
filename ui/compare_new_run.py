"""The Compare page's fresh paired run: its form, its progress while it runs, then its selection.

Both versions (or the sidebar's two OpenAI-compatible variants) answer the same images in the same
order (interleaved) in one run of ``services.bench.runner``, started and watched through
``ui.run_lifecycle`` under :data:`JOB`.
Once it has completed (or ended partial), it is what the page compares (:data:`NEW_RUN`);
otherwise how it ended is the page's error (:data:`ERROR`).
"""

from __future__ import annotations

import streamlit as st

from services.bench.runner import BenchmarkConfig, BenchmarkProgress
from services.core.versions import version_label
from services.image_sets.image_set import ImageSetSpec
from ui import run_lifecycle
from ui.run_lifecycle import LiveRun, RunEnd
from ui.state import Connection

Side = tuple[int, str]  # (run id, version)
Selection = tuple[Side, Side]  # A and B

IMAGE_KINDS = {"generated": "generated labelled set (seeded)", "samples": "bundled samples"}
# session-state keys (this page only)
JOB = "cmp_job"  # a fresh paired run: ui.run_lifecycle.LiveRun
NEW_RUN = "cmp_new_run"  # (run id, versions) of the session's last fresh run
ERROR = "cmp_error"
NOTE = "cmp_new_run_note"  # why the session's last fresh run ended early (partial), shown above its comparison
PAIR = ("1", "2")  # the form's versions on Triton; an OpenAI session's variants replace them (ui.state)


def _collect_ended() -> None:
    """A fresh run has ended: compare it, or say how it ended."""
    ended = run_lifecycle.collect_ended(JOB)
    if ended is None:
        return
    if ended.run_id is not None and ended.status in ("completed", "partial"):
        st.session_state[NEW_RUN] = (int(ended.run_id), ended.versions)
        note = partial_note(ended)
        if note:
            st.session_state[NOTE] = note
        else:
            st.session_state.pop(NOTE, None)
    else:
        st.session_state[ERROR] = ended.sentence("The paired run")


def partial_note(ended: RunEnd) -> str | None:
    """What the page says above the comparison of a run that stopped early (``partial``: a server, or
    one variant's server, stopped answering): why, and that what it recorded is what is compared."""
    if ended.status != "partial":
        return None
    return (f"{ended.sentence('The paired run')}. The comparison below is of the requests it recorded "
            "before it stopped.")


def _launch(config: BenchmarkConfig, conn: Connection) -> None:
    problem = run_lifecycle.start_run(JOB, config, conn, "The paired run could not start")
    if problem is not None:
        st.session_state[ERROR] = problem
    else:
        st.session_state.pop(NEW_RUN, None)
        st.session_state.pop(NOTE, None)


def _draw_progress(live: LiveRun, p: BenchmarkProgress) -> None:
    st.progress(p.done / p.total if p.total else 0.0,
                text=f"Paired run {p.run_id or ''}: {p.status}, {p.done} of {p.total or '?'} requests"
                     + (f", {p.failures} failed" if p.failures else ""))
    if st.button("Cancel the run", key="cmp_cancel"):
        run_lifecycle.cancel_run(live)


def run_names(conn: Connection) -> str:
    """Who a fresh paired run asks, by name: the session's OpenAI variants (``ui.state.with_variants``
    gives the run all of them) by label, else Triton's versions 1 and 2 (``"bf16 (v1) and fp8 (v2)"``)."""
    names = [v.label for v in conn.variants] if conn.kind == "openai" and conn.variants else \
        [version_label(v) for v in PAIR]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _form(running: bool, conn: Connection) -> BenchmarkConfig | None:
    """The form; the paired run it describes once submitted."""
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
        submitted = st.form_submit_button(f"Run {run_names(conn)}, interleaved", type="primary",
                                          disabled=running)
    if not submitted or running:
        return None
    spec = ImageSetSpec(kind=kind, seed=int(seed), count=int(count), max_side=int(max_side))
    return BenchmarkConfig(versions=PAIR, image_set=spec, requests=int(requests), warmup=int(warmup),
                           max_tokens=int(max_tokens))


def new_run_selection(conn: Connection) -> Selection | None:
    """The form of a fresh paired run, its progress while it runs, then its selection."""
    _collect_ended()
    config = _form(running=run_lifecycle.current_run(JOB) is not None, conn=conn)
    if config is not None:
        _launch(config, conn)
    if run_lifecycle.current_run(JOB) is not None:
        run_lifecycle.live_fragment(JOB, _draw_progress)
        return None
    new = st.session_state.get(NEW_RUN)
    if new is None:
        return None
    if st.session_state.get(NOTE):
        st.warning(st.session_state[NOTE])
    run_id, versions = new
    return (run_id, versions[0]), (run_id, versions[1])
