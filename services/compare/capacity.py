"""Capacity and cost of each version from a stored sweep (:mod:`services.bench.sweep`).

Everything is recomputed from the stored rows: each level's numbers from its requests
(``requests.level``; :func:`services.bench.goodput.level_stats`, at the sweep's targets or at others
given here), which levels finished from ``sweep_levels``. Per version:

- capacity: the highest goodput over its finished levels (the mean over repeats of one load value),
  with a 95 % interval where that load was repeated (:func:`services.bench.goodput.capacity`);
- cost per 1,000 images at capacity: ``price per GPU-hour / (capacity x 3600) x 1000`` (one image per
  request), and the GPUs needed for a demand in images/s: ``ceil(demand / capacity)``; both None
  without a price (or a demand), or without a capacity above 0;
- how many requests of this workload its KV cache holds at once, where the engine states its KV-cache
  room (vLLM) and the run recorded it (:func:`kv_max_concurrency`); "unknown" otherwise.

A level is measured on one serving instance of the version: on a GPU server that is one GPU; on a
machine without a GPU (the embedded CPU demo) "per GPU" reads "per serving instance", and the notes
say so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from services.bench.goodput import Capacity, LatencyTargets, LevelStats, capacity, level_stats
from services.bench.stats import RequestRecord
from services.bench.sweep import level_words
from services.bench.store import RunInfo, RunStore
from services.compare.manifest_fields import first_number, manifest_gpus, version_entry
from services.core.versions import version_label

KV_CONCURRENCY_KEYS = ("kv_cache_max_concurrency", "max_concurrency")  # as the engine states it
KV_TOKENS_KEYS = ("kv_cache_tokens", "gpu_kv_cache_tokens")  # the KV cache's size in tokens


@dataclass
class LevelResult:
    """One level of one version, recomputed from its stored requests."""

    idx: int
    load: str
    value: float
    repeat: int
    status: str  # completed | saturated | cut short
    reason: str | None
    stats: LevelStats

    @property
    def finished(self) -> bool:
        return self.status != "cut short"


@dataclass
class VersionCapacity:
    version: str
    label: str
    levels: list[LevelResult]
    capacity: Capacity
    stopped: str | None  # why its sweep stopped early (saturated), else None
    cost_per_1k_images: float | None
    gpus_needed: int | None
    kv_max_concurrency: float | None
    kv_note: str

    @property
    def capacity_rps(self) -> float | None:
        return self.capacity.rps


@dataclass
class SweepResult:
    run_id: int
    status: str
    reason: str | None
    load: str  # closed (concurrency levels) | open (request rates)
    targets: LatencyTargets
    price_per_gpu_hour: float | None
    demand_rps: float | None
    versions: dict[str, VersionCapacity]
    on_gpu: bool
    notes: list[str] = field(default_factory=list)

    def finished_levels(self) -> int:
        return sum(1 for vc in self.versions.values() for lv in vc.levels if lv.finished)


def cost_per_1k_images(capacity_rps: float | None, price_per_gpu_hour: float | None) -> float | None:
    """Dollars (or whatever the price is in) per 1,000 images at ``capacity_rps`` on one GPU."""
    if price_per_gpu_hour is None or not capacity_rps or capacity_rps <= 0:
        return None
    return price_per_gpu_hour / (capacity_rps * 3600.0) * 1000.0


def gpus_needed(demand_rps: float | None, capacity_rps: float | None) -> int | None:
    """GPUs that serve ``demand_rps`` images/s at the targets, each at its capacity."""
    if demand_rps is None or not capacity_rps or capacity_rps <= 0:
        return None
    return max(1, math.ceil(demand_rps / capacity_rps - 1e-9))


def kv_max_concurrency(manifest: Mapping[str, Any], version: str,
                       tokens_per_request: float | None) -> tuple[float | None, str]:
    """How many requests of this workload the version's KV cache holds at once, and how that is known.

    From the version's manifest entry (``manifest["quantization"][v]``: the metrics port's
    ``qwen_engine_*`` gauges without their prefix, or the engine's report): the KV cache's size in
    tokens (``kv_cache_tokens``) divided by this workload's tokens per request (mean input + output
    tokens of the measured requests); else the maximum concurrency the engine states for its longest
    request (``kv_cache_max_concurrency``, as vLLM logs it); else unknown. An engine that knows its
    KV cache publishes the gauge ``qwen_engine_kv_cache_tokens{version}`` (or
    ``qwen_engine_kv_cache_max_concurrency``) on the metrics port, or writes ``kv_cache_tokens`` into
    its ``engine_report.json``: :func:`services.bench.manifest.served_quantization` records either
    (the embedded vLLM engine publishes both: ``services.serving.vllm_backend_model.memory_split``).
    An OpenAI-compatible variant (``vllm serve``) has the same keys in its entry: its ``/metrics``
    ``vllm:cache_config_info`` (``num_gpu_blocks`` x ``block_size`` tokens, vLLM's own max concurrency),
    read at the run's preflight (``services.client.openai_metrics.VllmServerMetrics.cache_facts``).
    """
    entry = version_entry(manifest, version)
    tokens = first_number(*(entry.get(k) for k in KV_TOKENS_KEYS))
    if tokens is not None and tokens_per_request:
        return tokens / tokens_per_request, (f"KV cache of {tokens:,.0f} tokens (run manifest) / "
                                             f"{tokens_per_request:.0f} tokens per request")
    stated = first_number(*(entry.get(k) for k in KV_CONCURRENCY_KEYS))
    if stated is not None:
        return stated, "as the engine states it for its longest request (run manifest)"
    return None, "unknown: the engine states no KV-cache room (it allocates per request)"


def _levels(store: RunStore, run_id: int, version: str, targets: LatencyTargets,
            by_level: Mapping[int, list[RequestRecord]]) -> list[LevelResult]:
    return [LevelResult(lv.idx, lv.load, lv.value, lv.repeat, lv.status, lv.reason,
                        level_stats(by_level.get(lv.idx, []), targets))
            for lv in store.get_levels(run_id) if lv.version == version]


def is_sweep(run: RunInfo | None) -> bool:
    return run is not None and isinstance(run.config.get("sweep"), Mapping)


def sweep_result(store: RunStore, run_id: int, *, price_per_gpu_hour: float | None = None,
                 demand_rps: float | None = None, targets: LatencyTargets | None = None) -> SweepResult | None:
    """The sweep's capacity and cost per version (None when the run is no sweep); ``targets``: the
    sweep's own unless given."""
    run = store.get_run(run_id)
    if not is_sweep(run):
        return None
    assert run is not None
    spec = run.config["sweep"]
    targets = targets or LatencyTargets.from_dict(spec.get("targets"))
    by_level: dict[int, list[RequestRecord]] = {}
    for r in store.get_requests(run_id):
        if r.level is not None:
            by_level.setdefault(r.level, []).append(r)
    on_gpu = bool(manifest_gpus(run.manifest))
    versions = {}
    for v in [str(x) for x in run.config.get("versions") or []]:
        levels = _levels(store, run_id, v, targets, by_level)
        cap = capacity((lv.value, lv.stats.goodput_rps) for lv in levels if lv.finished)
        tokens = [lv.stats.mean_input_tokens + lv.stats.mean_output_tokens for lv in levels
                  if lv.stats.mean_input_tokens is not None and lv.stats.mean_output_tokens is not None]
        kv, kv_note = kv_max_concurrency(run.manifest, v, sum(tokens) / len(tokens) if tokens else None)
        stopped = next((lv.reason for lv in levels if lv.status == "saturated"), None)
        versions[v] = VersionCapacity(v, version_label(v), levels, cap, stopped,
                                      cost_per_1k_images(cap.rps, price_per_gpu_hour),
                                      gpus_needed(demand_rps, cap.rps), kv, kv_note)
    notes = []
    if not on_gpu:
        notes.append("No GPU in this run's manifest: each version was served on this machine's CPU, so "
                     "'per GPU' reads 'per serving instance'.")
    if price_per_gpu_hour is None:
        notes.append("No price per GPU-hour set: cost per 1,000 images unknown.")
    if run.status != "completed":
        notes.append(f"The sweep is {run.status}" + (f": {run.reason}" if run.reason else "")
                     + "; only its finished levels count.")
    return SweepResult(run_id, run.status, run.reason, str(spec.get("load", "closed")), targets, price_per_gpu_hour,
                       demand_rps, versions, on_gpu, notes)


JSON_LEVEL_KEYS = ("throughput_rps", "goodput_rps", "p50_ms", "p90_ms", "p99_ms", "ttft_p50_ms", "tpot_p50_ms")


def _round(v: Any, nd: int = 4) -> Any:
    return round(v, nd) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v)


