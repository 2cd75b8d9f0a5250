"""The verdict: one plain-words sentence per question the comparison answers, and its caveats.

Memory saved (GiB or MiB, and %, on the weights when known), the median change of latency, TTFT and TPOT,
the change of accuracy, the agreement between the versions and decode against the floor; each
difference is said to be significant (its interval excludes 0: 95 %, or 98.3 % for each of the three
timings, see :data:`services.compare.speed.TIMING_CONFIDENCE`), not significant, or of unknown
significance. The caveats say what limits the numbers (runs not completed, failures, few requests).

Timings: the client's latency, TTFT and TPOT, with the server's median (``vllm:*`` histograms) beside
them where the server published them. Where the client's TTFT / TPOT are unreliable (tokens arrived in
bursts on a meaningful share of requests: :class:`services.compare.speed.ServerComparison`), the
sentence judges on the server's numbers and says why; where the server's are unknown too, it says
that the client's are unreliable (:func:`judged_difference`, :func:`timing_sentence`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from services.bench.stats import RequestRecord
from services.bench.store import RunInfo
from services.bench.version_labels import label_caveats
from services.compare.accuracy import AccuracyComparison, Agreement
from services.compare.decode_floor import DecodeFloor
from services.compare.differences import Difference
from services.compare.memory import MemoryComparison, split_text
from services.compare.pairing import Side
from services.compare.request_boxes import FOUND_IOU
from services.compare.speed import MetricComparison, ServerComparison, ServerMetricComparison, metric_named
from services.core.units import format_bytes


def _fmt_ms(v: float) -> str:
    return f"{v:.1f} ms" if abs(v) < 100 else f"{v:.0f} ms"


def _ci_words(d: Difference, fmt: Callable[[float], str]) -> str:
    if d.significant is None:
        return f"significance unknown ({d.note or 'no interval'})"
    where = f"{d.confidence * 100:.3g}% CI of the difference [{fmt(d.lo)}, {fmt(d.hi)}]"  # type: ignore[arg-type]
    if d.significant:
        return f"significant: the {where} excludes 0"
    return f"not significant: the {where} includes 0"


def memory_sentence(m: MemoryComparison, a: Side, b: Side) -> str:
    """Memory saved by B (binary units: :func:`services.core.units.format_bytes`) and %, on the weights when known."""
    split = f" Split: {b.label} {split_text(m.b)}; {a.label} {split_text(m.a)}."
    if m.saved_bytes is None:
        return ("Memory: unknown. Neither the weight bytes of both versions nor comparable memory samples "
                "were recorded." + split)
    what = "weights" if m.basis == "weights" else "peak memory of the serving processes"
    ref_a = m.a.weights_bytes if m.basis == "weights" else m.a.peak_bytes
    ref_b = m.b.weights_bytes if m.basis == "weights" else m.b.peak_bytes
    verb = "saves" if m.saved_bytes > 0 else "costs" if m.saved_bytes < 0 else "changes nothing in"
    pct = f" ({abs(m.saved_pct):.1f}%)" if m.saved_pct is not None else ""
    core = (f"Memory: {b.label} {verb} {format_bytes(abs(m.saved_bytes))}{pct} of {what} "
            f"({format_bytes(ref_b)} vs {format_bytes(ref_a)} for {a.label}).")  # type: ignore[arg-type]
    return core + split


def latency_sentence(mc: MetricComparison, a: Side, b: Side) -> str:
    """Median change of one latency metric, B vs A, and whether it is significant."""
    d = mc.difference
    if d.diff is None or d.a is None or d.b is None:
        return f"{mc.label.capitalize()}: unknown ({d.note or 'no values'})."
    if d.diff == 0:
        change = "unchanged"
    else:
        rel = f" ({abs(d.rel) * 100:.1f}%)" if d.rel is not None else ""
        change = f"{_fmt_ms(abs(d.diff))}{rel} {'faster' if d.diff < 0 else 'slower'}"
    return (f"Median {mc.label}: {b.label} {_fmt_ms(d.b)} vs {a.label} {_fmt_ms(d.a)}, {change}; "
            f"{_ci_words(d, _fmt_ms)}.")


_SERVER_KEY = {"latency_ms": "e2e", "ttft_ms": "ttft", "tpot_ms": "tpot"}


def _server_known(sm: ServerMetricComparison | None) -> bool:
    return sm is not None and sm.difference.diff is not None


def judged_difference(mc: MetricComparison, server: ServerComparison | None) -> Difference:
    """The difference the verdict judges ``mc`` on: the server's where the client's TTFT/TPOT are
    unreliable and the server's are known, else the client's."""
    sm = None if server is None else server.metric(_SERVER_KEY[mc.metric])
    if server is not None and server.client_unreliable and mc.metric != "latency_ms" and _server_known(sm):
        return sm.difference  # type: ignore[union-attr]
    return mc.difference


def server_sentence(sm: ServerMetricComparison, a: Side, b: Side) -> str:
    """Median change of one server-side metric, B vs A, and whether it is significant."""
    d = sm.difference
    rel = f" ({abs(d.rel) * 100:.1f}%)" if d.rel is not None and d.diff else ""
    change = "unchanged" if not d.diff else f"{_fmt_ms(abs(d.diff))}{rel} {'faster' if d.diff < 0 else 'slower'}"  # type: ignore[arg-type]
    return (f"Median {sm.label} as the server measured it (vllm:* histograms, {d.n_b} vs {d.n_a} observations): "
            f"{b.label} {_fmt_ms(d.b)} vs {a.label} {_fmt_ms(d.a)}, {change}; {_ci_words(d, _fmt_ms)}.")  # type: ignore[arg-type]


def timing_sentence(mc: MetricComparison, server: ServerComparison | None, a: Side, b: Side) -> str:
    """The client's sentence with the server's beside it; on the server's where the client's is unreliable."""
    client = latency_sentence(mc, a, b)
    if server is None:
        return client
    sm = server.metric(_SERVER_KEY[mc.metric])
    if server.client_unreliable and mc.metric != "latency_ms":
        bursts = server.burst_words(a.label, b.label)
        if _server_known(sm):
            return (f"{server_sentence(sm, a, b)} Judged on the server's numbers: the client's "  # type: ignore[arg-type]
                    f"{mc.label} is unreliable ({bursts}).")
        return f"{client} Unreliable: {bursts}, and the server's {mc.label} is {server.reason or 'unknown'}."
    return f"{client} {server_sentence(sm, a, b)}" if _server_known(sm) else client  # type: ignore[arg-type]


def _pts(v: float) -> str:
    return f"{v * 100:+.1f} pts"


def identical(d: Difference) -> bool:
    """Whether the two sides gave the same value on every pair: no difference, and an interval of
    zero width at 0 (no resample of the pairs differs), so there is nothing to test."""
    return d.diff == 0 and d.lo == 0 and d.hi == 0


def accuracy_sentence(acc: AccuracyComparison, a: Side, b: Side) -> str:
    """Mean IoU (and found share) change, B vs A, and whether it is significant; where the versions
    scored the same on every image, that, instead of an interval of zero width."""
    if not acc.known:
        return "Accuracy: unknown (no ground truth for these images)."
    d = acc.mean_iou
    if d.diff is None or d.a is None or d.b is None:
        return f"Accuracy: unknown ({d.note or 'no IoU values'})."
    if identical(d):
        text = (f"Accuracy: mean IoU with the ground truth {d.a:.3f} for both versions: {b.label} and {a.label} "
                "scored identically on every image.")
    else:
        change = "unchanged" if d.diff == 0 else f"{'higher' if d.diff > 0 else 'lower'} by {abs(d.diff):.3f}"
        text = (f"Accuracy: mean IoU with the ground truth {d.b:.3f} for {b.label} vs {d.a:.3f} for {a.label}, "
                f"{change}; {_ci_words(d, lambda v: f'{v:+.3f}')}.")
    f = acc.found
    if f.diff is not None and f.a is not None and f.b is not None:
        if identical(f):
            text += f" Tables found at IoU ≥ {FOUND_IOU}: {f.a * 100:.1f}% for both, on the same images."
        else:
            text += (f" Tables found at IoU ≥ {FOUND_IOU}: {f.b * 100:.1f}% vs {f.a * 100:.1f}% "
                     f"({_pts(f.diff)}; {_ci_words(f, _pts)}).")
    return text


@dataclass
class Verdict:
    """The plain-words answer, one sentence per question."""

    memory: str
    latency: str
    ttft: str
    tpot: str
    accuracy: str
    agreement: str
    floor: str
    caveats: list[str] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [self.memory, self.latency, self.ttft, self.tpot, self.accuracy, self.agreement, self.floor]


def agreement_sentence(ag: Agreement, a: Side, b: Side) -> str:
    if not ag.pairs:
        return "Agreement: unknown (no image was answered by both versions)."
    parts = []
    if ag.compared:
        parts.append(f"mean IoU between the two versions' boxes {ag.mean_iou:.3f} over {ag.compared} image "
                     f"request(s), {ag.at_05 * 100:.0f}% at IoU ≥ {FOUND_IOU}")  # type: ignore[operator]
    if ag.both_no_box:
        parts.append(f"{ag.both_no_box} where both gave no box")
    if ag.same_answer_share is not None:
        parts.append(f"identical answer text in {ag.same_answer_share * 100:.0f}% of pairs")
    return f"Agreement of {b.label} with {a.label}: " + "; ".join(parts) + "."


def floor_sentence(fa: DecodeFloor, fb: DecodeFloor, a: Side, b: Side) -> str:
    if fa.applicable is False and fb.applicable is False:
        return "Decode vs the memory-bandwidth floor: not applicable (CPU-only run)."
    parts = []
    for side, f in ((a, fa), (b, fb)):
        if f.fraction is not None:
            parts.append(f"{side.label} {f.measured_tpot_ms:.2f} ms/token vs a floor of {f.floor_ms:.2f} ms, "
                         f"{f.fraction * 100:.0f}% of the bandwidth-bound speed")
        else:
            parts.append(f"{side.label}: {f.reason}")
    return "Decode vs the memory-bandwidth floor: " + "; ".join(parts) + "."


def run_caveats(runs: Sequence[RunInfo], measured: Sequence[tuple[Side, Sequence[RequestRecord]]]) -> list[str]:
    """What limits the numbers: a run that did not complete, versions whose precision label is wrong
    or unverified (the run manifest's ``labels``), failed requests, few requests per side."""
    caveats = []
    versions_of: dict[int, list[str]] = {}
    for side, _ in measured:
        versions_of.setdefault(side.run_id, []).append(side.version)
    for run in {run.id: run for run in runs}.values():
        if run.status != "completed":
            caveats.append(f"Run {run.id} is {run.status}" + (f": {run.reason}" if run.reason else "") + ".")
        caveats.extend(label_caveats(run.manifest or {}, versions_of.get(run.id, [])))
    for side, rs in measured:
        n = sum(1 for r in rs if not r.ok)
        if n:
            caveats.append(f"{n} measured request(s) of {side.label} failed: they are left out of the latency "
                           "statistics and count as no box for accuracy.")
    small = min(len(rs) for _, rs in measured)
    if small < 20:
        caveats.append(f"Only {small} measured requests per version: intervals are wide and p99 is the "
                       "maximum in disguise.")
    return caveats


def build_verdict(a: Side, b: Side, *, latency: Sequence[MetricComparison], memory: MemoryComparison,
                  accuracy: AccuracyComparison, agreement: Agreement, floor_a: DecodeFloor, floor_b: DecodeFloor,
                  caveats: list[str], server: ServerComparison | None = None) -> Verdict:
    """One sentence per question, B vs A (timings: :func:`timing_sentence`)."""
    return Verdict(
        memory=memory_sentence(memory, a, b),
        latency=timing_sentence(metric_named(latency, "latency_ms"), server, a, b),
        ttft=timing_sentence(metric_named(latency, "ttft_ms"), server, a, b),
        tpot=timing_sentence(metric_named(latency, "tpot_ms"), server, a, b),
        accuracy=accuracy_sentence(accuracy, a, b),
        agreement=agreement_sentence(agreement, a, b),
        floor=floor_sentence(floor_a, floor_b, a, b),
        caveats=caveats,
    )
