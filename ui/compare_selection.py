"""What the Compare page compares: a stored paired run, two stored runs, or a fresh paired run.

:func:`render_selection` draws the choice and returns the two sides, each (run id, version), or
None while there is nothing to compare yet.
"""

from __future__ import annotations

import streamlit as st

from services.compare.runs import RunChoice, run_choices
from services.core.versions import version_label
from ui.compare_new_run import Selection, Side, new_run_selection
from ui.state import Connection
from ui.store import open_store

SOURCES = {
    "stored": "a stored paired run",
    "two": "two stored runs",
    "new": "a new paired run",
}
SOURCE = "cmp_source"  # session-state key of the choice


def side_choice(label: str, choices: list[RunChoice], key: str, default_version: str,
                fallback: int = 0) -> Side | None:
    """A run and one of its versions (``default_version``, else the run's ``fallback``-th: a run on variants)."""
    if not choices:
        return None
    titles = {c.id: c.title for c in choices}
    cols = st.columns([3, 1])
    run_id = cols[0].selectbox(f"Run {label}", list(titles), format_func=titles.get, key=f"{key}_run")
    versions = next(c.versions for c in choices if c.id == run_id)
    index = versions.index(default_version) if default_version in versions else min(fallback, len(versions) - 1)
    version = cols[1].selectbox(f"Version {label}", versions, index=index, format_func=version_label,
                                key=f"{key}_version")
    return int(run_id), str(version)


def _stored_pair(choices: list[RunChoice]) -> Selection | None:
    """Two versions of one paired run (the first two, unless it has more)."""
    paired = [c for c in choices if c.paired]
    if not paired:
        st.info("No stored paired run yet: start one with “a new paired run” above (or on the Benchmark "
                "page, with both versions).")
        return None
    titles = {c.id: c.title for c in paired}
    run_id = st.selectbox("Paired run", list(titles), format_func=titles.get, key="cmp_run")
    versions = next(c.versions for c in paired if c.id == run_id)
    if len(versions) > 2:
        cols = st.columns(2)
        va = cols[0].selectbox("Version A", versions, index=0, format_func=version_label, key="cmp_va")
        vb = cols[1].selectbox("Version B", versions, index=1, format_func=version_label, key="cmp_vb")
    else:
        va, vb = versions[0], versions[1]
    return (int(run_id), str(va)), (int(run_id), str(vb))


def _two_runs(choices: list[RunChoice]) -> Selection | None:
    if not choices:
        st.info("No stored run yet.")
        return None
    a = side_choice("A", choices, "cmp_a", "1")
    b = side_choice("B", choices, "cmp_b", "2", fallback=1)
    return (a, b) if a and b else None


def render_selection(conn: Connection) -> Selection | None:
    """The choice of what to compare, and the two sides it gives (None: nothing to compare yet)."""
    source = st.radio("Compare", list(SOURCES), format_func=SOURCES.get, key=SOURCE, horizontal=True)
    if source == "new":
        return new_run_selection(conn)
    store = open_store()
    try:
        choices = run_choices(store)
    finally:
        store.close()
    return _stored_pair(choices) if source == "stored" else _two_runs(choices)
