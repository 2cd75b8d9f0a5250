"""Judging a request against the ground truth, and ranking the pairs that agree least."""

from __future__ import annotations

from services.compare.accuracy import Agreement, PairAgreement, evaluate_request
from services.core.boxes import Box, format_answer
from tests.compare.support import T1, req


def test_evaluate_request_reads_every_box_of_the_answer():
    r = req(0, "1", "img", 10.0, answer=format_answer([T1, Box(200, 200, 300, 300)]))
    e = evaluate_request(r, [T1])
    assert e.boxes == [T1, Box(200, 200, 300, 300)]
    assert e.truth_iou == 0.5 and e.found == 1.0 and not e.no_box and not e.failed
    failed = evaluate_request(req(1, "1", "img", 10.0, status="error"), [T1])
    assert failed.failed and failed.boxes is None and failed.truth_iou == 0.0 and failed.found == 0.0
    nothing = evaluate_request(req(2, "1", "img", 10.0, answer="no table here"), [])
    assert nothing.no_box and nothing.truth_iou is None and nothing.found is None


def _pa(key, status, iou):
    return PairAgreement(key, key, 0, 0, 1, [], [], None, iou, status, False)


def test_worst_pairs_come_first_and_agreeing_ones_are_left_out():
    ag = Agreement([_pa("a", "compared", 0.9), _pa("b", "both no box", None), _pa("c", "compared", 0.1),
                    _pa("d", "B failed", None), _pa("e", "compared", 1.0)], 0.667, 3, 0.667, 1, None)
    assert [p.key for p in ag.worst(10)] == ["c", "a", "d"]
    assert [p.key for p in ag.worst(1)] == ["c"]
