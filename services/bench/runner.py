"""Benchmark runs: the same requests sent to one or both versions, every request and sample recorded.

"Versions" are the keys of the run's variants (:mod:`services.client.variants`; ``config.variants``):
Triton's versions "1" and "2" by default, a variant's label for other servers (``vllm serve``).

CONTRACT (the Benchmark page and the command-line entry build on exactly these names):

    config = BenchmarkConfig(versions=("1", "2"), image_set=ImageSetSpec(kind="samples"), requests=20, ...)
    handle = start_benchmark(config, store=RunStore(), target=current_target())   # a background thread
    handle.progress()   -> BenchmarkProgress (done / total, failures, status, run_id, last error)
    handle.cancel()     # stops sending; in-flight requests finish; the run ends "cancelled"
    handle.wait(timeout) -> RunOutcome (run_id, status, reason, summaries per version)
    run_benchmark(config, store, target, on_progress=None, cancel_event=None) -> RunOutcome  # blocking

Images come from ``ImageSetSpec`` (:mod:`services.image_sets.image_set`: uploaded bytes, the
bundled samples, a generated labelled set from a seed, or a dataset folder), each with its ground
truth where known. With both versions the requests are interleaved in the same image order (v1
img0, v2 img0, v1 img1, ...: :mod:`services.bench.request_plan`), so drift hits both alike. Load:
closed loop at a concurrency, or open loop at a request rate with Poisson arrivals.

How a run goes (all of it in the caller's thread for ``run_benchmark``, in a daemon thread for
``start_benchmark``):

1. Preflight and manifest (:func:`services.bench.variant_manifest.variants_manifest`): server metadata, the
   model's versions and their states, the model config as served, quantization as served, GPU,
   client libraries, git commit. The images are loaded (``load_image_set``). Then the run is
   created in the store with its config (stored once) and manifest. An unreachable server, a
   version that is not READY or an image set with no usable image ends the run at once as
   "failed", with the reason.
2. The shared sampler (``services.bench.sampler.get_shared_sampler``, pointed at the target's
   metrics URL and server pid) gets a ``RunStore.sample_sink`` for the run's duration; the run
   waits for one sample before the first request, so the memory baseline precedes it.
3. Warm-up: ``warmup`` requests per version, interleaved, as a closed loop at ``concurrency`` (in
   both load modes), all finished before the first measured request; recorded with
   ``warmup=True``, excluded from summaries.
4. Measured requests: closed loop (``concurrency`` worker threads, each sending its next request
   as soon as its previous one is answered) or open loop (Poisson arrivals at ``rate`` requests per
   second over all versions, seeded by ``seed``; each arrival is handed to a thread pool large
   enough that requests do not wait for a thread: see ``open_loop_workers``; sends that still
   started late are counted in the summary).
5. Every request is written to the store as soon as it is answered (or failed): send and receive
   times, latency, TTFT, tokens, streamed chunk times and token counts, status and error text, the raw answer, the
   parsed box and its IoU with the ground truth (``answer_box``).
6. The end: the server's own timings over the measured window (``vllm:*`` histograms read, once
   settled, when the warm-up is done and when the measured requests are: ``services.bench.server_timings``),
   stored; each request's burst flag judged against its version's server TPOT;
   summaries per version from the stored rows (``services.bench.stats.summarize``),
   memory baseline/peak/delta over the run's window (``services.bench.stats.memory_summary``), the
   final status.

Final status:

- ``completed``: every planned request was sent (some may have failed: the reason says how many,
  the summaries count them); ``failed`` instead when every measured request failed.
- ``cancelled``: ``cancel()`` (or the caller's ``cancel_event``) stopped the sending; the requests
  in flight finished and were recorded.
- ``partial`` / ``failed``: the server stopped answering: after ``stop_after_unreachable``
  (default 5) ``ServerUnreachable`` errors from one server with no successful request of it between
  them (counted per server: in a run on variants of several servers, one dead server ends the run),
  no more requests are sent; the run is "partial" when some measured request succeeded, else "failed";
  the reason starts with "the server stopped answering" (then, on several servers, "variant <label>
  (<url>): "). A database write failure stops the run
  the same way. A run whose process is killed is marked "partial" by ``RunStore.mark_stale_runs``.

The stored summary (``RunStore.get_run(id).summary``) is ``{"versions": {v: VersionSummary as a
dict}, "memory": [MemorySeriesSummary as a dict], "requests": {...}, "open_loop": {...} or None,
"server_timings": {"reason", "versions"}, "duration_s": ...}``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from services.bench.manifest import address_error_manifest, prefix_caching
from services.bench.memory_scope import RunWatch, memory_scope, run_watch
from services.bench.request_plan import PlannedRequest, poisson_offsets, request_plan
from services.bench.server_timings import record_server_timings, settled_readings
from services.bench.stats import (
    MemorySeriesSummary,
    RequestRecord,
    VersionSummary,
    arrived_in_bursts,
    memory_summary,
    summarize_version,
)
from services.bench.store import RunStore
from services.client.errors import ServerUnreachable, TritonClientError, VersionNotReady
from services.bench.variant_manifest import variants_manifest
from services.client.variants import (
    Variant,
    VariantClients,
    client_for,
    default_variants,
    own_target,
    resolve_variants,
)
from services.core.boxes import match_boxes, parse_answer
from services.image_sets.image_set import IMAGE_SET_KINDS, BenchImage, ImageSetSpec, load_image_set
from services.image_sets.unseen_images import UnseenImages, workload_manifest

if TYPE_CHECKING:  # server_target imports the checkpoint catalog: only where a target is resolved
    from services.client.server_target import ServerTarget

log = logging.getLogger(__name__)

LoadMode = Literal["closed", "open"]

LOAD_MODES = ("closed", "open")
PROTOCOLS = ("http", "grpc")
STOP_AFTER_UNREACHABLE = 5  # ServerUnreachable errors with no success between them: the server is gone
MAX_OPEN_LOOP_WORKERS = 256
LATE_SEND_MS = 10.0  # an open-loop send starting this much after its arrival time counts as late
PREFLIGHT_TIMEOUT_S = 10.0
DEAD_SERVER_REASON = "the server stopped answering"


@dataclass(frozen=True)
class BenchmarkConfig:
    versions: tuple[str, ...] = ("1", "2")
    image_set: ImageSetSpec = field(default_factory=ImageSetSpec)
    requests: int = 20  # measured requests per version
    warmup: int = 2  # warm-up requests per version, not counted
    load: LoadMode = "closed"
    concurrency: int = 1  # closed loop
    rate: float = 1.0  # open loop: requests per second (all versions together)
    max_tokens: int = 128
    temperature: float = 0.0
    stream: bool = True
    timeout_s: float = 120.0
    protocol: str | None = None  # None: the target's protocol
    seed: int = 0  # Poisson arrivals and any sampling
    extra_sampling: dict[str, Any] = field(default_factory=dict)  # e.g. {"ignore_eos": True}
    # added after the contract (defaults keep old callers working):
    prompt: str | None = None  # None: the fine-tune's training prompt (services.core.prompt)
    max_in_flight: int | None = None  # open loop: thread-pool size; None: open_loop_workers(rate, timeout_s)
    stop_after_unreachable: int = STOP_AFTER_UNREACHABLE  # see the module docstring
    # what is compared (services.client.variants); empty: the ``versions`` of the Triton model on the
    # run's server. When given, ``versions`` becomes the variants' keys (validate_config).
    variants: tuple[Variant, ...] = ()


@dataclass
class BenchmarkProgress:
    run_id: int | None
    status: str  # "starting", "warmup", "running", "completed", "partial", "failed", "cancelled"
    done: int
    total: int
    failures: int
    last_error: str | None = None
    # added after the contract:
    ok: int = 0  # successful requests, warm-up included
    warmup_done: int = 0
    warmup_total: int = 0
    measured_done: int = 0
    measured_total: int = 0
    by_version: dict[str, dict[str, int]] = field(default_factory=dict)  # v -> {"done", "ok", "failures"}
    elapsed_s: float = 0.0
    stopping: str | None = None  # why sending stopped early (cancel, dead server), while in-flight requests finish
    reason: str | None = None  # the final reason, once the run has ended
    sweep: dict[str, Any] | None = None  # a sweep's place: level, load value, version, stopped versions

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "partial", "failed", "cancelled")


@dataclass
class RunOutcome:
    run_id: int
    status: str
    reason: str | None
    summaries: dict[str, Any]  # version -> services.bench.stats.VersionSummary
    # added after the contract:
    memory: list[MemorySeriesSummary] = field(default_factory=list)
    progress: BenchmarkProgress | None = None
    duration_s: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # as stored in the run's row

    @property
    def ok(self) -> bool:
        return self.status == "completed"


ProgressCallback = Callable[[BenchmarkProgress], None]


# --------------------------------------------------------------------------- configuration


def validate_config(config: BenchmarkConfig) -> BenchmarkConfig:
    """The config with versions as strings (the variants' keys when variants are given), or
    ValueError naming what is wrong."""
    variants = resolve_variants(config.variants) if config.variants else ()
    versions = tuple(v.key for v in variants) if variants else tuple(str(v).strip() for v in config.versions)
    if not versions:
        raise ValueError("choose at least one model version")
    if len(set(versions)) != len(versions) or any(not v for v in versions):
        raise ValueError(f"each version may be chosen once, not {config.versions!r}")

    def positive_int(name: str, value: Any, minimum: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")

    positive_int("requests", config.requests)
    positive_int("warmup", config.warmup, 0)
    positive_int("concurrency", config.concurrency)
    positive_int("max_tokens", config.max_tokens)
    positive_int("stop_after_unreachable", config.stop_after_unreachable)
    if config.max_in_flight is not None:
        positive_int("max_in_flight", config.max_in_flight)
    if config.load not in LOAD_MODES:
        raise ValueError(f"load must be 'closed' or 'open', not {config.load!r}")
    if config.load == "open" and not (isinstance(config.rate, (int, float)) and math.isfinite(config.rate)
                                      and config.rate > 0):
        raise ValueError(f"the open-loop rate must be a positive number of requests per second, not {config.rate!r}")
    if not config.temperature >= 0:
        raise ValueError(f"temperature must be >= 0, not {config.temperature!r}")
    if not config.timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, not {config.timeout_s!r}")
    if config.protocol not in (None, *PROTOCOLS):
        raise ValueError(f"protocol must be 'http', 'grpc' or None, not {config.protocol!r}")
    clash = {"max_tokens", "temperature"} & set(config.extra_sampling)
    if clash:
        raise ValueError(f"set {', '.join(sorted(clash))} in the config, not in extra_sampling")
    spec = config.image_set
    if spec.kind not in IMAGE_SET_KINDS:
        raise ValueError(f"image set kind must be one of {IMAGE_SET_KINDS}, not {spec.kind!r}")
    positive_int("image_set.max_side", spec.max_side)
    if spec.kind == "uploaded" and not spec.images:
        raise ValueError("an uploaded image set needs at least one image")
    if spec.kind == "generated":
        positive_int("image_set.count", spec.count)
        positive_int("image_set.seed", spec.seed, 0)
    if spec.kind == "folder" and not spec.folder:
        raise ValueError("a folder image set needs a folder")
    return dataclasses.replace(config, versions=versions, variants=variants)


def run_variants(config: BenchmarkConfig) -> tuple[Variant, ...]:
    """The variants a (validated) config asks: its own, else its versions on the run's server."""
    return config.variants or default_variants(config.versions)


def config_to_dict(config: BenchmarkConfig) -> dict[str, Any]:
    """The config as JSON-ready data; uploaded image bytes become name, size and sha256."""
    d = dataclasses.asdict(dataclasses.replace(config, image_set=dataclasses.replace(config.image_set, images=())))
    d["versions"] = list(config.versions)
    d["variants"] = [v.describe() for v in config.variants]
    d["image_set"]["images"] = [
        {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in config.image_set.images
    ]
    return d


def open_loop_workers(rate: float, timeout_s: float) -> int:
    """Threads for an open loop: a request may stay in flight up to ``timeout_s``, so ``rate x
    timeout_s`` threads never make an arrival wait; capped at ``MAX_OPEN_LOOP_WORKERS`` (threads
    start only when needed, so a large pool costs nothing at low load)."""
    return int(min(MAX_OPEN_LOOP_WORKERS, max(4, math.ceil(rate * timeout_s))))


# --------------------------------------------------------------------------- requests


def answer_box(text: str, image: BenchImage) -> tuple[dict[str, float] | None, float | None]:
    """The box to record for an answer, on the 0..1000 grid, and its IoU with the ground truth.

    With ground truth: the predicted box of the best match (``boxes.match_boxes``) and its IoU;
    0.0 (with the first box, if any) when no box overlaps a true one. Without ground truth (or
    an image known to hold no table): the first box and ``None``.
    """
    boxes = parse_answer(text, image.width, image.height).grid_boxes
    truth = image.truth
    if not truth:
        return (dataclasses.asdict(boxes[0]) if boxes else None), None
    if not boxes:
        return None, 0.0
    best = max((p for p in match_boxes(boxes, truth) if p[0] is not None and p[1] is not None),
               key=lambda p: p[2], default=None)
    if best is None:
        return dataclasses.asdict(boxes[0]), 0.0
    return dataclasses.asdict(boxes[best[0]]), float(best[2])


# --------------------------------------------------------------------------- the run


class _Runner:
    """One run: its state, its threads and its records. ``run()`` does the work."""

    def __init__(self, config: BenchmarkConfig, store: RunStore, target: "ServerTarget | None",
                 on_progress: ProgressCallback | None, cancel_event: threading.Event | None) -> None:
        self.config = validate_config(config)
        self.store = store
        self.target = target
        self.on_progress = on_progress
        self.cancel_event = cancel_event or threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        n_versions = len(self.config.versions)
        warm_total = self.config.warmup * n_versions
        measured_total = self.config.requests * n_versions
        self._progress = BenchmarkProgress(
            run_id=None, status="starting", done=0, total=warm_total + measured_total, failures=0,
            warmup_total=warm_total, measured_total=measured_total,
            by_version={v: {"done": 0, "ok": 0, "failures": 0} for v in self.config.versions})
        self._stop_cause: str | None = None  # "cancelled", "dead", "fatal"
        self._stop_reason: str | None = None
        self._unreachable_streak: dict[int, int] = {}  # per server (its client): failures in a row
        self._first_send_ns: int | None = None
        self._late_sends = 0
        self._max_lag_ms = 0.0
        self._images: list[BenchImage] = []
        self._unseen = None if self.config.image_set.reuse else UnseenImages(self.config.seed)
        self._client: VariantClients | None = None
        self._watch: RunWatch | None = None  # the servers whose memory and metrics the run reads
        self._writer: RunStore | None = None
        self._run_id: int | None = None
        self._metric_marks: list[float] = []  # vllm:* readings at the measured window's edges (t_mono)
        self._metric_error: str | None = None  # why a reading at an edge failed
        self._metric_reads = 0  # readings of the edges attempted
        self._timings: dict[str, Any] | None = None  # the server-side timings' summary
        self.outcome: RunOutcome | None = None

    # ------------------------------------------------------------------ state

    def progress(self) -> BenchmarkProgress:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> BenchmarkProgress:  # caller holds _lock
        p = dataclasses.replace(self._progress, by_version={k: dict(v) for k, v in self._progress.by_version.items()})
        if not p.finished:
            p.elapsed_s = time.perf_counter() - self._t0
        return p

    def _notify(self, snapshot: BenchmarkProgress) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(snapshot)
        except Exception:  # a broken callback must not break the run
            log.exception("benchmark progress callback failed")

    def _set_status(self, status: str, **fields: Any) -> None:
        with self._lock:
            self._progress.status = status
            for k, v in fields.items():
                setattr(self._progress, k, v)
            snapshot = self._snapshot()
        self._notify(snapshot)

    def _stopping(self) -> bool:
        if self.cancel_event.is_set() and not self._stop.is_set():
            self._request_stop("cancelled", "cancelled by the user")
        return self._stop.is_set()

    def _request_stop(self, cause: str, reason: str) -> None:
        with self._lock:
            if self._stop_cause is None:
                self._stop_cause, self._stop_reason = cause, reason
                self._progress.stopping = reason
        self._stop.set()

    def cancel(self) -> None:
        self.cancel_event.set()
        self._request_stop("cancelled", "cancelled by the user")

    # ------------------------------------------------------------------ one request

    def _execute(self, item: PlannedRequest, scheduled: float | None = None) -> None:
        if scheduled is not None:
            lag_ms = (time.perf_counter() - scheduled) * 1e3
            with self._lock:
                self._max_lag_ms = max(self._max_lag_ms, lag_ms)
                if lag_ms > LATE_SEND_MS:
                    self._late_sends += 1
        cfg, image = self.config, self._images[item.image_index]
        image_b64 = image.b64 if self._unseen is None else \
            self._unseen.variant(image.id, image.b64, item.pair, item.warmup).b64
        extra = dict(cfg.extra_sampling)
        if cfg.temperature > 0 and "seed" not in extra:  # the same seed for every version of one image
            extra["seed"] = (cfg.seed * 1_000_003 + item.pair) % 2**31
        t_call = time.perf_counter_ns()
        with self._lock:
            if self._first_send_ns is None:
                self._first_send_ns = t_call
        error: BaseException | None = None
        try:
            done = self._client.detect(  # type: ignore[union-attr]
                image_b64, cfg.prompt, version=item.version, max_tokens=cfg.max_tokens,
                temperature=cfg.temperature, stream=cfg.stream, extra_sampling=extra,
                request_id=f"run{self._run_id}-{item.seq}")
            try:
                box, iou = answer_box(done.text, image)
            except Exception as exc:  # the parser takes any string; this is a last resort
                box, iou = None, None
                log.warning("could not read a box from answer %r: %s", done.text[:100], exc)
            record = RequestRecord(
                seq=item.seq, version=item.version, send_ns=done.send_ns, recv_ns=done.recv_ns,
                first_token_ns=done.first_token_ns, input_tokens=done.num_input_tokens,
                output_tokens=done.num_output_tokens, status="ok", warmup=item.warmup, image_id=image.id,
                answer=done.text, box=box, iou=iou, chunk_ns=list(done.chunk_ns) or None, level=item.level,
                chunk_tokens=list(done.chunk_tokens) or None)
            record.bursty = arrived_in_bursts(record)  # judged again against the server's TPOT at the end
        except Exception as exc:  # TritonClientError, or anything unexpected: a failed request either way
            error = exc
            kind = type(exc).__name__
            message = str(exc) if isinstance(exc, TritonClientError) else f"unexpected client error: {exc!r}"
            record = RequestRecord(
                seq=item.seq, version=item.version, send_ns=t_call, recv_ns=time.perf_counter_ns(),
                status="error", error=f"{kind}: {message}", warmup=item.warmup, image_id=image.id,
                level=item.level)
        try:
            self._writer.add_request(self._run_id, record)  # type: ignore[union-attr, arg-type]
        except Exception as exc:
            log.exception("could not write request %s of run %s", item.seq, self._run_id)
            self._request_stop("fatal", f"could not write to the run database: {type(exc).__name__}: {exc}")
        self._account(record, error)

    def _account(self, record: RequestRecord, error: BaseException | None) -> None:
        stop_reason = None
        with self._lock:
            p = self._progress
            p.done += 1
            per = p.by_version[record.version]
            per["done"] += 1
            if record.warmup:
                p.warmup_done += 1
            else:
                p.measured_done += 1
            if record.ok:
                p.ok += 1
                per["ok"] += 1
                self._unreachable_streak[self._server_of(record.version)] = 0
            else:
                p.failures += 1
                per["failures"] += 1
                p.last_error = record.error
                if isinstance(error, VersionNotReady):
                    # A version that stopped serving mid-run (its engine died): the run ends partial.
                    stop_reason = f"version {record.version} stopped serving: {error}"
                elif isinstance(error, ServerUnreachable):
                    stop_reason = self._count_unreachable(record.version, error)
            snapshot = self._snapshot()
        if stop_reason:
            self._request_stop("dead", stop_reason)
        self._notify(snapshot)

    def _server_of(self, version: str) -> int:
        """Which server a version's requests go to (the variants of one server share one client)."""
        try:
            return id(self._client.client(version))  # type: ignore[union-attr]
        except (AttributeError, KeyError):
            return 0

    def _count_unreachable(self, version: str, error: BaseException) -> str | None:  # caller holds _lock
        """Count one more unreachable answer from ``version``'s server; the stop reason once it is gone.

        Counted per server: in a paired run on two servers, the one still answering must not hide the
        one that died. The reason names the variant (and its address) when the run has several servers."""
        server = self._server_of(version)
        streak = self._unreachable_streak[server] = self._unreachable_streak.get(server, 0) + 1
        if streak < self.config.stop_after_unreachable:
            return None
        clients = self._client
        whose = ""
        if clients is not None and len({self._server_of(v) for v in clients.variants}) > 1:
            variant = clients.variants[version]
            whose = f"variant {variant.label} ({variant.url or clients.targets[version].url()}): "
        return f"{DEAD_SERVER_REASON}: {whose}{streak} requests in a row found it unreachable ({error})"

    # ------------------------------------------------------------------ load

    def _closed_loop(self, items: Sequence[PlannedRequest], concurrency: int) -> None:
        """``concurrency`` workers; each sends its next request when its previous one is answered."""
        pending = iter(items)
        take = threading.Lock()

        def worker() -> None:
            while not self._stopping():
                with take:
                    item = next(pending, None)
                if item is None:
                    return
                self._execute(item)

        workers = min(concurrency, len(items))
        if workers == 0:
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"bench-run{self._run_id}") as pool:
            futures = [pool.submit(worker) for _ in range(workers)]
        for f in futures:
            f.result()  # _execute catches everything it expects; anything else is a bug: let it show

    def _open_loop(self, items: Sequence[PlannedRequest], rate: float, seed: int, workers: int) -> None:
        """Poisson arrivals: each request is handed to the pool at its arrival time."""
        offsets = poisson_offsets(len(items), rate, seed)
        futures = []
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"bench-run{self._run_id}") as pool:
            start = time.perf_counter()
            for item, offset in zip(items, offsets):
                due = start + float(offset)
                while not self._stopping():
                    delay = due - time.perf_counter()
                    if delay <= 0:
                        break
                    self._stop.wait(min(delay, 0.05))  # wakes at once on a stop; polls the cancel event
                if self._stopping():
                    break
                futures.append(pool.submit(self._execute, item, due))
        for f in futures:
            f.result()

    # ------------------------------------------------------------------ the whole run

    def run(self) -> RunOutcome:
        try:
            return self._run()
        except Exception as exc:  # a bug or a broken database: end the run as failed, never hang the caller
            log.exception("benchmark run failed")
            reason = f"internal error: {type(exc).__name__}: {exc}"
            if self._run_id is not None:
                try:
                    self._writer_or_store().finish_run(self._run_id, "failed", reason)
                except Exception:
                    log.exception("could not mark run %s failed", self._run_id)
            self._set_status("failed", reason=reason)
            self.outcome = RunOutcome(self._run_id, "failed", reason, {}, progress=self.progress(),  # type: ignore[arg-type]
                                      duration_s=time.perf_counter() - self._t0)
            return self.outcome
        finally:
            if self._client is not None:
                self._client.close()
            if self._writer is not None:
                self._writer.close()

    def _writer_or_store(self) -> RunStore:
        return self._writer if self._writer is not None else self.store

    def _run(self) -> RunOutcome:
        cfg = self.config
        variants = run_variants(cfg)
        if self.target is None:
            from services.client.server_target import current_target

            self.target = own_target(variants) or current_target()
        if cfg.protocol:
            self.target = dataclasses.replace(self.target, protocol=cfg.protocol)
        workers = cfg.concurrency if cfg.load == "closed" else (
            cfg.max_in_flight or open_loop_workers(cfg.rate, cfg.timeout_s))
        # A private store on the same database for this run's threads: closing it at the end closes
        # every connection its worker threads opened (RunStore keeps one per thread).
        self._writer = RunStore(self.store.data_dir, db_name=self.store.path.name)
        try:
            self._client = VariantClients(variants, self.target, cfg.timeout_s, max(workers, cfg.concurrency))
        except ValueError as exc:  # an address a client refuses (a path, another scheme)
            error: str | None = f"bad server address: {exc}"
            manifest = address_error_manifest(self.target, error)
            manifest["variants"] = [v.describe() for v in variants]
            target, protocol, url, model = self.target, self.target.protocol, self.target.url(), variants[0].model
        else:
            primary = self._client.primary
            target = self._client.targets[primary.key]
            protocol, url, model = target.protocol, (target.url() if primary.kind == "triton" else primary.url), \
                primary.model
            # the preflight asks the primary variant's server with a short timeout
            with client_for(primary, target, timeout_s=min(cfg.timeout_s, PREFLIGHT_TIMEOUT_S)) as admin:
                manifest, error = variants_manifest(self._client, admin, cfg)
        if error is None:
            try:
                image_set = load_image_set(cfg.image_set)
                self._images = image_set.images
                manifest["image_set"] = image_set.describe()
            except (ValueError, OSError) as exc:
                error = f"the images could not be prepared: {exc}"
                manifest["image_set"] = {"kind": cfg.image_set.kind, "error": str(exc)}
        scope = memory_scope(target)
        manifest["memory_scope"] = scope.describe()
        watch = RunWatch(scope, target.metrics_url, {}, ()) if self._client is None else \
            run_watch(self._client.variants.values(), self._client.targets, target)
        self._watch = watch
        manifest["memory_scopes"] = watch.describe()
        manifest["workload"] = {**workload_manifest(cfg.image_set.reuse, cfg.seed),
                                "prefix_caching": prefix_caching(target, cfg.versions, manifest)}
        config_dict = {**self._stored_config(), "model": model, "protocol": protocol, "url": url}
        self._run_id = self._writer.create_run(config_dict, manifest)
        self._set_status("starting", run_id=self._run_id)
        if error is not None:
            return self._finish("failed", error, [], None, None)
        if self._stopping():
            return self._finish("cancelled", "cancelled by the user before the first request", [], None, None)

        from services.bench.sampler import get_shared_sampler

        sampler = get_shared_sampler(**watch.sampler_config())
        sink = self._writer.sample_sink(self._run_id)
        t_attach = time.perf_counter()
        sampler.add_sink(sink)
        try:
            # the memory baseline must precede the first request: wait for one sample
            deadline = t_attach + 2.0 / sampler.rate_hz + 1.0
            while time.perf_counter() < deadline and not self._stopping():
                latest = sampler.latest()
                if latest is not None and latest.t_mono >= t_attach:
                    break
                time.sleep(0.01)
            self._send_requests(workers)
            t_end = time.perf_counter()
        finally:
            sampler.remove_sink(sink)
            try:
                sink.close()
            except Exception:
                log.exception("could not write the last memory samples of run %s", self._run_id)
        return self._conclude(t_attach, t_end)

    def _send_requests(self, workers: int) -> None:
        """Warm-up, then the measured requests (a sweep sends its levels instead: ``services.bench.sweep``)."""
        cfg = self.config
        plan = request_plan(cfg.versions, len(self._images), cfg.requests, cfg.warmup)
        warm = [p for p in plan if p.warmup]
        measured = [p for p in plan if not p.warmup]
        if warm and not self._stopping():
            self._set_status("warmup")
            self._closed_loop(warm, cfg.concurrency)
        if not self._stopping():
            self._mark_metrics()
            self._set_status("running")
            if cfg.load == "closed":
                self._closed_loop(measured, cfg.concurrency)
            else:
                self._open_loop(measured, cfg.rate, cfg.seed, workers)
            self._mark_metrics()

    def _mark_metrics(self) -> None:
        """Store settled readings of the vllm:* series of every server the run reads (the main one's and each
        OpenAI variant's): the edges of the server-side timings' window."""
        self._metric_reads += 1
        try:
            watch = self._watch  # set before the first request
            readings = [] if watch is None else settled_readings(watch.metrics_url, watch.version_keys, watch.servers)
            if readings:
                self._writer.add_samples(self._run_id, readings)  # type: ignore[union-attr, arg-type]
                # one mark per edge: the window opens at its first reading and closes at its last
                self._metric_marks.append(readings[-1].t_mono if self._metric_marks else readings[0].t_mono)
        except Exception as exc:  # the server timings become unknown; the run goes on
            self._metric_error = f"{type(exc).__name__}: {exc}"
            log.warning("could not record the vllm:* metrics of run %s: %s", self._run_id, self._metric_error)

    def _stored_config(self) -> dict[str, Any]:
        """The run's config as stored (a sweep adds its levels and targets)."""
        return config_to_dict(self.config)

    def _summary_extra(self, records: list[RequestRecord]) -> dict[str, Any]:
        """More of the stored summary (a sweep adds its levels)."""
        return {}

    def _conclude(self, t_attach: float, t_end: float) -> RunOutcome:
        records = self._writer.get_requests(self._run_id)  # type: ignore[union-attr, arg-type]
        measured_ok = sum(1 for r in records if r.ok and not r.warmup)
        measured_n = sum(1 for r in records if not r.warmup)
        failures = measured_n - measured_ok
        cause, stop_reason = self._stop_cause, self._stop_reason
        if cause in ("dead", "fatal"):
            status = "partial" if measured_ok else "failed"
            reason = stop_reason
        elif cause == "cancelled":
            status = "cancelled"
            reason = f"cancelled by the user after {len(records)} of {self._progress.total} requests"
        elif measured_n and not measured_ok:
            status = "failed"
            last = next((r.error for r in reversed(records) if not r.ok), None)
            reason = f"every measured request failed; the last error: {last}"
        else:
            status = "completed"
            reason = f"{failures} of {measured_n} measured requests failed" if failures else None
        samples = self._writer.get_samples(self._run_id)  # type: ignore[union-attr, arg-type]
        first = self._first_send_ns / 1e9 if self._first_send_ns is not None else None
        memory = memory_summary(samples, t0=t_attach, t1=t_end, first_request_t=first)
        self._timings = record_server_timings(self._writer, self._run_id, records,  # type: ignore[arg-type]
                                             self._metric_marks, self._metric_error, self._metric_reads > 0)
        return self._finish(status, reason, records, memory, (t_attach, t_end))

    def _finish(self, status: str, reason: str | None, records: list[RequestRecord],
                memory: list[MemorySeriesSummary] | None, window: tuple[float, float] | None) -> RunOutcome:
        cfg = self.config
        summaries: dict[str, VersionSummary] = {v: summarize_version(records, v) for v in cfg.versions}
        summary: dict[str, Any] = {
            "versions": {v: s.to_dict() for v, s in summaries.items()},
            "memory": [dataclasses.asdict(m) for m in (memory or [])],
            "requests": {"planned": self._progress.total, "recorded": len(records),
                         "ok": sum(1 for r in records if r.ok), "failed": sum(1 for r in records if not r.ok),
                         "warmup": sum(1 for r in records if r.warmup)},
            "open_loop": ({"rate": cfg.rate, "seed": cfg.seed, "late_sends": self._late_sends,
                           "late_threshold_ms": LATE_SEND_MS, "max_lag_ms": round(self._max_lag_ms, 3)}
                          if cfg.load == "open" else None),
            "sample_window": None if window is None else {"t0": window[0], "t1": window[1]},
            "duration_s": time.perf_counter() - self._t0,
            "server_timings": self._timings,
            **self._summary_extra(records),
        }
        self._writer.finish_run(self._run_id, status, reason, summary=summary)  # type: ignore[union-attr, arg-type]
        self._set_status(status, reason=reason, elapsed_s=time.perf_counter() - self._t0)
        self.outcome = RunOutcome(self._run_id, status, reason, summaries, memory=memory or [],  # type: ignore[arg-type]
                                  progress=self.progress(), duration_s=summary["duration_s"], summary=summary)
        return self.outcome