def sweep_json(result: SweepResult, recommendation: str | None) -> dict[str, Any]:
    """The sweep as ``qwen-bench sweep --json`` prints it: per version its levels, capacity and cost."""
    versions = {}
    for v, vc in result.versions.items():
        levels = []
        for lv in vc.levels:
            s = asdict(lv.stats)
            levels.append({"level": lv.idx, "load": lv.load, "value": lv.value, "repeat": lv.repeat,
                           "status": lv.status, **{k: _round(s[k]) for k in JSON_LEVEL_KEYS},
                           "requests": s["requests"], "good": s["good"], "failures": s["failures"]})
        c = vc.capacity
        versions[v] = {"label": vc.label, "levels": levels, "capacity_rps": _round(c.rps),
                       "capacity_ci": None if c.lo is None else [_round(c.lo), _round(c.hi)],
                       "capacity_at": c.load, "cost_per_1k_images": _round(vc.cost_per_1k_images, 6),
                       "gpus_needed": vc.gpus_needed, "kv_max_concurrency": _round(vc.kv_max_concurrency, 2),
                       "stopped": vc.stopped}
    return {"run_id": result.run_id, "status": result.status, "load": result.load,
            "targets": result.targets.to_dict(), "price_per_gpu_hour": result.price_per_gpu_hour,
            "demand_rps": result.demand_rps, "versions": versions, "recommendation": recommendation,
            "notes": result.notes}


