"""Sampler samples, their long format (the run store's ``samples`` rows) and chart series.

A :class:`Sample` is one tick of the sampler (:mod:`services.bench.sampler`): GPU and process
readings (:mod:`services.bench.memory_readings`) and the newest metrics reading
(:mod:`services.bench.triton_metrics`). :func:`sample_rows` turns it into :class:`SampleRow` records
(one memory reading a row, what the run store writes); :func:`series_for_chart` turns samples or
stored rows into a long-format frame for the memory charts, labelled by :func:`chart_label`.

Time: ``t_mono`` is ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, system-wide), the same
clock as the benchmark's ``time.perf_counter_ns()`` request stamps, so ``send_ns / 1e9`` can be
compared with ``t_mono`` directly. ``t_wall`` is ``time.time()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from services.bench.memory_readings import GpuReading, ProcessReading
from services.bench.triton_metrics import parse_series_key, series_key

_ROW_LABELS = frozenset({"model", "version", "gpu_uuid"})


@dataclass(frozen=True)
class Sample:
    """One tick of the sampler. Treat the dicts as read-only.

    ``metrics`` maps a series key (``name{label="value",...}``, labels sorted, see
    :func:`series_key`) to its value: the newest reading of the metrics endpoint, taken at
    ``metrics_t_mono`` (``time.perf_counter()`` seconds; ``metrics_t_wall``, ``time.time()``).
    Those are ``t_mono``/``t_wall`` on a tick that read the endpoint and an earlier tick's times on
    the ticks between two reads (see :attr:`metrics_fresh`); None when there are no metrics, or in
    a sample built by hand (whose metrics then count as read at ``t_mono``).
    ``source_errors`` maps a failing source to its last error message, ``source_error_times`` to
    the wall time of that failure; a source in back-off keeps its error until it succeeds again.
    """

    t_mono: float
    t_wall: float
    gpus: tuple[GpuReading, ...] = ()
    processes: tuple[ProcessReading, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    source_errors: dict[str, str] = field(default_factory=dict)
    source_error_times: dict[str, float] = field(default_factory=dict)
    metrics_t_mono: float | None = None
    metrics_t_wall: float | None = None

    @property
    def metrics_fresh(self) -> bool:
        """Whether ``metrics`` was read at this tick (not carried from an earlier one)."""
        return self.metrics_t_mono is None or self.metrics_t_mono == self.t_mono

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of the series ``name`` with exactly these labels, or None."""
        return self.metrics.get(series_key(name, labels))

    def metric_series(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every series named ``name`` as ``(labels, value)`` pairs."""
        out = []
        for key, value in self.metrics.items():
            n, labels = parse_series_key(key)
            if n == name:
                out.append((labels, value))
        return out


@dataclass(frozen=True)
class SampleRow:
    """One memory reading in long format: the shape of the run store's ``samples`` table.

    ``source``: ``"nvml"``, ``"host"`` or ``"triton"`` (the metrics endpoint).
    ``kind``: ``"device"`` (a GPU's total used memory), ``"gpu"`` (one process's GPU memory),
    ``"host"`` (one process's resident memory, shared pages counted once: its PSS), or a ``qwen_*_bytes`` gauge exported by the
    server, as its series key without the model/version/gpu_uuid labels (e.g.
    ``"qwen_weight_bytes"``, ``'qwen_engine_weight_bytes{part="model",precision="fp8"}'``), or a ``vllm:*``
    series of the metrics page the same way (``'vllm:time_to_first_token_seconds_bucket{le="0.1"}'``),
    its reading in ``value`` and no memory. ``gpu`` is the GPU index as text for NVML, the
    ``gpu_uuid`` label for Triton. ``utilization`` is in percent (Triton's 0..1 is scaled).
    """

    t_wall: float
    t_mono: float
    source: str
    kind: str
    memory_bytes: int | None
    gpu: str | None = None
    model: str | None = None
    version: str | None = None
    utilization: float | None = None
    pid: int | None = None
    value: float | None = None  # a ``vllm:*`` series' value (its kind: the series key, less model/version)


def sample_rows(sample: Sample, carried: bool = False) -> list[SampleRow]:
    """A sample as rows (see :class:`SampleRow`): GPUs, processes, Triton's GPU memory,
    ``qwen_*_bytes`` gauges and ``vllm:*`` series.

    The metrics rows come from the tick that read them (:attr:`Sample.metrics_fresh`): a tick that
    carries an earlier reading gives none (so that a reading is stored once), unless ``carried``,
    then they are stamped with the time of that reading (``metrics_t_mono``/``metrics_t_wall``),
    never with the carrying tick's.
    """
    tw, tm = sample.t_wall, sample.t_mono
    rows = [
        SampleRow(t_wall=tw, t_mono=tm, source="nvml", kind="device",
                  memory_bytes=g.memory_used_bytes, gpu=str(g.index),
                  utilization=g.utilization_pct)
        for g in sample.gpus
    ]
    for p in sample.processes:
        rows.append(
            SampleRow(t_wall=tw, t_mono=tm, source="nvml" if p.kind == "gpu" else "host",
                      kind=p.kind, memory_bytes=p.memory_bytes,
                      gpu=None if p.gpu is None else str(p.gpu), model=p.model,
                      version=p.version, pid=p.pid)
        )
    if sample.metrics and (carried or sample.metrics_fresh):
        if not sample.metrics_fresh:
            tm = sample.metrics_t_mono  # type: ignore[assignment]
            tw = sample.metrics_t_wall if sample.metrics_t_wall is not None else tw - (sample.t_mono - tm)
        util = {
            labels.get("gpu_uuid"): v for labels, v in sample.metric_series("nv_gpu_utilization")
        }
        for key, value in sample.metrics.items():
            name, labels = parse_series_key(key)
            if name == "nv_gpu_memory_used_bytes":
                u = util.get(labels.get("gpu_uuid"))
                rows.append(
                    SampleRow(t_wall=tw, t_mono=tm, source="triton", kind="device",
                              memory_bytes=int(value), gpu=labels.get("gpu_uuid"),
                              utilization=None if u is None else u * 100.0)
                )
            elif name.startswith("qwen_") and name.endswith("_bytes"):
                # labels other than model/version/gpu_uuid (part, precision, ...) stay in kind,
                # so that distinct series are never summed together
                extra = {k: v for k, v in labels.items() if k not in _ROW_LABELS}
                rows.append(
                    SampleRow(t_wall=tw, t_mono=tm, source="triton", kind=series_key(name, extra),
                              memory_bytes=int(value), gpu=labels.get("gpu_uuid"),
                              model=labels.get("model"), version=labels.get("version"))
                )
            elif name.startswith("vllm:"):
                extra = {k: v for k, v in labels.items() if k not in _ROW_LABELS}
                rows.append(SampleRow(t_wall=tw, t_mono=tm, source="triton", kind=series_key(name, extra),
                                      memory_bytes=None, model=labels.get("model"),
                                      version=labels.get("version"), value=float(value)))
    return rows


_ENGINE_LABELS = ("model_name", "engine")  # vllm serve's labels: one model, engine index (data parallel)
# vLLM 0.11 renamed its per-token gap histogram; the Triton backend (and services.serving.vllm_metrics) keep
# the old name, which services.bench.server_timings reads
TPOT_NAME = "vllm:time_per_output_token_seconds"
ITL_NAME = "vllm:inter_token_latency_seconds"


def variant_series(metrics: dict[str, float], model: str, key: str) -> dict[str, float]:
    """The ``vllm:*`` series of an OpenAI variant's server (``vllm serve``, labelled ``model_name`` and
    ``engine``) as the Triton backend labels its own: ``model`` and ``version`` = the variant's key, so that
    :func:`sample_rows` stores them under the variant. The series of other models on the page and the
    static ``*_info`` gauges (the cache configuration: the run manifest has it) are left out; several
    engines' series add up (a ``*_perc`` gauge is their mean). ``vllm:inter_token_latency_seconds`` (vLLM
    0.11 on: one observation per gap between two tokens) takes the name the Triton backend gives the same
    histogram, ``vllm:time_per_output_token_seconds``, where the page does not carry that one too."""
    out: dict[str, float] = {}
    count: dict[str, int] = {}
    renamed = not any(k.startswith(TPOT_NAME) for k in metrics)
    for k, value in metrics.items():
        name, labels = parse_series_key(k)
        if not name.startswith("vllm:") or name.endswith("_info") or labels.get("model_name", model) != model:
            continue
        if renamed and name.startswith(ITL_NAME):
            name = TPOT_NAME + name[len(ITL_NAME):]
        rest = {n: v for n, v in labels.items() if n not in _ENGINE_LABELS}
        new = series_key(name, {**rest, "model": model, "version": key})
        out[new] = out.get(new, 0.0) + value
        count[new] = count.get(new, 0) + 1
    for k, n in count.items():
        if n > 1 and parse_series_key(k)[0].endswith("_perc"):
            out[k] /= n
    return out


def rekey_versions(metrics: dict[str, float], keys: dict[str, str]) -> dict[str, float]:
    """Series labelled ``version`` = a Triton version renamed to that version's variant key (``keys``:
    version -> key; the identity for the default pair, and then the same dict is returned)."""
    if all(k == v for k, v in keys.items()):
        return metrics
    out = {}
    for k, value in metrics.items():
        name, labels = parse_series_key(k)
        if labels.get("version") in keys:
            k = series_key(name, {**labels, "version": keys[labels["version"]]})
        out[k] = value
    return out


def chart_label(kind: str, gpu: str | None, model: str | None, version: str | None) -> str:
    """A short legend label for one memory series."""
    if kind == "device":
        return f"GPU {gpu}"
    if model is not None and version is not None:
        # a Triton version is a number; a variant's key is its label and says enough alone
        base = f"{model} v{version}" if version.isdigit() else version
    elif model is not None:
        base = model
    else:
        base = "other"
    return base if kind in ("gpu", "host") else f"{base} {kind}"


CHART_COLUMNS = ["time", "t_mono", "source", "kind", "gpu", "model", "version", "label",
                 "memory_bytes"]


def series_for_chart(samples: Iterable[Sample | SampleRow]) -> pd.DataFrame:
    """Long-format memory series for plotting: one row per time and series.

    Columns: ``time`` (UTC datetime), ``t_mono``, ``source``, ``kind``, ``gpu``, ``model``,
    ``version``, ``label``, ``memory_bytes``. Processes of the same kind, GPU and model version (several
    instances of one version) are summed. Accepts sampler samples or stored rows. Each metrics
    reading among the samples is charted once, at the time it was read, whether the tick that read
    it is in ``samples`` or only ticks that carry it (a thinned list).
    """
    acc: dict[tuple, int] = {}
    readings: set[float] = set()
    for item in samples:
        if isinstance(item, Sample):
            read_at = item.t_mono if item.metrics_t_mono is None else item.metrics_t_mono
            rows = sample_rows(item, carried=True)
            if item.metrics:
                if read_at in readings:
                    rows = [r for r in rows if r.source != "triton"]
                readings.add(read_at)
        else:
            rows = [item]
        for r in rows:
            if r.memory_bytes is None:
                continue
            key = (r.t_wall, r.t_mono, r.source, r.kind, r.gpu, r.model, r.version)
            acc[key] = acc.get(key, 0) + int(r.memory_bytes)
    records = [
        (tw, tm, src, kind, gpu, model, ver, chart_label(kind, gpu, model, ver), mem)
        for (tw, tm, src, kind, gpu, model, ver), mem in acc.items()
    ]
    df = pd.DataFrame.from_records(records, columns=CHART_COLUMNS)
    df["time"] = pd.to_datetime(df["time"].astype(float), unit="s", utc=True)
    df["memory_bytes"] = df["memory_bytes"].astype("int64")
    return df.sort_values(["t_mono", "source", "label"], kind="stable").reset_index(drop=True)
