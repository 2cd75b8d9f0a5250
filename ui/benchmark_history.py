"""The Benchmark page's history: the recorded runs, reopening one, deleting one after a confirmation.

The buttons act in callbacks (before the page reruns), each with a store of its own; what a
deletion did is kept as the page's notice (:data:`ui.benchmark_session.NOTICE`) for the next run.
"""

from __future__ import annotations

import streamlit as st

from services.bench import figures as bf
from services.bench.store import RunStore
from services.core.versions import version_label
from ui.benchmark_session import CONFIRM, NOTICE, OUTCOME, PICK, VIEW
from ui.run_lifecycle import LiveRun
from ui.store import open_store

HISTORY_LIMIT = 200


def _open_picked() -> None:
    ss = st.session_state
    if ss.get(PICK) is not None:
        ss[VIEW] = int(ss[PICK])
        ss.pop(CONFIRM, None)
        ss.pop(OUTCOME, None)


def _ask_delete() -> None:
    st.session_state[CONFIRM] = st.session_state.get(PICK)


def _cancel_delete() -> None:
    st.session_state.pop(CONFIRM, None)


def _confirm_delete(run_id: int) -> None:
    ss = st.session_state
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


def running_note(live: LiveRun | None, listed: set[int]) -> str | None:
    """What the history says of the session's run while it goes and is not listed yet, else None."""
    if live is None or (live.run_id is not None and live.run_id in listed):
        return None
    which = f"Run #{live.run_id}" if live.run_id is not None else "A run"
    return (f"⏳ {which} of this session is going ({', '.join(map(version_label, live.versions))}): its progress "
            "is under Running above; it is listed here once it is recorded.")


def render_history(store: RunStore, live: LiveRun | None = None) -> None:
    """The table of recorded runs (the session's running run first, said to be going even before it
    is recorded), the run picker with Open and Delete, and the delete confirmation."""
    ss = st.session_state
    st.subheader("History")
    runs = store.list_runs(limit=HISTORY_LIMIT)
    if ss.get(NOTICE):
        kind, text = ss.pop(NOTICE)
        getattr(st, kind)(text)
    note = running_note(live, {r.id for r in runs})
    if note:
        st.info(note)
    if not runs:
        if note is None:
            st.info("No runs yet.")
        return
    st.dataframe(bf.history_frame(runs), hide_index=True, key="bench_history")
    by_id = {r.id: r for r in runs}
    if ss.get(PICK) not in by_id:
        ss.pop(PICK, None)
    row = st.columns([3, 1, 1])
    row[0].selectbox("Run", list(by_id), key=PICK,
                     format_func=lambda i: f"#{i} · {by_id[i].status} · {bf.short_time(by_id[i].created_at)}")
    row[1].button("Open", key="bench_open", on_click=_open_picked, icon=":material/open_in_new:")
    row[2].button("Delete…", key="bench_delete", on_click=_ask_delete, icon=":material/delete:")
    pending = ss.get(CONFIRM)
    if pending is not None and pending in by_id:
        n_requests_stored = len(store.requests_frame(pending))
        st.warning(f"Delete run #{pending} ({by_id[pending].status}) with its {n_requests_stored} recorded "
                   "requests and memory samples? This cannot be undone.")
        yes_no = st.columns([1, 1, 4])
        yes_no[0].button("Yes, delete", key="bench_delete_yes", type="primary", on_click=_confirm_delete,
                         args=(int(pending),))
        yes_no[1].button("Keep it", key="bench_delete_no", on_click=_cancel_delete)
