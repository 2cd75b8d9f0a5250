"""Background sampler of GPU memory, Triton metrics and the serving processes' host memory.

One daemon thread ticks at a fixed rate (default 10 per second) and reads three independent
sources, each in its own ``try``/``except``: NVML and the host processes at every tick, the metrics
endpoint every ``metrics_interval_s`` (default 1 s, see below):

- ``"nvml"``: every GPU through NVML (``pynvml`` from nvidia-ml-py): name, used/total memory,
  utilization, and the used GPU memory of each compute process. A process is attributed to the
  Triton model version it serves through its command line: each Python-backend model instance is a
  ``triton_python_backend_stub`` process whose command line carries ``<repo>/<model>/<version>/model.py``;
  ``tritonserver`` itself is labelled ``"server"``.
- ``"triton_metrics"``: Triton's Prometheus endpoint (``metrics_url``, local or remote), fetched with
  urllib, reduced to the kept families by a line prefilter (:func:`prefilter_metrics`) and parsed
  with ``prometheus_client``. Kept: ``nv_gpu_memory_used_bytes``,
  ``nv_gpu_memory_total_bytes``, ``nv_gpu_utilization``, every ``nv_inference_*``, ``vllm:*`` and
  ``qwen_*`` series. Proxies from the environment are bypassed (a metrics port is reached directly).
  Parsing the page is most of a tick's CPU, so it is read every ``metrics_interval_s`` (0 = every
  tick; the default, 1 s, is twice as often as Triton refreshes its GPU metrics by default). The
  ticks in between carry the last reading forward in ``Sample.metrics`` with the time it was read
  (``Sample.metrics_t_mono``, ``metrics_t_wall``): :func:`sample_rows` gives its rows only on the
  tick that read it (what the run store writes), and :func:`series_for_chart` charts each reading
  once, at the time it was taken, even from a thinned list of samples that left that tick out. A
  failed read carries nothing.
- ``"host"``: the resident set size (psutil) of the serving processes: a configured root pid (the
  tritonserver pid) and its descendants, or the processes named in ``process_names`` and their
  descendants; attributed to model/version the same way. This gives a true live memory chart
  where there is no GPU (the embedded CPU demo); it is always labelled ``kind="host"``. The
  processes are looked for every ``discovery_interval_s`` (1 s); under a root pid, only among the
  pids that are new since the last look (see :meth:`Sampler._discover`).

A failing source is reported in each :class:`Sample`'s ``source_errors`` (its message) and
``source_error_times`` (wall time of its last failure); it is retried at most once per
``retry_interval_s`` (default 1 s) and never stops the others. A fetch of a dead remote metrics
endpoint can block one tick for up to ``metrics_timeout_s`` (0.5 s) once per retry interval.

Time: ``Sample.t_mono`` is ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, system-wide), the
same clock as the benchmark's ``time.perf_counter_ns()`` request stamps, so ``send_ns / 1e9`` can be
compared with ``t_mono`` directly. ``t_wall`` is ``time.time()``.

Nothing here imports streamlit.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import psutil
from prometheus_client.parser import text_string_to_metric_families

SOURCE_NVML = "nvml"
SOURCE_METRICS = "triton_metrics"
SOURCE_HOST = "host"
SOURCE_SINK = "sink"
SOURCE_SAMPLER = "sampler"

DEFAULT_RATE_HZ = 10.0
# Triton refreshes its per-interval metrics (GPU memory and utilization) every 2 s by default
# (tritonserver --metrics-interval-ms 2000); the live charts refresh once a second
DEFAULT_METRICS_INTERVAL_S = 1.0
DEFAULT_MAXLEN = 36_000  # one hour at 10 samples per second
MAX_METRICS_BYTES = 16 * 1024 * 1024

KEPT_METRIC_NAMES = frozenset(
    {"nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_utilization"}
)
KEPT_METRIC_PREFIXES = ("nv_inference_", "vllm:", "qwen_")

_ROW_LABELS = frozenset({"model", "version", "gpu_uuid"})
_MODEL_PY = re.compile(r"(?:^|/)([^/]+)/(\d+)/model\.py$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_SAMPLE_NAME = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)[{ \t]")


# --------------------------------------------------------------------------- readings


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML sees it at one tick."""

    index: int
    name: str
    uuid: str | None
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_pct: float | None


