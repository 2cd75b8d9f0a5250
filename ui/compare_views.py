"""The Compare page's sections of a comparison: verdict, memory, latency, throughput, accuracy,
agreement (with the images where the versions disagree most), the decode floor, notes, the report.

Numbers, figures and tables come from ``services.compare.report``; these functions only lay them out.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import streamlit as st

from services.compare import figures as cf
from services.compare import gallery as cg
from services.compare import report as cr
from services.compare.comparison import Comparison
from ui.store import open_store

PLOTLY_CONFIG = {"displaylogo": False}


def table(columns: list[str], rows: list[list[Any]], key: str) -> None:
    st.dataframe(pd.DataFrame([[str(v) for v in r] for r in rows], columns=columns), hide_index=True, key=key)


def wrapped_table(columns: list[str], rows: list[list[Any]], key: str) -> None:
    """A static table whose long cells wrap (the memory table's "how" rows are sentences)."""
    with st.container(key=key):
        st.table(pd.DataFrame([[str(v) for v in r[1:]] for r in rows], columns=columns[1:],
                              index=[str(r[0]) for r in rows]))


def render_heading(c: Comparison) -> None:
    """Which runs, which images, how many requests, how they were paired; then the verdict."""
    st.caption(" · ".join([
        "; ".join(f"run {r['id']} ({r['status']}, {r['created_at'][:19].replace('T', ' ')})" for r in c.runs),
        c.image_set, f"{c.measured_a} / {c.measured_b} measured requests", c.pairing]))
    st.header("Verdict")
    with st.container(border=True, key="cmp_verdict"):
        st.markdown("\n".join(f"- {line}" for line in c.verdict.lines))
    for caveat in c.verdict.caveats:
        st.warning(caveat)
    st.plotly_chart(cf.change_figure(c), key="cmp_fig_change", config=PLOTLY_CONFIG)


def render_measurements(c: Comparison) -> None:
    """Memory, latency, throughput and accuracy: a table or figure each, with their notes."""
    st.header("Memory")
    wrapped_table(["", c.a.label, c.b.label], cr.memory_rows(c), "cmp_memory_table")
    for note in c.memory.notes + c.memory.a.notes + c.memory.b.notes:
        st.caption(note)
    st.plotly_chart(cf.memory_figure(c), key="cmp_fig_memory", config=PLOTLY_CONFIG)

    st.header("Latency")
    table(cr.LATENCY_COLUMNS, cr.latency_rows(c), "cmp_latency_table")
    cols = st.columns(3)
    for col, metric in zip(cols, ("latency_ms", "ttft_ms", "tpot_ms")):
        with col:
            st.plotly_chart(cf.cdf_figure(c, metric), key=f"cmp_fig_{metric}", config=PLOTLY_CONFIG)
    st.subheader("As the server measured it")
    if cr.server_rows(c):
        table(cr.LATENCY_COLUMNS, cr.server_rows(c), "cmp_server_table")
    for note in cr.server_notes(c):
        (st.warning if "unreliable" in note else st.caption)(note)

    st.header("Throughput")
    for note in c.throughput.notes:
        st.caption(note)
    st.plotly_chart(cf.throughput_figure(c), key="cmp_fig_throughput", config=PLOTLY_CONFIG)

    st.header("Accuracy")
    table(cr.ACCURACY_COLUMNS, cr.accuracy_rows(c), "cmp_accuracy_table")
    for note in c.accuracy.notes:
        st.caption(note)
    st.plotly_chart(cf.accuracy_figure(c), key="cmp_fig_accuracy", config=PLOTLY_CONFIG)


def render_agreement_heading(c: Comparison) -> None:
    st.header("Agreement")
    st.markdown(c.verdict.agreement)
    st.plotly_chart(cf.agreement_figure(c), key="cmp_fig_agreement", config=PLOTLY_CONFIG)
    st.subheader("Where they disagree most")


def render_gallery(items: Sequence[cg.GalleryItem]) -> None:
    """The images where the versions disagree most, two a row."""
    if not items:
        st.info("No image where the versions disagree: wherever both answered, their boxes match (or both gave "
                "none).")
    cols = st.columns(2)
    for i, item in enumerate(items):
        with cols[i % 2]:
            if item.figure is not None:
                st.plotly_chart(item.figure, key=f"cmp_gallery_{i}", config=PLOTLY_CONFIG)
                if item.image.note:
                    st.caption(item.image.note)
            else:
                st.info(f"{item.caption}: the image is not available ({item.image.note or item.image.source}).")


def render_floor_and_notes(c: Comparison) -> None:
    st.header("Decode against the memory-bandwidth floor")
    table(cr.FLOOR_COLUMNS, cr.floor_rows(c), "cmp_floor_table")
    st.caption("Floor = weight bytes read per decode step / the GPU's memory bandwidth. The fraction floor / "
               "measured says how close the serving stack gets to the hardware (100% = the limit).")
    st.plotly_chart(cf.floor_figure(c), key="cmp_fig_floor", config=PLOTLY_CONFIG)
    if c.notes:
        st.header("Notes")
        st.markdown("\n".join(f"- {n}" for n in c.notes))


def render_downloads(c: Comparison, items: Sequence[cg.GalleryItem]) -> None:
    """The report and its raw numbers, each made when its button is pressed."""

    def html() -> bytes:
        with open_store() as s:
            return cr.html_bytes(s, c, items)

    def pairs() -> bytes:
        with open_store() as s:
            return cr.pairs_csv(s, c)

    st.header("Report")
    stem = cr.report_stem(c)
    cols = st.columns(4)
    cols[0].download_button("Report (HTML, self-contained)", html, file_name=f"{stem}.html", mime="text/html",
                            key="cmp_dl_html", on_click="ignore")
    cols[1].download_button("Numbers (JSON)", lambda: cr.json_bytes(c), file_name=f"{stem}.json",
                            mime="application/json", key="cmp_dl_json", on_click="ignore")
    cols[2].download_button("Summary (CSV)", lambda: cr.summary_csv(c), file_name=f"{stem}_summary.csv",
                            mime="text/csv", key="cmp_dl_summary", on_click="ignore")
    cols[3].download_button("Pairs (CSV)", pairs, file_name=f"{stem}_pairs.csv", mime="text/csv",
                            key="cmp_dl_pairs", on_click="ignore")
    st.caption(f"The same files from the command line: `{cr.cli_command(c)}` (`--fresh` runs a new paired "
               "benchmark first).")
