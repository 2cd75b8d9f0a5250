"""Compare: what fp8 buys over bf16, and what it costs, from a paired run.

A thin page over ``ui.compare_selection`` (what to compare: stored runs, or a fresh paired run
through ``ui.compare_new_run`` and ``ui.run_lifecycle``), ``ui.compare_cache`` (the comparison
of ``services.compare.comparison``, computed once per session and run state and kept in
``st.session_state``), ``ui.compare_recommendation`` (the recommendation that leads, with a sweep's
capacity and cost) and ``ui.compare_views`` (its sections, from ``services.compare.report``).
"""

from __future__ import annotations

import streamlit as st

from ui.compare_cache import cached_comparison, cached_gallery, comparison_key
from ui.compare_new_run import ERROR
from ui.compare_recommendation import render_recommendation
from ui.compare_selection import render_selection
from ui.compare_views import (
    render_agreement_heading,
    render_downloads,
    render_floor_and_notes,
    render_gallery,
    render_heading,
    render_measurements,
)
from ui.sidebar import render_sidebar

st.set_page_config(page_title="Compare · nutrition-table detector", page_icon="⚖️", layout="wide")
conn = render_sidebar()

st.title("Compare bf16 and fp8")
st.markdown("What does **fp8 (v2)** buy over **bf16 (v1)** for this model, and what does it cost? Both versions "
            "answer the same images in the same order (interleaved), so each image gives a pair; differences are "
            "B − A with a bootstrap 95% confidence interval over the pairs.")

selection = render_selection(conn)
if ERROR in st.session_state:
    st.error(st.session_state.pop(ERROR))
if selection is None:
    st.stop()

key = comparison_key(selection)
try:
    comparison = cached_comparison(key, selection)
except (KeyError, ValueError) as exc:
    st.error(f"These two cannot be compared: {exc}")
    st.stop()

same_run = comparison.a.run_id == comparison.b.run_id
render_recommendation(comparison.a.run_id if same_run else None, comparison.accuracy, comparison.a.version,
                      comparison.b.version, key="cmp_rec")
render_heading(comparison)
render_measurements(comparison)
render_agreement_heading(comparison)
items = cached_gallery(key, comparison)
render_gallery(items)
render_floor_and_notes(comparison)
render_downloads(comparison, items)