@dataclass(frozen=True)
class ProcessReading:
    """The memory of one serving (or GPU compute) process at one tick.

    ``kind`` is ``"gpu"`` (GPU memory from NVML; ``gpu`` is the GPU index) or ``"host"`` (resident
    set size from psutil). ``model``/``version`` come from the command line: ``("qwen", "2")`` for a
    stub serving ``.../qwen/2/model.py``, ``("server", None)`` for tritonserver (or the configured
    root process), ``(None, None)`` when unknown.
    """

    pid: int
    kind: str
    model: str | None
    version: str | None
    memory_bytes: int
    gpu: int | None = None
    name: str = ""


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
    ``"host"`` (one process's resident set size), or a ``qwen_*_bytes`` gauge exported by the
    server, as its series key without the model/version/gpu_uuid labels (e.g.
    ``"qwen_weight_bytes"``, ``'qwen_engine_weight_bytes{part="model",precision="fp8"}'``). ``gpu`` is the GPU index as text for NVML, the
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


@dataclass(frozen=True)
class SourceStatus:
    """Bookkeeping of one source: attempts, failures and the last error (None when healthy)."""

    attempts: int
    failures: int
    last_error: str | None
    last_error_wall: float | None
    last_ok_wall: float | None


class _SourceState:
    """Mutable per-source state (guarded by the sampler's lock)."""

    __slots__ = ("attempts", "failures", "error", "error_wall", "ok_wall", "next_try")

    def __init__(self) -> None:
        self.attempts = 0
        self.failures = 0
        self.error: str | None = None
        self.error_wall: float | None = None
        self.ok_wall: float | None = None
        self.next_try = 0.0


# --------------------------------------------------------------------------- pure helpers


def series_key(name: str, labels: dict[str, str] | None = None) -> str:
    """A canonical key for one Prometheus series: ``name{a="x",b="y"}`` with sorted labels."""
    if not labels:
        return name
    parts = []
    for k in sorted(labels):
        v = str(labels[k]).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{k}="{v}"')
    return name + "{" + ",".join(parts) + "}"


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """The inverse of :func:`series_key`."""
    brace = key.find("{")
    if brace < 0:
        return key, {}
    labels = {}
    for k, v in _LABEL.findall(key[brace + 1 : -1]):
        labels[k] = v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
    return key[:brace], labels


def keep_series(name: str) -> bool:
    """Whether a Prometheus sample name is one the sampler keeps."""
    return name in KEPT_METRIC_NAMES or name.startswith(KEPT_METRIC_PREFIXES)


def _prefilter(text: str) -> tuple[str, set[str]]:
    """:func:`prefilter_metrics`, and the sample names of the lines it kept, as on the wire."""
    kept: list[str] = []
    wire: set[str] = set()
    for line in text.split("\n"):
        s = line.lstrip()
        if not s:
            continue
        if s[0] == "#":
            parts = s.split(None, 3)
            if len(parts) > 2 and parts[1] in ("HELP", "TYPE") and keep_series(parts[2]):
                kept.append(line)
            continue  # another family's HELP/TYPE, or a plain comment: the parser skips those
        m = _SAMPLE_NAME.match(s)
        if m is not None:
            name = m.group(1)
            if not keep_series(name):
                continue
            wire.add(name)
        kept.append(line)  # a kept series, or a line that is no sample: the parser judges it
    return "\n".join(kept) + "\n", wire


def prefilter_metrics(text: str) -> str:
    """Prometheus text reduced to the families the sampler keeps, before prometheus_client parses it.

    Triton's page carries families the sampler drops (``nv_cpu_*``, ``nv_pinned_*`` and, on a
    GPU server, ``nv_gpu_power_*``, ``nv_energy_*``, cache and histogram families...); parsing
    them would cost the sampling thread CPU for nothing. Dropped: sample lines whose metric name (the name at the line's start, followed by
    ``{`` or a blank) is not kept by :func:`keep_series`, ``# HELP``/``# TYPE`` lines naming such a
    family, and other comments. Everything else stays, in order, for the parser to judge, so text
    that is no exposition format (an HTML or JSON page) still fails to parse.
    """
    return _prefilter(text)[0]


def parse_metrics(text: str) -> dict[str, float]:
    """Parse Prometheus text into ``{series_key: value}``, keeping only the series we use.

    The text is first reduced to the kept families (:func:`prefilter_metrics`), then parsed by
    prometheus_client. Series keep the names they have on the wire: prometheus_client's parser
    appends ``_total`` to the samples of a family typed ``counter`` (Triton writes
    ``nv_inference_request_success`` without it); that suffix is taken off again where the text
    did not have it. Raises ValueError on text that is not Prometheus exposition format (lines of
    dropped families are not checked).
    """
    kept, wire = _prefilter(text)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(kept):
        for s in family.samples:
            name = s.name
            if name not in wire and name.endswith("_total") and name[:-6] in wire:
                name = name[:-6]
            if keep_series(name):
                out[series_key(name, s.labels)] = float(s.value)
    return out


def _memory_info(pynvml, handle):
    """Device memory as nvidia-smi reports it: NVML's v2 reading, whose ``used`` leaves out the
    memory the driver reserves (v1's ``used`` counts it: +480 MiB on the H100, 1.6% of 29 GiB).
    Falls back to v1 where the driver or binding lacks v2."""
    version = getattr(pynvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except (pynvml.NVMLError, TypeError):
            pass
    return pynvml.nvmlDeviceGetMemoryInfo(handle)


def attribute_cmdline(cmdline: Sequence[str], name: str = "") -> tuple[str | None, str | None]:
    """``(model, version)`` served by a process, from its command line and name.

    A Python-backend stub carries ``<repo>/<model>/<version>/model.py``: that gives e.g.
    ``("qwen", "2")``. tritonserver gives ``("server", None)``; anything else ``(None, None)``.
    """
    for arg in cmdline:
        m = _MODEL_PY.search(arg)
        if m:
            return m.group(1), m.group(2)
    exe = os.path.basename(cmdline[0]) if cmdline else ""
    if "tritonserver" in (name, exe):
        return "server", None
    return None, None


# --------------------------------------------------------------------------- the sampler

_UNSET: Any = object()
Sink = Callable[[Sample], None]


class Sampler:
    """Samples GPU memory, Triton metrics and serving processes' host memory in a daemon thread.

    Use ``start()``/``stop()`` or ``with Sampler(...) as s:``. Readers call :meth:`latest`,
    :meth:`samples_since` or :meth:`window`; all are thread-safe. The ring buffer keeps the last
    ``maxlen`` samples. Sinks (``sink=`` or :meth:`add_sink`) are called in the sampling thread
    with each new sample; their exceptions are caught and reported as source ``"sink"``.
    :meth:`sample_once` runs one tick in the caller's thread (used by tests and tools).
    """

    def __init__(
        self,
        *,
        rate_hz: float = DEFAULT_RATE_HZ,
        maxlen: int = DEFAULT_MAXLEN,
        metrics_url: str | None = None,
        root_pid: int | None = None,
        process_names: Sequence[str] = ("tritonserver",),
        nvml: bool = True,
        host_memory: bool = True,
        retry_interval_s: float = 1.0,
        metrics_timeout_s: float = 0.5,
        metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S,
        discovery_interval_s: float = 1.0,
        sink: Sink | None = None,
        thread_name: str = "gpu-sampler",
    ) -> None:
        self._lock = threading.Lock()  # ring, config, sinks, source states, cpu counters
        self._tick_lock = threading.Lock()  # one tick at a time
        self._ring: deque[Sample] = deque(maxlen=maxlen)
        self._sinks: list[Sink] = [sink] if sink is not None else []
        self._states: dict[str, _SourceState] = {}
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._thread_name = thread_name
        self._cpu_s = 0.0
        self._wall_s = 0.0
        # NVML state (sampling thread only, under _tick_lock)
        self._nvml_ready = False
        self._nvml_names: dict[int, tuple[str, str | None]] = {}
        # host-process discovery and attribution caches (under _tick_lock)
        self._host_procs: list[psutil.Process] = []
        self._seen_pids: set[int] | None = None  # every pid at the last discovery
        self._next_discovery = 0.0
        self._attribution: dict[tuple[int, float], tuple[str | None, str | None, str]] = {}
        self._unresolved: dict[tuple[int, float], tuple[tuple[str, ...], tuple[str | None, str | None, str]]] = {}
        # the last metrics reading and when it was attempted (under _tick_lock)
        self._metrics_last: tuple[dict[str, float], float, float] | None = None
        self._metrics_attempt: float | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.rate_hz = rate_hz
        self.metrics_url = metrics_url
        self.root_pid = root_pid
        self.process_names = tuple(process_names)
        self.nvml = nvml
        self.host_memory = host_memory
        self.retry_interval_s = retry_interval_s
        self.metrics_timeout_s = metrics_timeout_s
        self.metrics_interval_s = metrics_interval_s
        self.discovery_interval_s = discovery_interval_s
        self._validate()

    # ------------------------------------------------------------------ configuration

    def _validate(self) -> None:
        if not self.rate_hz > 0:
            raise ValueError("rate_hz must be > 0")
        if self._ring.maxlen is None or self._ring.maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        if not self.metrics_interval_s >= 0:
            raise ValueError("metrics_interval_s must be >= 0")

    def configure(
        self,
        *,
        rate_hz: float = _UNSET,
        maxlen: int = _UNSET,
        metrics_url: str | None = _UNSET,
        root_pid: int | None = _UNSET,
        process_names: Sequence[str] = _UNSET,
        nvml: bool = _UNSET,
        host_memory: bool = _UNSET,
        retry_interval_s: float = _UNSET,
        metrics_timeout_s: float = _UNSET,
        metrics_interval_s: float = _UNSET,
        discovery_interval_s: float = _UNSET,
    ) -> None:
        """Change settings of a running sampler (no second thread). Only given keys change.

        A changed metrics URL or process selection clears that source's error and back-off, so
        it is tried on the next tick; a changed metrics URL or interval also drops the carried
        metrics reading, and the endpoint is read on the next tick.
        """
        with self._tick_lock, self._lock:
            if rate_hz is not _UNSET:
                if not rate_hz > 0:
                    raise ValueError("rate_hz must be > 0")
                self.rate_hz = rate_hz
            if maxlen is not _UNSET and maxlen != self._ring.maxlen:
                if maxlen < 1:
                    raise ValueError("maxlen must be >= 1")
                self._ring = deque(self._ring, maxlen=maxlen)
            if metrics_interval_s is not _UNSET and metrics_interval_s != self.metrics_interval_s:
                if not metrics_interval_s >= 0:
                    raise ValueError("metrics_interval_s must be >= 0")
                self.metrics_interval_s = metrics_interval_s
                self._metrics_attempt = None
            if metrics_url is not _UNSET and metrics_url != self.metrics_url:
                self.metrics_url = metrics_url
                self._states.pop(SOURCE_METRICS, None)
                self._metrics_last = self._metrics_attempt = None
            host_changed = False
            if root_pid is not _UNSET and root_pid != self.root_pid:
                self.root_pid, host_changed = root_pid, True
            if process_names is not _UNSET and tuple(process_names) != self.process_names:
                self.process_names, host_changed = tuple(process_names), True
            if host_memory is not _UNSET and host_memory != self.host_memory:
                self.host_memory, host_changed = host_memory, True
            if host_changed:
                self._states.pop(SOURCE_HOST, None)
                self._unresolved.clear()  # "server" answers depend on the root pid
                self._host_procs = []
                self._next_discovery = 0.0
            if nvml is not _UNSET and nvml != self.nvml:
                self.nvml = nvml
                self._states.pop(SOURCE_NVML, None)
            if retry_interval_s is not _UNSET:
                self.retry_interval_s = retry_interval_s
            if metrics_timeout_s is not _UNSET:
                self.metrics_timeout_s = metrics_timeout_s
            if discovery_interval_s is not _UNSET:
                self.discovery_interval_s = discovery_interval_s

    def add_sink(self, sink: Sink) -> None:
        """Call ``sink(sample)`` for every new sample (in the sampling thread)."""
        with self._lock:
            self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        """Stop calling ``sink``; a sink not registered is ignored."""
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "Sampler":
        """Start the daemon thread (no-op when running). A stopped sampler can start again."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop_event = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop_event,), name=self._thread_name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, wait for it (at most ``timeout`` s) and release NVML."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop_event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._tick_lock:
            self._nvml_shutdown()

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, stop_event: threading.Event) -> None:
        cpu0 = time.thread_time()
        wall0 = time.perf_counter()
        next_t = wall0
        while not stop_event.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # sample_once catches per source; this is a last resort
                with self._lock:
                    self._fail(SOURCE_SAMPLER, exc, time.perf_counter())
            now = time.perf_counter()
            with self._lock:
                self._cpu_s = time.thread_time() - cpu0
                self._wall_s = now - wall0
                period = 1.0 / self.rate_hz
            next_t += period
            if next_t < now:  # fell behind: no burst of catch-up ticks
                next_t = now
            stop_event.wait(next_t - now)

    def cpu_fraction(self) -> float:
        """CPU seconds the sampling thread used per wall second since it started (1.0 = one core)."""
        with self._lock:
            return self._cpu_s / self._wall_s if self._wall_s > 0 else 0.0

    # ------------------------------------------------------------------ reading the ring

    def latest(self) -> Sample | None:
        """The newest sample, or None before the first tick."""
        with self._lock:
            return self._ring[-1] if self._ring else None

    def samples(self) -> list[Sample]:
        """Every sample in the ring, oldest first."""
        with self._lock:
            return list(self._ring)

    def samples_since(self, t: float) -> list[Sample]:
        """Samples with ``t_mono > t`` (``time.perf_counter()`` seconds), oldest first."""
        return self.window(t, float("inf"), include_start=False)

    def window(self, t0: float, t1: float, include_start: bool = True) -> list[Sample]:
        """Samples with ``t0 <= t_mono <= t1`` (``t0 < t_mono`` when not ``include_start``),
        oldest first; scans from the newest end."""
        out = []
        with self._lock:
            for s in reversed(self._ring):
                if s.t_mono < t0 or (not include_start and s.t_mono == t0):
                    break
                if s.t_mono <= t1:
                    out.append(s)
        out.reverse()
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._ring)

    @property
    def maxlen(self) -> int:
        """Capacity of the ring buffer."""
        return self._ring.maxlen or 0

    def errors(self) -> dict[str, str]:
        """The current error message of every failing source."""
        with self._lock:
            return {k: s.error for k, s in self._states.items() if s.error is not None}

    def source_status(self) -> dict[str, SourceStatus]:
        """Attempts, failures and last error per source seen so far."""
        with self._lock:
            return {
                k: SourceStatus(s.attempts, s.failures, s.error, s.error_wall, s.ok_wall)
                for k, s in self._states.items()
            }

    # ------------------------------------------------------------------ one tick

    def _state(self, source: str) -> _SourceState:
        st = self._states.get(source)
        if st is None:
            st = self._states[source] = _SourceState()
        return st

    def _due(self, source: str, now: float) -> bool:
        with self._lock:
            st = self._state(source)
            if st.error is not None and now < st.next_try:
                return False
            st.attempts += 1
            return True

    def _fail(self, source: str, exc: BaseException, now: float) -> None:
        """Record a failure (caller holds ``_lock``)."""
        st = self._state(source)
        st.failures += 1
        st.error = f"{type(exc).__name__}: {exc}"
        st.error_wall = time.time()
        st.next_try = now + self.retry_interval_s

    def _ok(self, source: str) -> None:
        with self._lock:
            st = self._state(source)
            st.error = None
            st.ok_wall = time.time()

    def _metrics_due(self, now: float, interval: float, rate_hz: float) -> bool:
        """Whether this tick reads the metrics endpoint: ``metrics_interval_s`` since the last
        attempt, less half a tick (ticks come a little late or early; the read should not then
        slip to the next one)."""
        last = self._metrics_attempt
        return last is None or now - last >= interval - 0.5 / rate_hz

    def sample_once(self) -> Sample:
        """One tick: read every enabled source that is due (NVML and host processes each tick, the
        metrics endpoint every ``metrics_interval_s``; a failing source once per retry interval),
        append the sample to the ring, call the sinks."""
        with self._tick_lock:
            now = time.perf_counter()
            wall = time.time()
            gpus: list[GpuReading] = []
            procs: list[ProcessReading] = []
            metrics: dict[str, float] = {}
            metrics_t: float | None = None
            metrics_wall: float | None = None
            with self._lock:
                url, want_nvml, want_host = self.metrics_url, self.nvml, self.host_memory
                interval, rate_hz = self.metrics_interval_s, self.rate_hz

            if want_nvml and self._due(SOURCE_NVML, now):
                try:
                    gpus, procs = self._read_nvml()
                    self._ok(SOURCE_NVML)
                except Exception as exc:
                    self._nvml_shutdown()
                    with self._lock:
                        self._fail(SOURCE_NVML, exc, now)

            if url and self._metrics_due(now, interval, rate_hz) and self._due(SOURCE_METRICS, now):
                self._metrics_attempt = now
                self._metrics_last = None
                try:
                    metrics = self._read_metrics(url)
                    metrics_t, metrics_wall = now, wall
                    self._metrics_last = (metrics, now, wall)
                    self._ok(SOURCE_METRICS)
                except Exception as exc:
                    with self._lock:
                        self._fail(SOURCE_METRICS, exc, now)
            elif url and self._metrics_last is not None:
                metrics, metrics_t, metrics_wall = self._metrics_last

            if want_host and self._due(SOURCE_HOST, now):
                try:
                    procs = procs + self._read_host(now)
                    self._ok(SOURCE_HOST)
                except Exception as exc:
                    with self._lock:
                        self._fail(SOURCE_HOST, exc, now)

            with self._lock:
                errors = {k: s.error for k, s in self._states.items() if s.error is not None}
                times = {
                    k: s.error_wall
                    for k, s in self._states.items()
                    if s.error is not None and s.error_wall is not None
                }
                sample = Sample(
                    t_mono=now,
                    t_wall=wall,
                    gpus=tuple(gpus),
                    processes=tuple(procs),
                    metrics=metrics,
                    source_errors=errors,
                    source_error_times=times,
                    metrics_t_mono=metrics_t,
                    metrics_t_wall=metrics_wall,
                )
                self._ring.append(sample)
                sinks = list(self._sinks)

            if sinks:
                self._call_sinks(sinks, sample, now)
            return sample

    def _call_sinks(self, sinks: list[Sink], sample: Sample, now: float) -> None:
        failed: BaseException | None = None
        for sink in sinks:
            try:
                sink(sample)
            except Exception as exc:
                failed = exc
        with self._lock:
            self._state(SOURCE_SINK).attempts += 1
            if failed is not None:
                self._fail(SOURCE_SINK, failed, now)
        if failed is None:
            self._ok(SOURCE_SINK)

    # ------------------------------------------------------------------ sources

    def _attribute(self, proc: psutil.Process) -> tuple[str | None, str | None, str]:
        """``(model, version, name)`` of a process.

        Stub attributions (model and version found) are cached per (pid, create time). Other
        answers ("server", unknown) are not final: a process seen between fork and exec still shows
        its parent's command line, and exec keeps pid and create time; so its command line is read
        again each time, and only when it has changed are the name and the answer looked up again.
        """
        key = (proc.pid, proc.create_time())
        hit = self._attribution.get(key)
        if hit is not None:
            return hit
        try:
            cmdline = tuple(proc.cmdline())
        except psutil.AccessDenied:
            cmdline = ()
        seen = self._unresolved.get(key)
        if seen is not None and seen[0] == cmdline:
            return seen[1]
        name = proc.name()
        model, version = attribute_cmdline(cmdline, name)
        if model is None and proc.pid == self.root_pid:
            model = "server"
        if len(self._attribution) > 4096 or len(self._unresolved) > 4096:
            self._attribution.clear()
            self._unresolved.clear()
        if version is None:
            self._unresolved[key] = (cmdline, (model, version, name))
            return model, version, name
        self._unresolved.pop(key, None)
        self._attribution[key] = (model, version, name)
        return model, version, name

    def _nvml_shutdown(self) -> None:
        if self._nvml_ready:
            self._nvml_ready = False
            self._nvml_names.clear()
            try:
                import pynvml

                pynvml.nvmlShutdown()
            except Exception:
                pass  # the library is gone or was never loaded: nothing to release

    def _read_nvml(self) -> tuple[list[GpuReading], list[ProcessReading]]:
        import pynvml  # from nvidia-ml-py; an ImportError is reported like any NVML failure

        if not self._nvml_ready:
            pynvml.nvmlInit()
            self._nvml_ready = True
        gpus: list[GpuReading] = []
        procs: list[ProcessReading] = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            if i not in self._nvml_names:
                name = pynvml.nvmlDeviceGetName(h)
                uuid = pynvml.nvmlDeviceGetUUID(h)
                self._nvml_names[i] = (
                    name.decode() if isinstance(name, bytes) else str(name),
                    uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                )
            name, uuid = self._nvml_names[i]
            mem = _memory_info(pynvml, h)
            try:
                util: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except pynvml.NVMLError:  # not supported (e.g. MIG): memory still counts
                util = None
            gpus.append(GpuReading(i, name, uuid, int(mem.used), int(mem.total), util))
            try:
                running = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            except pynvml.NVMLError:
                running = []
            for p in running:
                used = getattr(p, "usedGpuMemory", None)
                if used is None:
                    continue  # NVML could not tell this process's memory (e.g. under MIG/WDDM)
                try:
                    model, version, pname = self._attribute(psutil.Process(p.pid))
                except (psutil.Error, OSError):
                    model, version, pname = None, None, ""  # pid of another namespace
                procs.append(ProcessReading(p.pid, "gpu", model, version, int(used), i, pname))
        return gpus, procs

    def _read_metrics(self, url: str) -> dict[str, float]:
        with self._opener.open(url, timeout=self.metrics_timeout_s) as resp:
            body = resp.read(MAX_METRICS_BYTES)
        return parse_metrics(body.decode("utf-8", "replace"))

    def _discover(self) -> list[psutil.Process]:
        """The serving processes: the root pid or the named processes, and their descendants.

        Under a root pid, after a first walk of every process, only the pids that are new since the
        last discovery are looked at: a process joins the tree by being forked from one of it (a
        new pid, whose parent is known from the moment it exists, exec or not), so the parentage
        of the others need not be read again (psutil's ``children(recursive=True)`` reads every
        process's ``/proc/<pid>/stat``). Processes that ended are dropped by :meth:`_read_host`; a
        tree without its root (ended, or changed by :meth:`configure`) and a burst of new pids (half
        the machine's) are walked in full again. By name, every discovery walks every process (a
        process that takes the name by exec keeps its pid).
        """
        pids = set(psutil.pids())  # before the walk: a process forked during it is new next time
        known, self._seen_pids = self._seen_pids, pids
        found = {p.pid: p for p in self._host_procs}
        if (self.root_pid is None or known is None or self.root_pid not in found
                or 2 * len(pids - known) > len(pids)):
            return self._discover_all()  # the root's end is reported by the walk (NoSuchProcess)
        parent_of: dict[int, tuple[psutil.Process, int]] = {}
        for pid in pids - known - found.keys():
            try:
                proc = psutil.Process(pid)
                parent_of[pid] = (proc, proc.ppid())
            except psutil.Error:
                continue  # ended already
        added = True
        while added:  # children before or after their parents in pid order (pids wrap around)
            added = False
            for pid, (proc, ppid) in list(parent_of.items()):
                if ppid in found:
                    found[pid] = proc
                    del parent_of[pid]
                    added = True
        return list(found.values())

    def _discover_all(self) -> list[psutil.Process]:
        """:meth:`_discover` by walking every process."""
        if self.root_pid is not None:
            roots = [psutil.Process(self.root_pid)]  # NoSuchProcess is this source's error
        else:
            wanted = set(self.process_names)
            roots = []
            for p in psutil.process_iter(["name", "cmdline"]):
                cmd = p.info.get("cmdline") or []
                exe = os.path.basename(cmd[0]) if cmd else ""
                if p.info.get("name") in wanted or exe in wanted:
                    roots.append(p)
            if not roots:
                raise LookupError(f"no process named {sorted(wanted)} is running")
        found: dict[int, psutil.Process] = {}
        for root in roots:
            found.setdefault(root.pid, root)
            try:
                for child in root.children(recursive=True):
                    found.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def _read_host(self, now: float) -> list[ProcessReading]:
        if now >= self._next_discovery or not self._host_procs:
            self._host_procs = self._discover()
            self._next_discovery = now + self.discovery_interval_s
        out: list[ProcessReading] = []
        alive: list[psutil.Process] = []
        for p in self._host_procs:
            try:
                rss = p.memory_info().rss
                model, version, name = self._attribute(p)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # ended since discovery
            alive.append(p)
            out.append(ProcessReading(p.pid, "host", model, version, int(rss), None, name))
        self._host_procs = alive
        if not out:
            self._next_discovery = 0.0
            raise LookupError("the serving processes have ended")
        return out


# --------------------------------------------------------------------------- long format


def sample_rows(sample: Sample, carried: bool = False) -> list[SampleRow]:
    """A sample as memory rows (see :class:`SampleRow`): GPUs, processes, Triton's GPU memory
    and ``qwen_*_bytes`` gauges.

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
    return rows


def chart_label(kind: str, gpu: str | None, model: str | None, version: str | None) -> str:
    """A short legend label for one memory series."""
    if kind == "device":
        return f"GPU {gpu}"
    if model is not None and version is not None:
        base = f"{model} v{version}"
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


# --------------------------------------------------------------------------- shared instance

_shared: Sampler | None = None
_shared_lock = threading.Lock()


def get_shared_sampler(**config: Any) -> Sampler:
    """The process-wide sampler, created and started on the first call.

    Later calls with settings reconfigure the same instance (see :meth:`Sampler.configure`) and
    never start a second thread; a stopped shared sampler is started again. Accepts the keys of
    :meth:`Sampler.configure`.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            sampler = Sampler()
            sampler.configure(**config)
            _shared = sampler
        elif config:
            _shared.configure(**config)
        _shared.start()
        return _shared


def stop_shared_sampler() -> None:
    """Stop and forget the process-wide sampler (the next :func:`get_shared_sampler` makes a new one)."""
    global _shared
    with _shared_lock:
        sampler, _shared = _shared, None
    if sampler is not None:
        sampler.stop()