# --------------------------------------------------------------------------- public API


class BenchmarkHandle:
    """A run going on in a daemon thread (see :func:`start_benchmark`). Every method returns at
    once except :meth:`wait`; all are safe to call from any thread."""

    def __init__(self, runner: _Runner) -> None:
        self._runner = runner
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name="benchmark-run", daemon=True)

    def _main(self) -> None:
        try:
            self._runner.run()
        finally:
            self._done.set()

    @property
    def config(self) -> BenchmarkConfig:
        return self._runner.config

    @property
    def run_id(self) -> int | None:
        """The run's id in the store, once it is created (None while starting)."""
        return self.progress().run_id

    def progress(self) -> BenchmarkProgress:
        """A snapshot of where the run is (a copy: safe to keep)."""
        return self._runner.progress()

    def cancel(self) -> None:
        """Stop sending; requests in flight finish and are recorded; the run ends "cancelled"."""
        self._runner.cancel()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> RunOutcome | None:
        """The outcome once the run has ended; None if ``timeout`` seconds pass first."""
        if not self._done.wait(timeout):
            return None
        return self._runner.outcome

    @property
    def outcome(self) -> RunOutcome | None:
        return self._runner.outcome if self.done() else None


def start_benchmark(config: BenchmarkConfig, store: RunStore | None = None, target: "ServerTarget | None" = None,
                    on_progress: ProgressCallback | None = None,
                    cancel_event: threading.Event | None = None) -> BenchmarkHandle:
    """Start a run in a daemon thread and return its handle at once.

    ``store``: default ``RunStore()`` (the data folder). ``target``: default
    ``server_target.current_target()``, resolved in the run's thread (starting the embedded server
    can take a while). ``on_progress`` is called from the run's threads after each request and
    each change of status. Raises ValueError for an invalid config (before any thread starts).
    """
    runner = _Runner(config, store if store is not None else RunStore(), target, on_progress, cancel_event)
    handle = BenchmarkHandle(runner)
    handle._thread.start()
    return handle


def run_benchmark(config: BenchmarkConfig, store: RunStore | None = None, target: "ServerTarget | None" = None,
                  on_progress: ProgressCallback | None = None,
                  cancel_event: threading.Event | None = None) -> RunOutcome:
    """Run a benchmark in the caller's thread and return its outcome (see :func:`start_benchmark`).

    Setting ``cancel_event`` from another thread cancels the run.
    """
    runner = _Runner(config, store if store is not None else RunStore(), target, on_progress, cancel_event)
    return runner.run()
