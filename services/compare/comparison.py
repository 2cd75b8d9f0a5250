"""Paired comparison of two model versions (bf16 and fp8) from stored benchmark runs.

No streamlit here: ``pages/3_Compare.py`` and ``services.compare.report`` are views over it.

What it answers: what does version B (fp8, v2) buy over version A (bf16, v1), and what does it cost?
Every number comes from the run store (:class:`services.bench.store.RunStore`): the requests, the memory
samples (and the ``qwen_engine_weight_bytes`` gauges the sampler stored with them), the run's
config and manifest. Nothing is assumed: what the data does not say is reported as unknown.

:func:`build_comparison` fills one :class:`Comparison`, one function per part, each in the module of
its concern (the module's docstring gives the rules):

* :mod:`services.compare.pairing`: the two sides and how their requests are paired;
* :mod:`services.compare.differences`: every difference (B minus A) and its bootstrap interval;
* :mod:`services.compare.speed`: latency, TTFT, TPOT and throughput;
* :mod:`services.compare.accuracy`: accuracy against the ground truth (recovered by
  :func:`services.image_sets.image_set.truth_for_run`) and agreement between the versions, scored with
  the boxes of each request (:mod:`services.compare.request_boxes`);
* :mod:`services.compare.memory`: memory from the samples and the manifest;
* :mod:`services.compare.decode_floor`: decode against the memory-bandwidth floor;
* :mod:`services.compare.verdict`: the sentences and caveats;
* :mod:`services.compare.runs` (the runs one can compare) and :mod:`services.compare.export`
  (the comparison as plain data and CSV rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from services.bench.stats import RequestRecord
from services.bench.store import RunInfo, RunStore
from services.compare.accuracy import AccuracyComparison, Agreement, TruthSource, compare_answers
from services.compare.decode_floor import DecodeFloor, run_decode_floor
from services.compare.differences import BOOT_SEED, N_BOOT
from services.compare.memory import MemoryComparison, compare_run_memory
from services.compare.pairing import Side, pair_sides
from services.compare.runs import describe_image_set, run_order, run_record
from services.compare.speed import (
    MetricComparison,
    ServerComparison,
    ThroughputComparison,
    compare_latency,
    compare_server,
    compare_throughput,
    metric_named,
)
from services.compare.verdict import Verdict, build_verdict, run_caveats
from services.core.versions import version_label
from services.image_sets.image_set import truth_for_run


@dataclass
class Comparison:
    """Everything the Compare page and the report show."""

    a: Side
    b: Side
    paired: bool
    pairing: str  # in words
    interleaved: bool
    runs: list[dict[str, Any]]  # id, status, created_at, reason, config, manifest of each run
    image_set: str
    measured_a: int
    measured_b: int
    unpaired_a: int
    unpaired_b: int
    latency: list[MetricComparison]
    throughput: ThroughputComparison
    memory: MemoryComparison
    accuracy: AccuracyComparison
    agreement: Agreement
    floor_a: DecodeFloor
    floor_b: DecodeFloor
    verdict: Verdict
    notes: list[str] = field(default_factory=list)
    server: ServerComparison | None = None  # the server's own timings (vllm:* histograms), bursts

    def metric(self, name: str) -> MetricComparison:
        return metric_named(self.latency, name)


@dataclass
class _SideData:
    """One side as stored: its run, every request of the run (warm-up included) and the side's
    measured requests."""

    side: Side
    run: RunInfo
    requests: list[RequestRecord]
    measured: list[RequestRecord]


def _load_sides(store: RunStore, a: tuple[int, str], b: tuple[int, str]) -> tuple[_SideData, _SideData]:
    """Both sides' runs and requests; labels say the run when the sides come from two runs."""
    (run_a_id, va), (run_b_id, vb) = (int(a[0]), str(a[1])), (int(b[0]), str(b[1]))
    run_a, run_b = store.get_run(run_a_id), store.get_run(run_b_id)
    for rid, run in ((run_a_id, run_a), (run_b_id, run_b)):
        if run is None:
            raise KeyError(f"no run {rid}")
    assert run_a is not None and run_b is not None
    same_run = run_a_id == run_b_id
    if same_run and va == vb:
        raise ValueError("choose two different versions (or two different runs)")
    side_a = Side(run_a_id, va, version_label(va) + ("" if same_run else f", run {run_a_id}"))
    side_b = Side(run_b_id, vb, version_label(vb) + ("" if same_run else f", run {run_b_id}"))
    if side_a.label == side_b.label:
        side_a.label, side_b.label = f"A: {side_a.label}", f"B: {side_b.label}"
    all_a = store.get_requests(run_a_id)
    all_b = all_a if same_run else store.get_requests(run_b_id)
    ra = [r for r in all_a if r.version == va and not r.warmup]
    rb = [r for r in all_b if r.version == vb and not r.warmup]
    for side, rs in ((side_a, ra), (side_b, rb)):
        if not rs:
            raise ValueError(f"run {side.run_id} has no measured requests of version {side.version}")
    return _SideData(side_a, run_a, all_a, ra), _SideData(side_b, run_b, all_b, rb)


