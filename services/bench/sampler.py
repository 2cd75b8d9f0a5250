"""Background sampler of GPU memory, Triton metrics and the serving processes' host memory.

The sampler's thread, its ring buffer, its sinks and the process-wide shared instance
(:func:`get_shared_sampler`). What it reads lives beside it: :mod:`services.bench.memory_readings`
(NVML and the serving processes), :mod:`services.bench.triton_metrics` (the metrics page); what it
produces, :mod:`services.bench.sample_series` (:class:`Sample`, its store rows and chart series).

One daemon thread ticks at a fixed rate (default 10 per second) and reads three independent
sources, each in its own ``try``/``except``: NVML and the host processes at every tick, the metrics
endpoint every ``metrics_interval_s`` (default 1 s, see below):

- ``"nvml"``: every GPU through NVML (``pynvml`` from nvidia-ml-py): name, used/total memory,
  utilization, and the used GPU memory of each compute process. A process is attributed to the
  Triton model version it serves through the process tree: each Python-backend model instance is a
  ``triton_python_backend_stub`` process whose command line carries ``<repo>/<model>/<version>/model.py``,
  and its descendants (vLLM's engine processes) serve the same version; ``tritonserver`` itself is
  labelled ``"server"``. Under a root pid only the root's tree is kept (NVML lists every process on
  the GPU); with no root and no ``process_names``, no process at all (the whole GPU only).
- ``"triton_metrics"``: Triton's Prometheus endpoint (``metrics_url``, local or remote), fetched with
  urllib, reduced to the kept families by a line prefilter (``triton_metrics.prefilter_metrics``)
  and parsed with ``prometheus_client``. Kept: ``nv_gpu_memory_used_bytes``,
  ``nv_gpu_memory_total_bytes``, ``nv_gpu_utilization``, every ``nv_inference_*``, ``vllm:*`` and
  ``qwen_*`` series. Proxies from the environment are bypassed (a metrics port is reached directly).
  Parsing the page is most of a tick's CPU, so it is read every ``metrics_interval_s`` (0 = every
  tick; the default, 1 s, is twice as often as Triton refreshes its GPU metrics by default). The
  ticks in between carry the last reading forward in ``Sample.metrics`` with the time it was read
  (``Sample.metrics_t_mono``, ``metrics_t_wall``): ``sample_rows`` gives its rows only on the
  tick that read it (what the run store writes), and ``series_for_chart`` charts each reading
  once, at the time it was taken, even from a thinned list of samples that left that tick out. A
  failed read carries nothing.
- ``"host"``: the resident memory (psutil; the proportional set size, so that pages the
  processes share count once) of the serving processes: a configured root pid (the
  tritonserver pid) and its descendants, or the processes named in ``process_names`` and their
  descendants; attributed to model/version the same way. This gives a true live memory chart
  where there is no GPU (the embedded CPU demo); it is always labelled ``kind="host"``. The
  processes are looked for every ``discovery_interval_s`` (1 s); under a root pid, only among the
  pids that are new since the last look (see ``HostProcessReader._discover``).

- Variants (a run on OpenAI-compatible servers, ``variant_servers``: one
  :class:`services.bench.memory_scope.VariantServer` each): every such server's own ``/metrics`` is read
  with the main page (sources ``variant_metrics:<key>``), its ``vllm:*`` series labelled with the
  variant's model and key (``sample_series.variant_series``); a local one's process tree (the process
  listening on its port: API server, EngineCore, workers) is read like the main server's (source
  ``variant_host:<key>``) and its processes, on NVML too, are attributed to the variant's key. A remote
  one gives metrics only. ``version_keys`` renames the main server's Triton versions to their variants'
  keys (process attribution and the metrics page's ``version`` label).

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

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import psutil

from services.bench.memory_readings import (
    GpuReading,
    HostProcessReader,
    NvmlReader,
    ProcessAttribution,
    ProcessReading,
)
from services.bench.memory_scope import SERVER_TREE, VariantServer
from services.bench.sample_series import Sample, rekey_versions, variant_series
from services.bench.triton_metrics import metrics_opener, parse_metrics, read_metrics_text

SOURCE_NVML = "nvml"
SOURCE_METRICS = "triton_metrics"
SOURCE_HOST = "host"
SOURCE_SINK = "sink"
SOURCE_SAMPLER = "sampler"
SOURCE_VARIANT_METRICS = "variant_metrics"  # + ":<key>": an OpenAI variant's /metrics
SOURCE_VARIANT_HOST = "variant_host"  # + ":<key>": an OpenAI variant's process tree

DEFAULT_RATE_HZ = 10.0
# Triton refreshes its per-interval metrics (GPU memory and utilization) every 2 s by default
# (tritonserver --metrics-interval-ms 2000); the live charts refresh once a second
DEFAULT_METRICS_INTERVAL_S = 1.0
DEFAULT_MAXLEN = 36_000  # one hour at 10 samples per second


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
        version_keys: Mapping[str, str] | None = None,
        variant_servers: Sequence[VariantServer] = (),
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
        # the readers and the attribution caches (sampling thread only, under _tick_lock)
        self._attribution = ProcessAttribution()
        self._nvml_reader = NvmlReader(self._attribute, keep=self._in_scope)
        self._host_reader = HostProcessReader(self._attribute)
        # the last metrics reading and when it was attempted (under _tick_lock)
        self._metrics_last: tuple[dict[str, float], float, float] | None = None
        self._metrics_attempt: float | None = None
        self._opener = metrics_opener()
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
        self.version_keys: dict[str, str] = dict(version_keys or {})
        self.variant_servers: tuple[VariantServer, ...] = tuple(variant_servers)
        self._variant_readers: dict[str, HostProcessReader] = {}
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
        version_keys: Mapping[str, str] | None = _UNSET,
        variant_servers: Sequence[VariantServer] = _UNSET,
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
            if version_keys is not _UNSET and dict(version_keys or {}) != self.version_keys:
                self.version_keys = dict(version_keys or {})
                self._metrics_last = self._metrics_attempt = None
            if variant_servers is not _UNSET and tuple(variant_servers) != self.variant_servers:
                self.variant_servers = tuple(variant_servers)
                for k in [k for k in self._states if k.startswith((SOURCE_VARIANT_METRICS, SOURCE_VARIANT_HOST))]:
                    del self._states[k]
                self._variant_readers = {}
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
                self._attribution.forget_unresolved()  # "server" answers depend on the root pid
                self._host_reader.reset()
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
            self._nvml_reader.shutdown()

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
                servers, keys = self.variant_servers, self.version_keys

            if want_nvml and self._due(SOURCE_NVML, now):
                try:
                    gpus, procs = self._nvml_reader.read()
                    self._ok(SOURCE_NVML)
                except Exception as exc:
                    self._nvml_reader.shutdown()
                    with self._lock:
                        self._fail(SOURCE_NVML, exc, now)

            pages = bool(url or any(s.page for s in servers))
            if pages and self._metrics_due(now, interval, rate_hz):
                self._metrics_attempt = now
                self._metrics_last = None
                metrics = self._read_pages(url, keys, servers, now)
                if metrics:
                    metrics_t, metrics_wall = now, wall
                    self._metrics_last = (metrics, now, wall)
            elif pages and self._metrics_last is not None:
                metrics, metrics_t, metrics_wall = self._metrics_last

            if want_host and self._due(SOURCE_HOST, now):
                try:
                    procs = procs + self._host_reader.read(now, self.root_pid, self.process_names,
                                                           self.discovery_interval_s)
                    self._ok(SOURCE_HOST)
                except Exception as exc:
                    with self._lock:
                        self._fail(SOURCE_HOST, exc, now)
            procs = procs + self._read_variant_trees(servers, now)

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

    def _read_pages(self, url: str | None, keys: dict[str, str], servers: tuple[VariantServer, ...],
                    now: float) -> dict[str, float]:
        """One reading of every metrics page, merged: the main server's (its versions renamed to the
        variants' keys) and each OpenAI variant's ``vllm:*`` series labelled with its key. A page that
        fails is left out of this reading (its source's error says why); the others are kept."""
        metrics: dict[str, float] = {}
        pages = [(SOURCE_METRICS, url, None)] if url else []
        pages += [(f"{SOURCE_VARIANT_METRICS}:{s.key}", s.page, s) for s in servers if s.page]
        for source, page, server in pages:
            if not self._due(source, now):
                continue
            try:
                series = parse_metrics(read_metrics_text(self._opener, page, self.metrics_timeout_s))
                metrics.update(rekey_versions(series, keys) if server is None
                               else variant_series(series, server.model, server.metrics_version))
                self._ok(source)
            except Exception as exc:
                with self._lock:
                    self._fail(source, exc, now)
        return metrics

    def _read_variant_trees(self, servers: tuple[VariantServer, ...], now: float) -> list[ProcessReading]:
        """The host memory of each local OpenAI variant's process tree, attributed to its key."""
        out: list[ProcessReading] = []
        for s in servers:
            source = f"{SOURCE_VARIANT_HOST}:{s.key}"
            if s.scope.kind != SERVER_TREE or not self._due(source, now):
                continue
            reader = self._variant_readers.get(s.key)
            if reader is None:
                reader = self._variant_readers[s.key] = HostProcessReader(
                    lambda p, s=s: (s.model, s.memory_version, p.name()))
            try:
                out += reader.read(now, s.scope.root_pid, (), self.discovery_interval_s)
                self._ok(source)
            except Exception as exc:
                with self._lock:
                    self._fail(source, exc, now)
        return out

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
        """``(model, version, name)`` of a process (see :class:`ProcessAttribution`): a process of a
        local OpenAI variant's tree is that variant's (its model, its key); a Triton version is
        named by its variant's key (``version_keys``)."""
        for s in self.variant_servers:
            if s.scope.kind == SERVER_TREE and self._attribution.in_scope(proc, s.scope.root_pid, False):
                return s.model, s.memory_version, proc.name()
        model, version, name = self._attribution(proc, self.root_pid)
        return model, self.version_keys.get(version, version) if version is not None else None, name

    def _in_scope(self, proc: psutil.Process | None) -> bool:
        """Whether a GPU process's reading is kept: under a root pid, only the root and its
        descendants (``None``, a pid of another namespace, is not); with no root, every process
        when processes are found by name, none when ``process_names`` is empty."""
        if proc is None:
            return self.root_pid is None and bool(self.process_names)
        if any(s.scope.kind == SERVER_TREE and self._attribution.in_scope(proc, s.scope.root_pid, False)
               for s in self.variant_servers):
            return True
        return self._attribution.in_scope(proc, self.root_pid, any_process=bool(self.process_names))


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
