"""Accuracy against the ground truth, and agreement between the two versions.

Accuracy (where the images have ground truth)
    Per request: the mean IoU of the one-to-one matching of its boxes with the true boxes
    (:func:`services.core.boxes.match_boxes`; a box left unmatched on either side counts 0), *found* =
    the share of the image's tables matched at IoU >= 0.5, *no box* = an answer without a box.
    A failed request counts as no box (IoU 0, nothing found): failures are never dropped. An image
    without a table answered without a box has no IoU (nothing to compare; the answer is right).

Agreement
    Per pair: the mean IoU of the matching of A's boxes with B's boxes; both without a box is
    agreement without an IoU. The gallery shows the pairs that agree least.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from services.bench.stats import RequestRecord
from services.bench.store import RunInfo
from services.compare.differences import BOOT_SEED, N_BOOT, Difference, difference
from services.compare.pairing import Pair, Pairing
from services.compare.request_boxes import FOUND_IOU, found_share, mean_matched_iou, request_boxes
from services.core.boxes import Box

TruthSource = Callable[[RunInfo, Sequence[str]], Mapping[str, "list[Box] | None"]]


@dataclass
class RequestEval:
    """One measured request judged against the ground truth (when known)."""

    boxes: list[Box] | None  # None: the request failed
    truth: list[Box] | None  # None: unknown
    truth_iou: float | None
    found: float | None
    no_box: bool  # answered, but without a box
    failed: bool


def evaluate_request(r: RequestRecord, truth: Sequence[Box] | None) -> RequestEval:
    """Judge one request (see the module docstring for the rules)."""
    boxes = request_boxes(r)
    failed = boxes is None
    pred = boxes or []
    t = None if truth is None else list(truth)
    return RequestEval(
        boxes=boxes, truth=t,
        truth_iou=None if t is None else mean_matched_iou(pred, t),
        found=None if t is None else found_share(pred, t),
        no_box=not failed and not pred, failed=failed,
    )


@dataclass
class AccuracySide:
    """Accuracy of one side over its measured requests."""

    requests: int  # measured requests
    with_truth: int  # of which the image's ground truth is known
    mean_iou: float | None  # over requests with a truth IoU
    iou_count: int
    found_share: float | None  # mean found share over requests whose image has tables
    found_count: int
    no_box: int  # answered without a box (any image)
    failed: int  # failed requests
    no_box_share: float | None  # (no box + failed) / requests


@dataclass
class AccuracyComparison:
    known: bool  # some images have ground truth
    a: AccuracySide
    b: AccuracySide
    mean_iou: Difference
    found: Difference
    no_box: Difference
    notes: list[str] = field(default_factory=list)


def accuracy_side(evals: Sequence[RequestEval]) -> AccuracySide:
    ious = [e.truth_iou for e in evals if e.truth_iou is not None]
    found = [e.found for e in evals if e.found is not None]
    no_box = sum(1 for e in evals if e.no_box)
    failed = sum(1 for e in evals if e.failed)
    return AccuracySide(
        requests=len(evals), with_truth=sum(1 for e in evals if e.truth is not None),
        mean_iou=float(np.mean(ious)) if ious else None, iou_count=len(ious),
        found_share=float(np.mean(found)) if found else None, found_count=len(found),
        no_box=no_box, failed=failed,
        no_box_share=(no_box + failed) / len(evals) if evals else None,
    )


def _no_box_value(e: RequestEval) -> float:
    return 1.0 if (e.no_box or e.failed) else 0.0


def compare_accuracy(ea: Sequence[RequestEval], eb: Sequence[RequestEval],
                     pair_evals: Sequence[tuple[RequestEval, RequestEval]] | None, *,
                     n_boot: int = N_BOOT, seed: int | None = BOOT_SEED) -> AccuracyComparison:
    """Mean IoU, found share and no-box share per side, and their differences (means)."""
    a, b = accuracy_side(ea), accuracy_side(eb)
    known = a.with_truth > 0 or b.with_truth > 0
    kw = dict(statistic="mean", n_boot=n_boot, seed=seed)
    if pair_evals is not None:
        pa, pb = [p for p, _ in pair_evals], [q for _, q in pair_evals]
        iou = difference("mean_iou", [e.truth_iou for e in pa], [e.truth_iou for e in pb],
                         paired=True, **kw)  # type: ignore[arg-type]
        fnd = difference("found_share", [e.found for e in pa], [e.found for e in pb],
                         paired=True, **kw)  # type: ignore[arg-type]
        nob = difference("no_box_share", [_no_box_value(e) for e in pa],
                         [_no_box_value(e) for e in pb], paired=True, **kw)  # type: ignore[arg-type]
    else:
        iou = difference("mean_iou", [e.truth_iou for e in ea], [e.truth_iou for e in eb], **kw)  # type: ignore[arg-type]
        fnd = difference("found_share", [e.found for e in ea], [e.found for e in eb], **kw)  # type: ignore[arg-type]
        nob = difference("no_box_share", [_no_box_value(e) for e in ea],
                         [_no_box_value(e) for e in eb], **kw)  # type: ignore[arg-type]
    notes = []
    if not known:
        notes.append("No ground truth is known for these images: accuracy cannot be measured "
                     "(agreement between the versions still can).")
    if a.failed or b.failed:
        notes.append("Failed requests count as answers without a box (IoU 0, nothing found).")
    return AccuracyComparison(known, a, b, iou, fnd, nob, notes)


@dataclass
class PairAgreement:
    """How the two sides' answers for one image agree."""

    key: str
    image_id: str | None
    occurrence: int
    seq_a: int
    seq_b: int
    boxes_a: list[Box] | None  # None: that request failed
    boxes_b: list[Box] | None
    truth: list[Box] | None
    iou: float | None  # None when either failed or both gave no box
    status: str  # "compared", "both no box", "A failed", "B failed", "both failed"
    same_answer: bool
    truth_iou_a: float | None = None
    truth_iou_b: float | None = None


