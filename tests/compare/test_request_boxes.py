"""Scoring one set of boxes against another: one-to-one matching, unmatched boxes count 0."""

from __future__ import annotations

import pytest

from services.compare.request_boxes import found_share, mean_matched_iou
from services.core.boxes import Box
from tests.compare.support import T1, T2


def test_matching_of_several_boxes_counts_unmatched_ones_as_zero():
    # (0,0,10,5) covers half of T1: IoU 0.5; the far box and T2 stay unmatched (0, 0)
    pred = [Box(0, 0, 10, 5), Box(100, 100, 110, 110)]
    assert mean_matched_iou(pred, [T1, T2]) == pytest.approx(0.5 / 3)
    assert found_share(pred, [T1, T2]) == 0.5


def test_matching_ignores_order_and_is_one_to_one():
    assert mean_matched_iou([T2, T1], [T1, T2]) == 1.0
    assert found_share([T2, T1], [T1, T2]) == 1.0
    # two predictions on one true table: one matches (IoU 1), the other is unmatched (0)
    assert mean_matched_iou([T1, T1], [T1]) == 0.5
    assert found_share([T1, T1], [T1]) == 1.0


def test_found_needs_iou_of_at_least_one_half():
    assert found_share([Box(0, 0, 10, 4.9)], [T1]) == 0.0
    assert found_share([Box(0, 0, 10, 5)], [T1]) == 1.0
    assert found_share([T1], []) is None
    assert mean_matched_iou([], []) is None
