"""The Benchmark page's launch form: its widgets, and the run configuration they describe.

:func:`render_launch_form` draws the mode (one run, or a sweep over load levels), the image-set and
load choices and the form; on submit, :func:`form_config` turns what was entered into a
``BenchmarkConfig`` or a ``SweepConfig`` (:mod:`services.bench.sweep`), or says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from services.bench.goodput import DEFAULT_TARGETS, LatencyTargets
from services.bench.runner import BenchmarkConfig
from services.bench.sweep import DEFAULT_CONCURRENCIES, SweepConfig, validate_sweep
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
RUN_MODES = {"run": "one run", "sweep": "sweep over load levels (capacity and cost)"}


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
    mode: str = "run"  # "run" | "sweep"
    levels: str = ", ".join(str(v) for v in DEFAULT_CONCURRENCIES)
    repeats: int = 1
    ttft_ms: float = DEFAULT_TARGETS.ttft_ms or 0.0
    tpot_ms: float = DEFAULT_TARGETS.tpot_ms or 0.0
    e2e_ms: float = DEFAULT_TARGETS.e2e_ms or 0.0
    image_reuse: bool = False


def parse_levels(text: str) -> tuple[float, ...] | str:
    """``"1, 2, 4"`` -> (1.0, 2.0, 4.0), or what is wrong with the text."""
    try:
        values = tuple(float(x) for x in text.replace(";", ",").replace(" ", ",").split(",") if x.strip())
    except ValueError:
        return f"The load levels must be numbers separated by commas, not {text!r}."
    return values or "Give at least one load level."


def sweep_config(form: LaunchForm, bench: BenchmarkConfig) -> SweepConfig | str:
    """The sweep the form describes (on ``bench``'s requests), or what is wrong with it."""
    levels = parse_levels(form.levels)
    if isinstance(levels, str):
        return levels
    if form.load_mode == "closed":
        levels = tuple(int(v) if float(v).is_integer() else v for v in levels)
    targets = LatencyTargets(*(float(v) if v else None for v in (form.ttft_ms, form.tpot_ms, form.e2e_ms)))
    try:
        return validate_sweep(SweepConfig(bench=bench, load=form.load_mode, levels=levels,  # type: ignore[arg-type]
                                          repeats=int(form.repeats), targets=targets))
    except ValueError as exc:
        return f"The sweep cannot start: {exc}."


def form_config(form: LaunchForm) -> BenchmarkConfig | SweepConfig | str:
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
                        images=images, reuse=bool(form.image_reuse))
    bench = BenchmarkConfig(versions=tuple(str(v) for v in sorted(form.versions)), image_set=spec,
                            requests=int(form.requests), warmup=int(form.warmup),
                            load=form.load_mode,  # type: ignore[arg-type]
                            concurrency=int(form.concurrency), rate=float(form.rate), max_tokens=int(form.max_tokens),
                            temperature=float(form.temperature), stream=bool(form.stream),
                            timeout_s=float(form.timeout_s), seed=int(form.arrival_seed))
    return sweep_config(form, bench) if form.mode == "sweep" else bench


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
    per = " per level" if form.mode == "sweep" else ""
    form.requests = c[0].number_input(f"Requests per version{per}", min_value=1, max_value=100_000, value=20, step=1,
                                      key="bench_requests", help="Measured requests, warm-up not included.")
    form.warmup = c[1].number_input(f"Warm-up per version{per}", min_value=0, max_value=1000, value=2, step=1,
                                    key="bench_warmup", help="Sent first and not counted: the first request of a "
                                                             "version compiles and allocates.")
    if form.mode == "sweep":
        _sweep_inputs(form, c[2])
    elif form.load_mode == "closed":
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
    form.image_reuse = st.toggle(
        "Repeat images", value=False, key="bench_image_reuse",
        help="Off (default): every request sends an image the server has not seen in this run (a one-level "
             "change of a few 8x8 blocks, invisible), so engine caches (vLLM caches prefixes and images) "
             "are not measured. On: the images repeat, to measure cache hits on purpose.")


def _sweep_inputs(form: LaunchForm, levels_column) -> None:
    """The sweep's levels, repeats and latency targets (goodput counts the requests that meet them all)."""
    what = "Concurrencies" if form.load_mode == "closed" else "Rates (requests/s)"
    form.levels = levels_column.text_input(f"{what} to sweep", value=form.levels, key="bench_levels",
                                           help="Each version alone at each level, lowest first, until it saturates.")
    t = st.columns(4)
    form.repeats = t[0].number_input("Repeats per level", min_value=1, max_value=20, value=1, step=1,
                                     key="bench_repeats", help="More than 1 gives capacity a 95% interval.")
    help_off = "0 turns this target off."
    form.ttft_ms = t[1].number_input("TTFT target (ms)", min_value=0.0, value=form.ttft_ms, step=100.0,
                                     key="bench_ttft_target", help=help_off)
    form.tpot_ms = t[2].number_input("TPOT target (ms)", min_value=0.0, value=form.tpot_ms, step=10.0,
                                     key="bench_tpot_target", help=help_off)
    form.e2e_ms = t[3].number_input("End-to-end target (ms)", min_value=0.0, value=form.e2e_ms, step=250.0,
                                    key="bench_e2e_target", help=help_off + " A person waits for the box.")


def render_launch_form(default_timeout_s: float, can_start: bool,
                       versions: tuple[str, ...] = tuple(VERSION_LABELS)) -> LaunchForm:
    """The image-set and load choices, then the form; what it holds (``submitted`` on its button).
    ``versions``: what may be chosen (Triton's versions, or the sidebar's variants: ``Connection.keys``)."""
    mode = st.radio("Mode", list(RUN_MODES), format_func=RUN_MODES.get, key="bench_mode", horizontal=True,
                    help="A sweep measures each version at a series of load levels until it saturates: goodput at "
                         "your latency targets, capacity and cost per version, and which to deploy.")
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
        versions = st.multiselect("Versions", list(versions), default=list(versions), format_func=version_label,
                                  key="bench_versions" if versions == tuple(VERSION_LABELS) else "bench_variants",
                                  help="With both, the requests are interleaved in the same image order.")
        form = LaunchForm(submitted=False, versions=list(versions), image_kind=str(image_kind),
                          load_mode=str(load_mode), timeout_s=float(default_timeout_s), mode=str(mode))
        _image_set_inputs(form)
        _request_inputs(form, default_timeout_s)
        form.submitted = st.form_submit_button("Start the sweep" if form.mode == "sweep" else "Start the benchmark",
                                               type="primary", key="bench_start", disabled=not can_start)
    return form
