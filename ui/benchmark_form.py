"""The Benchmark page's launch form: its widgets, and the run configuration they describe.

:func:`render_launch_form` draws the image-set and load choices and the form; on submit,
:func:`form_config` turns what was entered into a ``BenchmarkConfig``, or says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from services.bench.runner import BenchmarkConfig
from services.image_sets.image_set import ImageSetSpec
from services.core.images import UPLOAD_TYPES
from services.core.versions import VERSION_LABELS, version_label

IMAGE_KINDS = {
    "samples": "bundled samples",
    "generated": "generated set",
    "uploaded": "uploaded images",
    "folder": "dataset folder",
}
LOAD_MODES = {"closed": "closed loop (concurrency)", "open": "open loop (request rate)"}


@dataclass
class LaunchForm:
    """What the form holds when it is submitted (``submitted``) or drawn again."""

    submitted: bool
    versions: list[str]
    image_kind: str
    load_mode: str
    uploads: list[UploadedFile] | None = None
    folder: str = ""
    gen_seed: int = 0
    gen_count: int = 16
    requests: int = 20
    warmup: int = 2
    concurrency: int = 1
    rate: float = 1.0
    max_tokens: int = 128
    temperature: float = 0.0
    timeout_s: float = 120.0
    stream: bool = True
    arrival_seed: int = 0


def form_config(form: LaunchForm) -> BenchmarkConfig | str:
    """The run the submitted form describes, or what is missing (shown above the form)."""
    images: tuple[tuple[str, bytes], ...] = ()
    folder = form.folder.strip()
    if not form.versions:
        return "Pick at least one version."
    if form.image_kind == "uploaded":
        images = tuple((f.name, f.getvalue()) for f in form.uploads or [])
        if not images:
            return "Upload at least one image, or pick another image set."
    elif form.image_kind == "folder":
        if not folder:
            return "Name the dataset folder."
        if not Path(folder).expanduser().exists():
            return f"There is no folder {folder!r} on this machine."
    spec = ImageSetSpec(kind=form.image_kind,  # type: ignore[arg-type]
                        seed=int(form.gen_seed), count=int(form.gen_count),
                        folder=str(Path(folder).expanduser()) if form.image_kind == "folder" else None,
                        images=images)
    return BenchmarkConfig(versions=tuple(str(v) for v in sorted(form.versions)), image_set=spec,
                           requests=int(form.requests), warmup=int(form.warmup),
                           load=form.load_mode,  # type: ignore[arg-type]
                           concurrency=int(form.concurrency), rate=float(form.rate), max_tokens=int(form.max_tokens),
                           temperature=float(form.temperature), stream=bool(form.stream),
                           timeout_s=float(form.timeout_s), seed=int(form.arrival_seed))


def _image_set_inputs(form: LaunchForm) -> None:
    """The inputs of the chosen image set (none for the bundled samples)."""
    if form.image_kind == "generated":
        g = st.columns(2)
        form.gen_seed = g[0].number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1,
                                          key="bench_gen_seed")
        form.gen_count = g[1].number_input("Images", min_value=1, max_value=1000, value=16, step=1,
                                           key="bench_gen_count")
    elif form.image_kind == "uploaded":
        form.uploads = st.file_uploader("Label images", type=list(UPLOAD_TYPES), accept_multiple_files=True,
                                        key="bench_uploads")
    elif form.image_kind == "folder":
        form.folder = st.text_input("Dataset folder", key="bench_folder", placeholder="/path/to/dataset",
                                    help="A folder with labels.jsonl, or OpenFoodFacts parquet files, on the "
                                         "machine that runs the dashboard.")


def _request_inputs(form: LaunchForm, default_timeout_s: float) -> None:
    """How many requests, how they are sent and what they ask for."""
    c = st.columns(4)
    form.requests = c[0].number_input("Requests per version", min_value=1, max_value=100_000, value=20, step=1,
                                      key="bench_requests", help="Measured requests, warm-up not included.")
    form.warmup = c[1].number_input("Warm-up per version", min_value=0, max_value=1000, value=2, step=1,
                                    key="bench_warmup", help="Sent first and not counted: the first request of a "
                                                             "version compiles and allocates.")
    if form.load_mode == "closed":
        form.concurrency = c[2].number_input("Concurrency", min_value=1, max_value=1024, value=1, step=1,
                                             key="bench_concurrency", help="Requests in flight at once.")
    else:
        form.rate = c[2].number_input("Rate (requests/s)", min_value=0.01, max_value=10_000.0, value=1.0, step=0.5,
                                      key="bench_rate", help="All versions together; Poisson arrivals.")
    form.max_tokens = c[3].number_input("Max tokens", min_value=1, max_value=4096, value=128, step=16,
                                        key="bench_max_tokens")
    d = st.columns(4)
    form.temperature = d[0].number_input("Temperature", min_value=0.0, max_value=2.0, value=0.0, step=0.1,
                                         key="bench_temperature", help="0: greedy decoding.")
    form.timeout_s = d[1].number_input("Timeout per request (s)", min_value=1.0, max_value=3600.0,
                                       value=float(default_timeout_s), step=10.0, key="bench_timeout")
    form.stream = d[2].toggle("Streaming", value=True, key="bench_stream",
                              help="Stream the answers: needed for time to first token and TPOT.")
    if form.load_mode == "open":
        form.arrival_seed = d[3].number_input("Arrival seed", min_value=0, max_value=2**31 - 1, value=0, step=1,
                                              key="bench_arrival_seed", help="Seeds the Poisson arrival times.")


def render_launch_form(default_timeout_s: float, can_start: bool) -> LaunchForm:
    """The image-set and load choices, then the form; what it holds (``submitted`` on its button)."""
    top = st.columns(2)
    image_kind = top[0].radio("Images", list(IMAGE_KINDS), format_func=IMAGE_KINDS.get, key="bench_image_kind",
                              horizontal=True,
                              help="Bundled samples and generated sets carry the true box; uploaded images and "
                                   "folders without labels do not.")
    load_mode = top[1].radio("Load", list(LOAD_MODES), format_func=LOAD_MODES.get, key="bench_load",
                             horizontal=True,
                             help="Closed loop: a fixed number of requests in flight. Open loop: requests arrive "
                                  "at a rate (Poisson), whether or not earlier ones have finished.")
    with st.form("bench_form", border=True):
        versions = st.multiselect("Versions", list(VERSION_LABELS), default=list(VERSION_LABELS),
                                  format_func=version_label, key="bench_versions",
                                  help="With both, the requests are interleaved in the same image order.")
        form = LaunchForm(submitted=False, versions=list(versions), image_kind=str(image_kind),
                          load_mode=str(load_mode), timeout_s=float(default_timeout_s))
        _image_set_inputs(form)
        _request_inputs(form, default_timeout_s)
        form.submitted = st.form_submit_button("Start the benchmark", type="primary", key="bench_start",
                                               disabled=not can_start)
    return form
