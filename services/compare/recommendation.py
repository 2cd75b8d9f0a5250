"""The recommendation: which version to deploy, in one sentence, with the numbers that decide it.

Rules, in this order (B minus A for accuracy; capacities from :mod:`services.compare.capacity`):

1. Accuracy overrides speed: when one version's mean IoU with the ground truth is lower than the
   other's by more than ``tolerance`` (default :data:`ACCURACY_TOLERANCE`), deploy the other one,
   whatever its capacity.
2. Without a sweep there is no capacity: no clear winner (run a sweep).
3. Neither version met the targets at any finished level: no clear winner.
4. With intervals (repeated levels) on both capacities, intervals that overlap: no clear winner.
   Without intervals, capacities within :data:`MIN_GAIN` of each other: no clear winner (one
   unrepeated sweep cannot tell them apart).
5. Otherwise deploy the version with the higher capacity.

The sentence follows the issue's form ("Deploy fp8: at your targets it serves N images/s per GPU
against M, $X against $Y per 1,000 images, and finds the same tables: mean IoU fp8 minus bf16 +0.001
[-0.004, +0.006]"); ``decisive`` lists the numbers with their intervals, ``not_measured`` what the
run could not say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.compare.accuracy import AccuracyComparison, TruthSource
from services.compare.capacity import SweepResult, VersionCapacity
from services.compare.differences import Difference
from services.core.versions import VERSION_LABELS

if TYPE_CHECKING:
    from services.bench.goodput import LatencyTargets
    from services.bench.store import RunStore

ACCURACY_TOLERANCE = 0.02  # mean IoU points (0..1) a version may lose before speed stops mattering
MIN_GAIN = 0.05  # capacities closer than this share, without intervals, are not told apart


@dataclass
class Recommendation:
    decision: str  # "deploy" | "no clear winner"
    winner: str | None  # the version to deploy
    sentence: str
    decisive: list[str] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)
    accuracy_override: bool = False

    def to_dict(self) -> dict:
        return {"decision": self.decision, "winner": self.winner, "sentence": self.sentence,
                "decisive": self.decisive, "not_measured": self.not_measured,
                "accuracy_override": self.accuracy_override}


def _name(version: str) -> str:
    return VERSION_LABELS.get(str(version), f"v{version}" if str(version).isdigit() else str(version))


def _iou_change(d: Difference, subject: str, other: str, b: str) -> str:
    """``subject``'s mean IoU minus ``other``'s, with its interval (``d`` holds B minus A; ``b`` names B)."""
    def fmt(v: float) -> str:
        return f"{0.0 if abs(v) < 5e-4 else v:+.3f}"  # no "-0.000"

    sign = 1.0 if subject == b else -1.0
    text = f"mean IoU {_name(subject)} minus {_name(other)} {fmt(sign * d.diff)}"  # type: ignore[operator]
    if d.lo is not None and d.hi is not None:
        lo, hi = sorted((sign * d.lo, sign * d.hi))
        text += f" [{fmt(lo)}, {fmt(hi)}]"
    return text


def _rps(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.2f}"


def _speed_clause(win: VersionCapacity, lose: VersionCapacity, sweep: SweepResult) -> str:
    unit = "images/s per GPU" if sweep.on_gpu else "images/s per serving instance"
    text = f"at your targets it serves {_rps(win.capacity_rps)} {unit} against {_rps(lose.capacity_rps)}"
    if win.cost_per_1k_images is not None and lose.cost_per_1k_images is not None:
        text += f", ${win.cost_per_1k_images:.4f} against ${lose.cost_per_1k_images:.4f} per 1,000 images"
    return text


def _decisive(sweep: SweepResult | None, accuracy: AccuracyComparison | None, a: str, b: str) -> list[str]:
    lines = []
    if sweep is not None:
        for v in (a, b):
            vc = sweep.versions.get(v)
            if vc is None:
                continue
            c = vc.capacity
            ci = f" [{c.lo:.2f}, {c.hi:.2f}]" if c.lo is not None else ""
            line = f"{_name(v)}: capacity {_rps(c.rps)}{ci} images/s"
            if c.load is not None:
                line += f" (at {'concurrency' if sweep.load == 'closed' else 'rate'} {c.load:g})"
            if vc.cost_per_1k_images is not None:
                line += f", ${vc.cost_per_1k_images:.4f} per 1,000 images"
            if vc.gpus_needed is not None:
                line += f", {vc.gpus_needed} GPU(s) for {sweep.demand_rps:g} images/s"
            lines.append(line + ".")
        lines.append(f"Targets: {sweep.targets.describe()}.")
    if accuracy is not None and accuracy.known and accuracy.mean_iou.diff is not None:
        d = accuracy.mean_iou
        lines.append(f"Accuracy: {_iou_change(d, b, a, b)} (mean IoU {d.b:.3f} vs {d.a:.3f}).")
    return lines


def _not_measured(sweep: SweepResult | None, accuracy: AccuracyComparison | None) -> list[str]:
    out = []
    if sweep is None:
        out.append("Capacity: this run is no sweep (run `qwen-bench sweep`, or a sweep on the Benchmark page).")
    else:
        if sweep.price_per_gpu_hour is None:
            out.append("Cost: no price per GPU-hour set.")
        if any(vc.capacity.lo is None for vc in sweep.versions.values()):
            out.append("Capacity intervals: levels were not repeated.")
        if any(vc.kv_max_concurrency is None for vc in sweep.versions.values()):
            out.append("KV-cache room: the engine does not state it.")
        if not sweep.on_gpu:
            out.append("GPU: none; measured on this machine's CPU.")
    if accuracy is None or not accuracy.known or accuracy.mean_iou.diff is None:
        out.append("Accuracy: no ground truth for these images.")
    return out


def _accuracy_loser(accuracy: AccuracyComparison | None, a: str, b: str, tolerance: float) -> str | None:
    if accuracy is None or not accuracy.known or accuracy.mean_iou.diff is None:
        return None
    diff = accuracy.mean_iou.diff
    return b if diff < -tolerance else a if diff > tolerance else None


def _speed_winner(sweep: SweepResult, a: str, b: str) -> tuple[str | None, str]:
    """The faster version, or None with the reason there is no clear winner."""
    ca, cb = sweep.versions[a].capacity, sweep.versions[b].capacity
    if not ca.rps and not cb.rps:
        return None, "neither version met the targets at any finished level"
    ra, rb = ca.rps or 0.0, cb.rps or 0.0
    if None not in (ca.lo, ca.hi, cb.lo, cb.hi):
        if ca.lo <= cb.hi and cb.lo <= ca.hi:  # type: ignore[operator]
            return None, (f"their capacities' intervals overlap ({_name(a)} {ra:.2f} [{ca.lo:.2f}, {ca.hi:.2f}], "
                          f"{_name(b)} {rb:.2f} [{cb.lo:.2f}, {cb.hi:.2f}] images/s)")
    elif abs(ra - rb) < MIN_GAIN * max(ra, rb):
        return None, (f"their capacities are within {MIN_GAIN * 100:.0f}% ({_name(a)} {ra:.2f}, {_name(b)} "
                      f"{rb:.2f} images/s) and one sweep without repeated levels cannot tell them apart")
    return (b if rb > ra else a), ""


def recommend(sweep: SweepResult | None, accuracy: AccuracyComparison | None, a: str = "1", b: str = "2", *,
              tolerance: float = ACCURACY_TOLERANCE) -> Recommendation:
    """Deploy ``a`` or ``b``, or no clear winner (see the module docstring for the rules)."""
    a, b = str(a), str(b)
    decisive, missing = _decisive(sweep, accuracy, a, b), _not_measured(sweep, accuracy)
    have_sweep = sweep is not None and a in sweep.versions and b in sweep.versions
    loser = _accuracy_loser(accuracy, a, b, tolerance)
    if loser is not None:
        winner = a if loser == b else b
        d = accuracy.mean_iou  # type: ignore[union-attr]
        text = (f"Deploy {_name(winner)}: {_name(loser)} loses accuracy beyond the tolerance of {tolerance:.3f} "
                f"({_iou_change(d, loser, winner, b)}), which overrides speed")
        if have_sweep:
            text += (f"; {_name(loser)} serves {_rps(sweep.versions[loser].capacity_rps)} images/s against "  # type: ignore[union-attr]
                     f"{_rps(sweep.versions[winner].capacity_rps)}")  # type: ignore[union-attr]
        return Recommendation("deploy", winner, text + ".", decisive, missing, accuracy_override=True)
    if not have_sweep:
        return Recommendation("no clear winner", None, "No clear winner: capacity was not measured (this run is "
                              "no sweep); run a sweep to decide on speed and cost.", decisive, missing)
    winner, why = _speed_winner(sweep, a, b)  # type: ignore[arg-type]
    if winner is None:
        return Recommendation("no clear winner", None, f"No clear winner: {why}.", decisive, missing)
    other = a if winner == b else b
    text = f"Deploy {_name(winner)}: {_speed_clause(sweep.versions[winner], sweep.versions[other], sweep)}"  # type: ignore[union-attr]
    if accuracy is not None and accuracy.known and accuracy.mean_iou.diff is not None:
        text += f", and finds the same tables: {_iou_change(accuracy.mean_iou, winner, other, b)}"
    else:
        text += "; its accuracy was not measured (no ground truth)"
    return Recommendation("deploy", winner, text + ".", decisive, missing)


@dataclass
class SweepDecision:
    """A stored sweep's capacity and cost per version, and the recommendation between two of them."""

    sweep: SweepResult | None  # None: the run is no sweep
    recommendation: Recommendation | None  # None: fewer than two versions
    accuracy: AccuracyComparison | None


def decide_run(store: "RunStore", run_id: int, *, price_per_gpu_hour: float | None = None,
               demand_rps: float | None = None, tolerance: float = ACCURACY_TOLERANCE,
               targets: "LatencyTargets | None" = None, versions: tuple[str, str] | None = None,
               truth: "TruthSource | None" = None) -> SweepDecision:
    """Capacity from the stored sweep, accuracy from the run's paired comparison (against ``truth``,
    default the ground truth the comparison recovers for the run's images), and the recommendation of
    ``versions`` (default: the run's first two)."""
    from services.compare.capacity import sweep_result
    from services.compare.comparison import compare_run

    sweep = sweep_result(store, run_id, price_per_gpu_hour=price_per_gpu_hour, demand_rps=demand_rps,
                         targets=targets)
    vs = list(versions) if versions else store.versions(run_id)
    if len(vs) < 2:
        return SweepDecision(sweep, None, None)
    try:
        accuracy = compare_run(store, run_id, vs[:2], **({"truth": truth} if truth else {})).accuracy
    except (KeyError, ValueError):  # a side without measured requests
        accuracy = None
    return SweepDecision(sweep, recommend(sweep, accuracy, vs[0], vs[1], tolerance=tolerance), accuracy)
