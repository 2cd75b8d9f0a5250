"""The boxes of one request, and how two sets of boxes are scored against each other.

A request's boxes are every grid box of its answer text; two sets of boxes are matched one to one
(:func:`services.core.boxes.match_boxes`): :func:`mean_matched_iou` (a box left unmatched on either
side counts 0) and :func:`found_share` (the share of true boxes matched at IoU >= :data:`FOUND_IOU`).
"""

from __future__ import annotations

from typing import Sequence

from services.bench.stats import RequestRecord
from services.core.boxes import Box, boxes_of_value, match_boxes, parse_answer

FOUND_IOU = 0.5


def request_boxes(r: RequestRecord) -> list[Box] | None:
    """Every grid box a successful request answered with (None for a failed request).

    The answer text parsed by :func:`services.core.boxes.parse_answer` (grid boxes do not depend on the
    image size); the benchmark's ``box`` column keeps only the best-matching box, so it is used only
    when the answer text was not stored.
    """
    if not r.ok:
        return None
    if r.answer is not None:
        return parse_answer(r.answer, 1000, 1000).grid_boxes
    return boxes_of_value(r.box) or []


def mean_matched_iou(a: Sequence[Box], b: Sequence[Box]) -> float | None:
    """Mean IoU over the one-to-one matching of ``a`` and ``b`` (unmatched boxes count 0);
    None when both are empty."""
    pairs = match_boxes(a, b)
    return sum(v for _, _, v in pairs) / len(pairs) if pairs else None


def found_share(pred: Sequence[Box], truth: Sequence[Box], threshold: float = FOUND_IOU) -> float | None:
    """Share of the true boxes matched one to one by a predicted box at IoU >= ``threshold``;
    None when there is no true box."""
    if not truth:
        return None
    pairs = match_boxes(pred, truth)
    hits = sum(1 for i, j, v in pairs if i is not None and j is not None and v >= threshold)
    return hits / len(truth)
