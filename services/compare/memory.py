"""Memory of the two sides, from the run's samples and its manifest.

Per version: baseline, peak and delta of the memory of the processes serving it (GPU memory
from NVML, else host resident memory on a CPU-only server), and the split into weights (the
server's ``qwen_engine_weight_bytes{part="model"}`` gauge, else the run manifest), KV-cache room
and the rest. KV room is known only where the server pre-allocates it and states how much (the
embedded vLLM engine's ``qwen_engine_kv_cache_bytes`` gauge or ``kv_cache_bytes`` in its engine
report, recorded in the manifest); otherwise it is reported as unknown or as not reserved, never
invented. :func:`split_text` writes the split in words, "unknown" where not stated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from services.bench.stats import MemorySeriesSummary, RequestRecord, memory_summary
from services.bench.store import RunInfo, RunStore
from services.compare.manifest_fields import (
    first_number,
    lookup,
    manifest_gpus,
    server_backend,
    version_entry,
)
from services.core import settings
from services.core.units import format_bytes

WEIGHT_METRIC = "qwen_engine_weight_bytes"


@dataclass
class MemorySide:
    """The memory of one side (bytes).

    ``source``: what ``baseline``/``peak``/``delta`` measure: ``"gpu-process"`` (NVML, the GPU
    memory of the processes serving this version), ``"host-process"`` (their resident host memory:
    a CPU-only server) or ``"unknown"``.
    Split of the peak: ``weights_bytes`` (``weights_source`` says from where), ``kv_room_bytes``
    (KV-cache room; None: unknown or not reserved, ``kv_note`` says which) and ``rest_bytes``.
    """

    source: str
    baseline_bytes: int | None
    peak_bytes: int | None
    delta_bytes: int | None
    samples: int
    weights_bytes: int | None
    weights_source: str
    decoder_linear_bytes: int | None
    decoder_linear_bf16_bytes: int | None
    kv_room_bytes: int | None
    kv_note: str
    rest_bytes: int | None
    rest_note: str
    notes: list[str] = field(default_factory=list)


@dataclass
class MemoryComparison:
    a: MemorySide
    b: MemorySide
    device: list[MemorySeriesSummary]  # whole-GPU totals (not specific to a version)
    saved_bytes: float | None  # A - B on the basis below
    saved_pct: float | None
    basis: str  # "weights", "peak of the serving processes" or "unknown"
    notes: list[str] = field(default_factory=list)


def gauge_weight_bytes(samples: pd.DataFrame, version: str, part: str = "model",
                       model: str | None = None) -> int | None:
    """The last value of the server's ``qwen_engine_weight_bytes{part=...}`` gauge of a version
    stored among the run's samples, or None."""
    if samples.empty:
        return None
    df = samples[(samples["version"].astype(str) == str(version))
                 & samples["kind"].astype(str).str.startswith(WEIGHT_METRIC + "{")
                 & samples["kind"].astype(str).str.contains(f'part="{part}"', regex=False)]
    if model is not None:
        df = df[df["model"].isna() | (df["model"].astype(str) == model)]
    df = df.dropna(subset=["memory_bytes"])
    if df.empty:
        return None
    return int(df.sort_values("t_mono")["memory_bytes"].iloc[-1])


def manifest_weights(manifest: Mapping[str, Any], version: str) -> dict[str, float | None]:
    """Weight bytes of a version as the run manifest records them: ``model``, ``decoder_linear``,
    ``decoder_linear_bf16`` (None where absent).

    Read from the version's entry (:func:`services.compare.manifest_fields.version_entry`):
    ``weight_bytes`` (a mapping by part, as the gauges give it), else the engine report's ``model_weight_bytes_after``,
    ``decoder_linear_bytes_after`` and ``decoder_linear_bytes_before`` (``services.serving.engine``).
    """
    e = version_entry(manifest, version)
    reports = [x for x in (e, e.get("engine_report")) if isinstance(x, Mapping)]

    def report(key: str) -> float | None:
        return first_number(*(x.get(key) for x in reports))

    w = e.get("weight_bytes")
    by_part = w if isinstance(w, Mapping) else {"model": w}
    return {
        "model": first_number(by_part.get("model"), report("model_weight_bytes_after")),
        "decoder_linear": first_number(by_part.get("decoder_linear"), report("decoder_linear_bytes_after")),
        "decoder_linear_bf16": first_number(by_part.get("decoder_linear_bf16"),
                                            report("decoder_linear_bytes_before")),
    }