def level_table(result: SweepResult) -> tuple[list[str], list[list[str]]]:
    """The sweep table: one row per level (columns, rows as text)."""
    def f(v: float | None, nd: int = 1) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    load = "concurrency" if result.load == "closed" else "rate (req/s)"
    columns = ["version", load, "rep", "status", "ok/n", "met targets", "throughput/s", "goodput/s", "p50 ms",
               "p90 ms", "p99 ms", "TTFT p50", "TPOT p50"]
    rows = []
    for vc in result.versions.values():
        for lv in vc.levels:
            s = lv.stats
            rows.append([vc.label, f"{lv.value:g}", str(lv.repeat), lv.status, f"{s.ok}/{s.requests}",
                         "-" if s.good_share is None else f"{s.good_share * 100:.0f}%", f(s.throughput_rps, 2),
                         f(s.goodput_rps, 2), f(s.p50_ms), f(s.p90_ms), f(s.p99_ms), f(s.ttft_p50_ms),
                         f(s.tpot_p50_ms, 2)])
    return columns, rows


def capacity_table(result: SweepResult) -> tuple[list[str], list[list[str]]]:
    """One row per version: capacity (with its interval), where, cost, GPUs needed, KV room."""
    columns = ["version", "capacity (images/s)", "95% CI", "at", "cost per 1,000 images", "GPUs needed",
               "KV cache holds (requests)", "stopped"]
    rows = []
    for vc in result.versions.values():
        c = vc.capacity
        rows.append([vc.label, "unknown" if c.rps is None else f"{c.rps:.3f}",
                     (c.note or "") if c.lo is None else f"[{c.lo:.3f}, {c.hi:.3f}]",
                     "-" if c.load is None else level_words(result.load, c.load),
                     "unknown" if vc.cost_per_1k_images is None else f"${vc.cost_per_1k_images:.4f}",
                     "unknown" if vc.gpus_needed is None else str(vc.gpus_needed),
                     "unknown" if vc.kv_max_concurrency is None else f"{vc.kv_max_concurrency:.1f}",
                     vc.stopped or "no"])
    return columns, rows