@dataclass
class Agreement:
    pairs: list[PairAgreement]
    mean_iou: float | None  # over compared pairs
    compared: int
    at_05: float | None  # share of compared pairs with IoU >= 0.5
    both_no_box: int
    same_answer_share: float | None  # over pairs where both answered

    def worst(self, k: int = 6) -> list[PairAgreement]:
        """Up to ``k`` pairs that agree least, one per image: compared pairs by IoU ascending,
        then pairs where one side failed; pairs that agree (both no box, IoU 1) come last."""
        def rank(p: PairAgreement) -> tuple:
            if p.status == "compared":
                return (0, p.iou, p.key)
            if p.status in ("A failed", "B failed"):
                return (1, 0.0, p.key)
            return (2, 1.0, p.key)

        out, seen = [], set()
        for p in sorted(self.pairs, key=rank):
            if p.status in ("both no box", "both failed") or (p.status == "compared" and p.iou == 1.0):
                continue
            ident = p.image_id if p.image_id is not None else p.key
            if ident in seen:
                continue
            seen.add(ident)
            out.append(p)
            if len(out) >= k:
                break
        return out


def pair_agreement(p: Pair, ea: RequestEval, eb: RequestEval) -> PairAgreement:
    if ea.failed and eb.failed:
        status, value = "both failed", None
    elif ea.failed or eb.failed:
        status, value = ("A failed" if ea.failed else "B failed"), None
    else:
        value = mean_matched_iou(ea.boxes or [], eb.boxes or [])
        status = "both no box" if value is None else "compared"
    same = (not ea.failed and not eb.failed and (p.a.answer or "") == (p.b.answer or ""))
    return PairAgreement(p.key, p.image_id, p.occurrence, p.a.seq, p.b.seq, ea.boxes, eb.boxes,
                         ea.truth, value, status, same, ea.truth_iou, eb.truth_iou)


def agreement(pairs: Sequence[PairAgreement]) -> Agreement:
    compared = [p.iou for p in pairs if p.status == "compared" and p.iou is not None]
    answered = [p for p in pairs if p.boxes_a is not None and p.boxes_b is not None]
    return Agreement(
        pairs=list(pairs),
        mean_iou=float(np.mean(compared)) if compared else None, compared=len(compared),
        at_05=sum(1 for v in compared if v >= FOUND_IOU) / len(compared) if compared else None,
        both_no_box=sum(1 for p in pairs if p.status == "both no box"),
        same_answer_share=sum(1 for p in answered if p.same_answer) / len(answered) if answered else None,
    )


def image_truth(truth: TruthSource, run: RunInfo, rs: Sequence[RequestRecord]) -> dict[str, list[Box] | None]:
    """The ground truth of every image the requests ``rs`` of ``run`` asked about."""
    ids = sorted({r.image_id for r in rs if r.image_id is not None})
    return dict(truth(run, ids)) if ids else {}


def evaluate_requests(rs: Sequence[RequestRecord],
                      truth: Mapping[str, list[Box] | None]) -> dict[int, RequestEval]:
    """Each request judged against its image's truth, keyed by ``id(request)``."""
    return {id(r): evaluate_request(r, truth.get(r.image_id) if r.image_id else None) for r in rs}


def compare_answers(run_a: RunInfo, run_b: RunInfo, ra: Sequence[RequestRecord], rb: Sequence[RequestRecord],
                    pairing: Pairing, truth: TruthSource, *, n_boot: int = N_BOOT,
                    seed: int | None = BOOT_SEED) -> tuple[AccuracyComparison, Agreement]:
    """Accuracy of both sides against the truth (one run's truth serves both sides of one run), and
    the agreement of every matched pair."""
    truth_a = image_truth(truth, run_a, ra)
    truth_b = truth_a if run_a.id == run_b.id else image_truth(truth, run_b, rb)
    ev_a, ev_b = evaluate_requests(ra, truth_a), evaluate_requests(rb, truth_b)
    pairs = pairing.pairs
    pair_evals = [(ev_a[id(p.a)], ev_b[id(p.b)]) for p in pairs] if pairs is not None else None
    accuracy = compare_accuracy(list(ev_a.values()), list(ev_b.values()), pair_evals, n_boot=n_boot, seed=seed)
    agree = agreement([pair_agreement(p, ev_a[id(p.a)], ev_b[id(p.b)]) for p in pairing.matched])
    return accuracy, agree
