"""Detection metrics shared by the training script's held-out check and scripts/evaluate_detector.py.

All boxes are on the 0..1000 grid (IoU is the same in pixels). Per image, predictions and ground
truth are matched one to one (``services.core.boxes.match_boxes``: greedy by IoU), so a table counts
once and a second box on the same table is a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean

from services.core.boxes import Box, iou, match_boxes


@dataclass
class ImageResult:
    """One image: its ground truth, the predicted boxes, and the answer text."""

    truth: list[Box]
    pred: list[Box]
    text: str = ""
    seed: int | None = None

    @property
    def table_ious(self) -> list[float]:
        """For each ground-truth table, the IoU of its matched prediction (0.0 when missed)."""
        per = [0.0] * len(self.truth)
        for _p, t, v in match_boxes(self.pred, self.truth):
            if t is not None:
                per[t] = v
        return per

    @property
    def false_positives(self) -> int:
        """Predictions matched to no table with IoU >= 0.5."""
        good = sum(1 for v in self.table_ious if v >= 0.5)
        return len(self.pred) - good


@dataclass
class DetectionScores:
    images: int = 0
    tables: int = 0
    mean_iou: float = 0.0  # per table, 0 when missed
    recall_50: float = 0.0  # share of tables found at IoU >= 0.5
    recall_75: float = 0.0
    false_positive_boxes: int = 0  # boxes matching no table at IoU >= 0.5 (all images)
    no_table_images: int = 0
    no_table_images_with_box: int = 0  # false alarms on images without a table
    missed_answers: int = 0  # images with a table whose answer held no box at all
    count_correct: float = 0.0  # share of images where the number of boxes equals the number of tables
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def score(results: list[ImageResult]) -> DetectionScores:
    ious = [v for r in results for v in r.table_ious]
    no_table = [r for r in results if not r.truth]
    return DetectionScores(
        images=len(results),
        tables=len(ious),
        mean_iou=fmean(ious) if ious else 0.0,
        recall_50=(sum(v >= 0.5 for v in ious) / len(ious)) if ious else 0.0,
        recall_75=(sum(v >= 0.75 for v in ious) / len(ious)) if ious else 0.0,
        false_positive_boxes=sum(r.false_positives for r in results),
        no_table_images=len(no_table),
        no_table_images_with_box=sum(1 for r in no_table if r.pred),
        missed_answers=sum(1 for r in results if r.truth and not r.pred),
        count_correct=(sum(len(r.pred) == len(r.truth) for r in results) / len(results)) if results else 0.0,
    )


def agreement(a: list[list[Box]], b: list[list[Box]]) -> dict:
    """How far two model versions agree, image by image.

    ``mean_iou``: over every box either version gave, the IoU with its one-to-one match in the
    other version's answer (0 for a box the other did not give); images where both gave no box
    count as full agreement and add nothing. ``same_count``: share of images with as many boxes.
    """
    if len(a) != len(b):
        raise ValueError("both versions must answer the same images")
    vals: list[float] = []
    same = 0
    for pa, pb in zip(a, b):
        same += len(pa) == len(pb)
        for i, j, v in match_boxes(pa, pb):
            vals.append(v if i is not None and j is not None else 0.0)
    return {
        "mean_iou": fmean(vals) if vals else 1.0,
        "boxes_compared": len(vals),
        "same_count": same / len(a) if a else 1.0,
    }


__all__ = ["DetectionScores", "ImageResult", "agreement", "iou", "score"]