def _version_series(summaries: Sequence[MemorySeriesSummary], kind: str, version: str,
                    model: str) -> MemorySeriesSummary | None:
    for s in summaries:
        if s.kind == kind and str(s.version) == str(version) and (s.model in (None, model)):
            return s
    return None


def _serving_series(summaries: Sequence[MemorySeriesSummary], version: str,
                    model: str) -> tuple[MemorySeriesSummary | None, str]:
    """The memory series of the version's serving processes and what it measures (GPU memory,
    else resident host memory, else ``"unknown"``)."""
    series = _version_series(summaries, "gpu", version, model)
    if series is not None:
        return series, "gpu-process"
    series = _version_series(summaries, "host", version, model)
    if series is not None:
        return series, "host-process"
    return None, "unknown"


@dataclass
class _Weights:
    """Weight bytes of a version: the server's gauges first, else the run manifest."""

    model: int | float | None
    source: str
    decoder_linear: float | None
    decoder_linear_bf16: float | None


def _weights(samples: pd.DataFrame, manifest: Mapping[str, Any], version: str, model: str) -> _Weights:
    gauge = {part: gauge_weight_bytes(samples, version, part, model)
             for part in ("model", "decoder_linear", "decoder_linear_bf16")}
    man = manifest_weights(manifest, version)
    if gauge["model"] is not None:
        weights, wsrc = gauge["model"], f'server gauge {WEIGHT_METRIC}{{part="model"}}'
    elif man["model"] is not None:
        weights, wsrc = int(man["model"]), "run manifest"
    else:
        weights, wsrc = None, "unknown"
    dl = gauge["decoder_linear"] if gauge["decoder_linear"] is not None else man["decoder_linear"]
    dlb = gauge["decoder_linear_bf16"] if gauge["decoder_linear_bf16"] is not None else man["decoder_linear_bf16"]
    return _Weights(weights, wsrc, dl, dlb)


def _kv_and_rest(manifest: Mapping[str, Any], version: str, weights: int | float | None, peak: int | None,
                 source: str) -> tuple[float | None, str, float | None, str]:
    """``(kv room, how, rest, how)``: KV room where the server reports it or pre-allocates it and
    the manifest says how much, else not reserved (allocated per request, inside the rest)."""
    entry = version_entry(manifest, version)
    # Where a server reports them (vLLM logs its KV-cache size; a manifest may carry it):
    kv_direct = first_number(entry.get("kv_cache_bytes"))
    util = first_number(entry.get("gpu_memory_utilization"))
    gpu_total = first_number(*(g.get("memory_total_bytes") for g in manifest_gpus(manifest)))
    rest_known = first_number(entry.get("non_kv_bytes"))
    kv: float | None = None
    rest: float | None = None
    if kv_direct is not None:
        kv, kv_note = kv_direct, "stated by the engine at load (recorded in the run manifest)"
        if weights is not None and peak is not None and source != "unknown" and peak >= weights + kv:
            rest = peak - weights - kv
            rest_note = "peak minus weights minus KV room"
        elif weights is not None and peak is not None and source != "unknown":
            rest_note = "unknown: the peak is below weights plus KV room (part of them is not resident)"
        else:
            rest_note = ("unknown: the engine stated no weight memory" if weights is None
                         else "unknown: no memory samples of the serving processes")
    elif server_backend(manifest) == "vllm" or util is not None:
        if util is not None and gpu_total is not None and weights is not None and rest_known is not None:
            kv = util * gpu_total - weights - rest_known
            rest = rest_known
            kv_note = (f"the version's share ({util:g} x {format_bytes(gpu_total)}) minus weights minus "
                       "the rest (recorded in the manifest)")
            rest_note = "recorded in the run manifest"
        else:
            missing = [n for n, v in (("gpu_memory_utilization", util), ("GPU total", gpu_total),
                                      ("weights", weights), ("non-KV rest", rest_known)) if v is None]
            kv_note = f"unknown: the server pre-allocates KV cache, but {', '.join(missing)} not recorded"
            rest_note = "unknown"
    else:
        kv_note = ("not reserved: this engine allocates KV cache per request (no pre-allocated "
                   "room); what it uses is inside the rest") if weights is not None else "unknown"
        if weights is not None and peak is not None and source != "unknown":
            rest = peak - weights
            rest_note = ("peak minus weights: activations, KV cache in use, CUDA context"
                         if source == "gpu-process" else
                         "peak minus weights: interpreter, libraries, activations, KV cache in use")
        else:
            rest_note = "unknown"
    return kv, kv_note, rest, rest_note


