"""Detect: upload label images (or pick samples), pick bf16, fp8 or both, see the boxes drawn.

A thin view over ``services.detect.detection`` (the batch, results, IoU, JSON) and ``services.detect.figures``
(the plotly figure and the annotated PNG). Uploaded files are read as bytes; their names are only
shown, never used as paths.
"""

from __future__ import annotations

import streamlit as st

from services.core.images import DEFAULT_MAX_SIDE, UPLOAD_TYPES
from services.detect.detection import (
    DEFAULT_MAX_TOKENS,
    DetectionOptions,
    ImageInput,
    Progress,
    run_batch,
    sample_inputs,
    version_label,
)
from services.image_sets.samples import list_samples
from ui.results import render_batch
from ui.sidebar import render_sidebar

BOTH = "both"
RESULT_KEY = "detect_batch"

st.set_page_config(page_title="Detect · nutrition-table detector", page_icon="🔎", layout="wide")
conn = render_sidebar()

st.title("Detect nutrition tables")
st.markdown("Upload label photos or pick bundled samples (they come with the true box), choose the model "
            "version, and run: each version's boxes are drawn on the image.")


@st.cache_data(show_spinner=False)
def _samples() -> list[tuple[str, str]]:
    """(name, description) of the bundled samples."""
    return [(s.name, f"{s.name} ({s.width}×{s.height}, {len(s.boxes)} table{'s' * (len(s.boxes) != 1)})")
            for s in list_samples()]


samples = dict(_samples())
uploads = st.file_uploader("Label images", type=list(UPLOAD_TYPES), accept_multiple_files=True, key="detect_uploads",
                           help="JPEG, PNG, WebP, GIF, BMP or TIFF; several at once are run one after the other.")
chosen_samples = st.multiselect("Sample images (with ground truth)", list(samples), key="detect_samples",
                                format_func=lambda name: samples.get(name, name))

keys = conn.keys  # Triton's versions, or the sidebar's OpenAI variants
choice = st.radio("Model version", [*keys, BOTH], index=len(keys), key="detect_versions",
                  horizontal=True,
                  format_func=lambda v: f"both ({' and '.join(map(version_label, keys))})" if v == BOTH
                  else version_label(v))
versions = tuple(keys) if choice == BOTH else (choice,)
cols = st.columns(3)
max_tokens = cols[0].number_input("Max tokens", min_value=1, max_value=4096, value=DEFAULT_MAX_TOKENS, step=16,
                                  key="detect_max_tokens", help="The most tokens each answer may have.")
max_side = cols[1].number_input("Max image side (px)", min_value=28, max_value=4096, value=DEFAULT_MAX_SIDE,
                                step=64, key="detect_max_side",
                                help="Images are shrunk to this longest side before sending (the fine-tune "
                                     "was trained at 1024).")
stream = cols[2].toggle("Streaming", value=False, key="detect_stream",
                        help="Stream the answer: measures the time to first token.")

if conn.status is not None and not conn.status.error:
    for version in versions:
        v = conn.status.version(version)
        if not v.ready:
            st.warning(f"{version_label(version)} is not ready on the server ({v.state}"
                       f"{': ' + v.reason if v.reason else ''}): its requests will fail.")

inputs_count = len(uploads or []) + len(chosen_samples)
run = st.button("Detect", type="primary", key="detect_run", disabled=not conn.usable or inputs_count == 0,
                help=None if conn.usable else "No usable server: see the sidebar.")
if not conn.usable:
    st.error(conn.error or "No usable server: see the sidebar.")
elif inputs_count == 0:
    st.info("Upload an image or pick a sample to start.")

if run and conn.client is not None:
    inputs = [ImageInput(name=f.name, data=f.getvalue()) for f in uploads or []]
    inputs += sample_inputs(chosen_samples)
    options = DetectionOptions(versions=versions, max_tokens=int(max_tokens), stream=bool(stream),
                               max_side=int(max_side))
    bar = st.progress(0.0, text=f"0 of {len(inputs) * len(versions)} requests")

    def on_progress(p: Progress) -> None:
        bar.progress(p.fraction, text=f"{p.done} of {p.total}: {p.message}")

    st.session_state[RESULT_KEY] = run_batch(conn.client, inputs, options, progress=on_progress)
    bar.empty()

batch = st.session_state.get(RESULT_KEY)
if batch is not None:
    render_batch(batch)
