"""The dashboard's home page: the server's health and version, both model versions, which model.

Run with ``streamlit run app.py`` (``scripts/start.sh``); the pages in ``pages/`` appear in the
navigation. Every page draws the shared sidebar (``ui.sidebar``), which starts the embedded server
on first use (once per process) when no server URL is set.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from services.core.versions import VERSION_LABELS, version_label
from ui.sidebar import health_line, model_notice, render_sidebar

st.set_page_config(page_title="Nutrition-table detector: bf16 vs fp8", page_icon="🏷️", layout="wide")
conn = render_sidebar()

st.title("Nutrition-table detector: bf16 vs fp8")
st.markdown(
    "A fine-tuned Qwen2-VL finds the nutrition table on a food-label photo and answers with a bounding box. "
    "Triton serves it as one model, `qwen`, in two versions: **1 = bf16** and **2 = fp8**."
)

st.subheader("Server")
if conn.error:
    starting = conn.supervision is not None and conn.supervision.phase == "starting"
    (st.info if starting else st.error)(conn.error)
    st.info("Set a reachable server in the sidebar (or fix the embedded server's problem above) to continue.")
    st.stop()
assert conn.target is not None and conn.status is not None
status = conn.status
kind, text = health_line(status, "Triton" if conn.kind == "triton" else "version")
getattr(st, kind)(text)
cols = st.columns(4)
cols[0].metric("Server", "ready" if status.ready else "live" if status.live else "down")
cols[1].metric("Triton version" if conn.kind == "triton" else "Server version", status.server_version or "—")
for col, version in zip(cols[2:], conn.keys):  # Triton's versions, or the sidebar's OpenAI variants
    col.metric(version_label(version), status.version(version).state if not status.error else "—")
if conn.kind == "openai":
    st.caption("OpenAI-compatible variants: " + "; ".join(f"{v.label}: `{v.model}` at `{v.url}`" for v in conn.variants))
else:
    st.caption(f"{'Embedded' if conn.embedded else 'External'} server: HTTP `{conn.target.http_url}`, "
               f"gRPC `{conn.target.grpc_url}`; requests use {conn.protocol}.")

if not status.error:
    rows = [{"version": v.version, "precision": VERSION_LABELS.get(v.version, "?"), "state": v.state,
             "reason": v.reason or ("" if v.ready else "(none given)")} for v in status.versions]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="home_versions")
    not_ready = [v for v in status.versions if v.version in conn.keys and not v.ready]
    for v in not_ready:
        st.error(f"{version_label(v.version)} is not ready ({v.state}): {v.reason or 'the server gave no reason'}. "
                 "Its requests will fail until it is loaded.")

st.subheader("Model")
kind, text = model_notice(conn)
getattr(st, kind)(text)

st.subheader("Pages")
st.page_link("pages/1_Detect.py", label="Detect: upload label images, pick bf16 or fp8, see the boxes drawn",
             icon=":material/search:")
st.page_link("pages/2_Benchmark.py", label="Benchmark: runs with live memory and latency charts, every result kept",
             icon=":material/speed:")
st.page_link("pages/3_Compare.py", label="Compare: bf16 against fp8 side by side, with a verdict and a report",
             icon=":material/compare:")