def memory_side(samples: pd.DataFrame, manifest: Mapping[str, Any], version: str, *,
                model: str = settings.MODEL_NAME, first_request_t: float | None = None,
                t0: float | None = None, t1: float | None = None) -> MemorySide:
    """Baseline/peak/delta of the version's serving processes and the weights / KV / rest split."""
    summaries = memory_summary(samples, t0=t0, t1=t1, first_request_t=first_request_t) \
        if not samples.empty else []
    series, source = _serving_series(summaries, version, model)
    w = _weights(samples, manifest, version, model)
    weights, dl, dlb = w.model, w.decoder_linear, w.decoder_linear_bf16
    peak = series.peak_bytes if series else None
    kv, kv_note, rest, rest_note = _kv_and_rest(manifest, version, weights, peak, source)
    notes: list[str] = []
    scope = (manifest.get("memory_scopes") or {}).get(version) or manifest.get("memory_scope")  # per variant
    if source == "unknown" and isinstance(scope, Mapping) and scope.get("per_version") == "unknown":
        notes.append(f"The memory per version is unknown: {scope.get('why')}; only the whole GPU's "
                     "memory was read (every process on it).")
    elif source == "unknown":
        notes.append("No memory samples of this version's serving processes were recorded.")
    if weights is not None and peak is not None and weights > peak and source == "host-process":
        notes.append("The weight bytes exceed the resident memory: part of the weights is not resident "
                     "(memory-mapped and not yet touched, or shared).")
    return MemorySide(
        source=source,
        baseline_bytes=series.baseline_bytes if series else None,
        peak_bytes=peak, delta_bytes=series.delta_bytes if series else None,
        samples=series.samples if series else 0,
        weights_bytes=None if weights is None else int(weights), weights_source=w.source,
        decoder_linear_bytes=None if dl is None else int(dl),
        decoder_linear_bf16_bytes=None if dlb is None else int(dlb),
        kv_room_bytes=None if kv is None else int(kv), kv_note=kv_note,
        rest_bytes=None if rest is None else int(rest), rest_note=rest_note, notes=notes,
    )


def split_text(side: MemorySide) -> str:
    """``weights / KV cache / rest`` of one side, each "unknown" where not stated ("not reserved"
    for an engine that keeps no KV room)."""
    def fmt(v: int | None) -> str:
        return "unknown" if v is None else format_bytes(v)

    kv = "not reserved" if side.kv_room_bytes is None and side.kv_note.startswith("not reserved") \
        else fmt(side.kv_room_bytes)
    return f"weights {fmt(side.weights_bytes)} / KV cache {kv} / rest {fmt(side.rest_bytes)}"


