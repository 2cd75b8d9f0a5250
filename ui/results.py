"""How the Detect page shows a batch: per image, the figure, each version's answer, errors beside it."""

from __future__ import annotations

from functools import partial

import streamlit as st

from services.detect.detection import BatchResult, ImageResult, VersionResult, batch_to_json, download_name
from services.core.units import format_duration_ms
from services.detect.figures import annotated_png, detection_figure, version_color


def _iou(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render_version(v: VersionResult, result: ImageResult, key: str) -> None:
    """One version's panel: metrics, boxes, the raw answer, or its error."""
    with st.container(border=True, key=key):
        color = version_color(v.version, result.versions)
        st.markdown(f"<span style='color:{color}'>■</span> **{v.label}**", unsafe_allow_html=True)
        if v.error:
            st.error(v.error)
            if v.error_detail:
                with st.expander("The server's own words"):
                    st.code(v.error_detail, language=None)
            return
        cols = st.columns(3)
        cols[0].metric("Latency", format_duration_ms(v.latency_ms), help="From sending the request to the whole answer.")
        cols[1].metric("TTFT", format_duration_ms(v.ttft_ms), help="Time to first token" + (
            "." if v.stream else ": only measured with streaming on."))
        cols[2].metric("Tokens", "—" if v.num_output_tokens is None else str(v.num_output_tokens),
                       help="Output tokens" + (f"; finish reason: {v.finish_reason}" if v.finish_reason else ""))
        if result.truth is not None:
            st.metric("IoU with ground truth", _iou(v.truth_iou),
                      help="Mean IoU over one-to-one matches; an unmatched box on either side counts 0. "
                           "'—' when the image has no table and the answer no box (right).")
        if v.no_box:
            st.warning(f"{v.label}: no box in the answer. The raw answer is below.")
        for n, b in enumerate(v.boxes, 1):
            p, g = b.pixels, b.grid
            flags = f" ({', '.join(b.flags)})" if b.flags else ""
            st.caption(f"box {n} `{b.label or 'no label'}`: pixels ({p.x1:.0f}, {p.y1:.0f}) – ({p.x2:.0f}, {p.y2:.0f}), "
                       f"grid ({g.x1:.0f}, {g.y1:.0f}) – ({g.x2:.0f}, {g.y2:.0f}){flags}")
        st.text("Raw answer")
        st.code(v.text or "(empty answer)", language=None, wrap_lines=True)
        for note in v.notes:
            if note != "no box found in the answer":
                st.caption(f"parser: {note}")


def render_image(result: ImageResult, key: str) -> None:
    """One image of the batch: its error, or the figure (one panel per version, side by side) over
    the whole width, then the versions' panels side by side under it."""
    with st.container(border=True, key=key):
        st.subheader(f"{result.index + 1}. {result.name}" + (" (sample)" if result.source == "sample" else ""))
        if result.error or result.image is None:
            st.error(result.error or "The image could not be loaded.")
            return
        st.plotly_chart(detection_figure(result), key=f"{key}_figure", config={"displaylogo": False})
        img = result.image
        size = f"{img.original_width}×{img.original_height} {img.format}"
        st.caption(f"{size}; sent {img.width}×{img.height} {img.sent_format}" +
                   (f"; {'; '.join(img.notes)}" if img.notes else ""))
        # made when clicked (a callable), not on every rerun
        st.download_button("Download the annotated image (PNG)", partial(annotated_png, result),
                           file_name=download_name(result.name, "-annotated.png", result.index),
                           mime="image/png", key=f"{key}_png", on_click="ignore")
        if result.versions_iou is not None and len(result.versions) >= 2:
            labels = " ↔ ".join(v.label for v in list(result.versions.values())[:2])
            st.metric(f"IoU between versions ({labels})", _iou(result.versions_iou.mean_iou),
                      help="Mean IoU over one-to-one box matches; an unmatched box counts 0; "
                           "'—' when neither version found a box.")
        for col, (version, v) in zip(st.columns(max(1, len(result.versions))), result.versions.items()):
            with col:
                render_version(v, result, key=f"{key}_v{version}")


def render_batch(batch: BatchResult, key: str = "detect_result") -> None:
    """The whole batch: a summary, the JSON download, then each image."""
    images = len(batch.images)
    failed_images = sum(1 for r in batch.images if r.error)
    st.subheader("Results")
    st.caption(f"{images} image{'s' * (images != 1)} × {len(batch.options.versions)} version(s) on "
               f"`{batch.server_url}` in {batch.duration_s:.1f} s; started {batch.started_at} UTC; "
               f"{batch.errors} error(s), {failed_images} image(s) not usable.")
    st.download_button("Download the results (JSON)", partial(batch_to_json, batch), file_name="detection-results.json",
                       mime="application/json", key=f"{key}_json", on_click="ignore")
    for r in batch.images:
        render_image(r, key=f"{key}_{r.index}")
