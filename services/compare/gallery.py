"""The gallery: the images where the two versions disagree most, both versions' boxes (and the
truth, dashed) drawn through ``services.detect.figures.detection_figure`` on the image recovered
from the run (:func:`services.image_sets.image_set.run_images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import plotly.graph_objects as go

from services.bench.store import RunStore
from services.compare.accuracy import PairAgreement
from services.compare.comparison import Comparison
from services.core.boxes import Box
from services.image_sets.image_set import RunImage, run_images

GALLERY_SIZE = 6
REPORT_IMAGE_SIDE = 640  # images in the HTML are shrunk to this longest side


@dataclass
class GalleryItem:
    pair: PairAgreement
    image: RunImage
    caption: str
    figure: go.Figure | None  # None when the image could not be recovered


def _parsed(boxes: Sequence[Box] | None, width: int, height: int) -> list[Any]:
    from services.core.boxes import LABEL, ParsedBox, grid_to_pixels

    return [ParsedBox(grid=b, pixels=grid_to_pixels(b, width, height), label=LABEL) for b in boxes or []]


def gallery_figure(c: Comparison, pair: PairAgreement, image: RunImage, answers: dict[str, str | None],
                   max_side: int = REPORT_IMAGE_SIDE) -> go.Figure:
    """The image with both versions' boxes (and the truth, dashed) through services.detect.figures."""
    from services.detect.detection import ImageResult, VersionResult
    from services.detect.figures import detection_figure
    from services.core.images import load_image

    assert image.data is not None
    loaded = load_image(image.data, max_side=max_side, name=image.image_id)
    w, h = loaded.original_width, loaded.original_height
    key_a, key_b = (c.a.version, c.b.version) if c.a.version != c.b.version else ("A", "B")
    result = ImageResult(index=0, name=image.image_id, source=image.source, image=loaded, truth=image.truth)
    for key, boxes, answer in ((key_a, pair.boxes_a, answers.get("a")), (key_b, pair.boxes_b, answers.get("b"))):
        if boxes is None:
            result.versions[key] = VersionResult(version=key, error="request failed")
        else:
            result.versions[key] = VersionResult(version=key, text=answer, boxes=_parsed(boxes, w, h))
    return detection_figure(result, height=420)


def gallery(store: RunStore, c: Comparison, k: int = GALLERY_SIZE,
            max_side: int = REPORT_IMAGE_SIDE) -> list[GalleryItem]:
    """The ``k`` images where the versions agree least, both boxes drawn (see Agreement.worst)."""
    worst = c.agreement.worst(k)
    if not worst:
        return []
    run = store.get_run(c.a.run_id)
    assert run is not None
    ids = [p.image_id for p in worst if p.image_id is not None]
    images = run_images(run, ids) if ids else {}
    ra = {r.seq: r for r in store.get_requests(c.a.run_id, c.a.version, include_warmup=False)}
    rb = {r.seq: r for r in store.get_requests(c.b.run_id, c.b.version, include_warmup=False)}
    items = []
    for p in worst:
        img = images.get(p.image_id) if p.image_id is not None else None
        if img is None:
            img = RunImage(p.image_id or p.key, None, p.truth, "unknown", "the run recorded no image id")
        iou = f"IoU between versions {p.iou:.3f}" if p.iou is not None else p.status
        truth = ""
        if p.truth_iou_a is not None or p.truth_iou_b is not None:
            fa = "—" if p.truth_iou_a is None else f"{p.truth_iou_a:.3f}"
            fb = "—" if p.truth_iou_b is None else f"{p.truth_iou_b:.3f}"
            truth = f"; IoU with the truth: {c.a.label} {fa}, {c.b.label} {fb}"
        caption = f"{img.image_id} (request {p.occurrence + 1}): {iou}{truth}"
        fig = None
        if img.data is not None:
            try:
                answers = {"a": getattr(ra.get(p.seq_a), "answer", None), "b": getattr(rb.get(p.seq_b), "answer", None)}
                fig = gallery_figure(c, p, img, answers, max_side=max_side)
                fig.update_layout(title={"text": caption.replace(": ", ":<br>", 1), "font": {"size": 12},
                                         "yref": "container", "y": 1, "yanchor": "top", "pad": {"t": 14}},
                                  margin={"l": 10, "r": 10, "t": 90, "b": 10})
            except Exception as exc:  # noqa: BLE001 - a picture that cannot be drawn is said, not fatal
                img.note = f"could not be drawn: {exc}"
        items.append(GalleryItem(p, img, caption, fig))
    return items