def _image_set(a: _SideData, b: _SideData, same_run: bool) -> str:
    image_set = describe_image_set(a.run.config)
    if not same_run and describe_image_set(b.run.config) != image_set:
        image_set += f" vs {describe_image_set(b.run.config)}"
    return image_set


def build_comparison(
    store: RunStore,
    a: tuple[int, str],
    b: tuple[int, str],
    *,
    truth: TruthSource | None = None,
    n_boot: int = N_BOOT,
    seed: int | None = BOOT_SEED,
) -> Comparison:
    """Compare version ``a[1]`` of run ``a[0]`` with version ``b[1]`` of run ``b[0]`` (B - A).

    ``truth(run, image_ids)`` gives each image's ground-truth grid boxes (None: unknown); the
    default (:func:`services.image_sets.image_set.truth_for_run`) looks in the run's manifest,
    regenerates generated sets from their seed, and reads the bundled samples' and dataset folders' labels.
    Raises ``KeyError`` for a run that does not exist and ``ValueError`` for a side without requests.
    """
    sa, sb = _load_sides(store, a, b)
    same_run = sa.run.id == sb.run.id
    pairing = pair_sides(sa.measured, sb.measured, sa.side, sb.side, same_run)
    latency = compare_latency(sa.measured, sb.measured, pairing.pairs, n_boot=n_boot, seed=seed)
    throughput = compare_throughput(sa.measured, sb.measured, pairing.pairs, n_boot=n_boot, seed=seed)
    accuracy, agree = compare_answers(sa.run, sb.run, sa.measured, sb.measured, pairing, truth or truth_for_run,
                                      n_boot=n_boot, seed=seed)
    memory = compare_run_memory(store, sa.run, sa.requests, sa.side.version, sb.run, sb.requests, sb.side.version)
    tpot = metric_named(latency, "tpot_ms")
    floor_a = run_decode_floor(sa.run.manifest, sa.side.version, tpot.values_a, memory.a.weights_bytes,
                               memory.a.decoder_linear_bytes)
    floor_b = run_decode_floor(sb.run.manifest, sb.side.version, tpot.values_b, memory.b.weights_bytes,
                               memory.b.decoder_linear_bytes)
    server = compare_server(store, sa.run, sa.side.version, sa.measured, sb.run, sb.side.version, sb.measured,
                            n_boot=n_boot, seed=seed)
    caveats = run_caveats([sa.run, sb.run], [(sa.side, sa.measured), (sb.side, sb.measured)])
    verdict = build_verdict(sa.side, sb.side, latency=latency, memory=memory, accuracy=accuracy, agreement=agree,
                            floor_a=floor_a, floor_b=floor_b, caveats=caveats, server=server)
    return Comparison(
        a=sa.side, b=sb.side, paired=pairing.paired, pairing=pairing.description,
        interleaved=pairing.interleaved, runs=[run_record(sa.run)] + ([] if same_run else [run_record(sb.run)]),
        image_set=_image_set(sa, sb, same_run), measured_a=len(sa.measured), measured_b=len(sb.measured),
        unpaired_a=pairing.unpaired_a, unpaired_b=pairing.unpaired_b, latency=latency, throughput=throughput,
        memory=memory, accuracy=accuracy, agreement=agree, floor_a=floor_a, floor_b=floor_b, verdict=verdict,
        notes=pairing.notes + throughput.notes + accuracy.notes + memory.notes, server=server,
    )


def compare_run(store: RunStore, run_id: int, versions: Sequence[str] | None = None, **kwargs: Any) -> Comparison:
    """Compare two versions of one paired run (default: its first two versions, e.g. 1 vs 2)."""
    run = store.get_run(run_id)
    vs = [str(v) for v in versions] if versions else run_order(store.versions(run_id), run.config if run else {})
    if len(vs) < 2:
        raise ValueError(f"run {run_id} asked only version(s) {vs}: a comparison needs two")
    return build_comparison(store, (run_id, vs[0]), (run_id, vs[1]), **kwargs)