def compare_memory(a: MemorySide, b: MemorySide, device: list[MemorySeriesSummary]) -> MemoryComparison:
    """Memory saved by B: on the weights when both are known, else on the serving processes' peak."""
    notes = []
    if a.weights_bytes is not None and b.weights_bytes is not None:
        saved, basis, ref = a.weights_bytes - b.weights_bytes, "weights", a.weights_bytes
    elif a.peak_bytes is not None and b.peak_bytes is not None and a.source == b.source:
        saved, basis, ref = a.peak_bytes - b.peak_bytes, "peak of the serving processes", a.peak_bytes
        notes.append("Weight bytes are unknown: the saving is on the serving processes' peak memory.")
    else:
        saved, basis, ref = None, "unknown", None
    if device and basis != "unknown":
        notes.append("Whole-GPU totals count every process on the GPU (both versions together) and, under "
                     "vLLM, the pre-allocated KV cache: they do not show the saving; the split does.")
    return MemoryComparison(a, b, device, saved, (saved / ref * 100.0) if saved is not None and ref else None,
                            basis, notes)


def first_send_t(rs: Iterable[RequestRecord]) -> float | None:
    """The first send of the run (warm-up included: the memory baseline precedes it)."""
    sends = [r.send_ns for r in rs if r.send_ns is not None]
    return min(sends) / 1e9 if sends else None


def memory_window(run: RunInfo, rs: Sequence[RequestRecord]) -> tuple[float | None, float | None]:
    """The window of the run's memory samples (``perf_counter`` seconds): the benchmark's
    ``summary["sample_window"]`` when recorded, else up to the last answer."""
    w = lookup(run.summary, "sample_window") if isinstance(run.summary, Mapping) else None
    t0, t1 = (first_number(lookup(w, "t0")), first_number(lookup(w, "t1"))) if w else (None, None)
    if t1 is None:
        recvs = [r.recv_ns for r in rs if r.recv_ns is not None]
        t1 = max(recvs) / 1e9 if recvs else None
    return t0, t1


def run_memory_side(run: RunInfo, samples: pd.DataFrame, requests: Sequence[RequestRecord],
                    version: str) -> MemorySide:
    """:func:`memory_side` of one version of a stored run (``requests``: all of them, warm-up included)."""
    t0, t1 = memory_window(run, requests)
    variant = next((v for v in run.manifest.get("variants") or [] if isinstance(v, Mapping)
                    and v.get("key") == version), {})  # a variant's memory is stored under its own model
    model = variant.get("model") or run.config.get("model", settings.MODEL_NAME)
    return memory_side(samples, run.manifest, version, model=str(model),
                       first_request_t=first_send_t(requests), t0=t0, t1=t1)


def device_memory(run: RunInfo, samples: pd.DataFrame,
                  requests: Sequence[RequestRecord]) -> list[MemorySeriesSummary]:
    """The whole-GPU totals of a stored run's samples (not specific to a version)."""
    if samples.empty:
        return []
    t0, t1 = memory_window(run, requests)
    return [s for s in memory_summary(samples, t0=t0, t1=t1, first_request_t=first_send_t(requests))
            if s.kind == "device"]


def compare_run_memory(store: RunStore, run_a: RunInfo, requests_a: Sequence[RequestRecord], version_a: str,
                       run_b: RunInfo, requests_b: Sequence[RequestRecord], version_b: str) -> MemoryComparison:
    """:func:`compare_memory` of version A of ``run_a`` and version B of ``run_b`` (the same run or two)."""
    samples_a = store.samples_frame(run_a.id)
    samples_b = samples_a if run_a.id == run_b.id else store.samples_frame(run_b.id)
    return compare_memory(run_memory_side(run_a, samples_a, requests_a, version_a),
                          run_memory_side(run_b, samples_b, requests_b, version_b),
                          device_memory(run_a, samples_a, requests_a))
