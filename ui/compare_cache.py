"""The Compare page's per-session cache: a comparison and its gallery, computed once per selection.

A comparison is keyed by the selection and the state of each of its runs (a run that changes is
compared again); only the latest one is kept, in ``st.session_state``.
"""

from __future__ import annotations

import streamlit as st

from services.compare import gallery as cg
from services.compare.comparison import Comparison, build_comparison
from ui.compare_new_run import Selection
from ui.store import open_store

# session-state keys (this page only)
CACHE = "cmp_cache"  # {selection key: Comparison}
GALLERY = "cmp_gallery"  # {selection key: [GalleryItem]}


def comparison_key(selection: Selection) -> tuple:
    """The selection and each run's state (a run that changes is compared again)."""
    (run_a, _), (run_b, _) = selection
    with open_store() as s:
        states = tuple((r.id, r.status, r.finished_at) for r in (s.get_run(run_a), s.get_run(run_b)) if r)
    return (selection, states)


def cached_comparison(key: tuple, selection: Selection) -> Comparison:
    """The comparison of ``selection`` (computed once per key); KeyError or ValueError when the two
    sides cannot be compared."""
    cache: dict = st.session_state.setdefault(CACHE, {})
    if key not in cache:
        with st.spinner("Comparing (regenerating images for the ground truth where needed)..."), open_store() as s:
            cache.clear()
            cache[key] = build_comparison(s, selection[0], selection[1])
    return cache[key]


def cached_gallery(key: tuple, c: Comparison) -> list[cg.GalleryItem]:
    """The images where the versions disagree most, drawn once per key."""
    galleries: dict = st.session_state.setdefault(GALLERY, {})
    if key not in galleries:
        with st.spinner("Drawing the images where the versions disagree..."), open_store() as s:
            galleries.clear()
            galleries[key] = cg.gallery(s, c)
    return galleries[key]
