"""Sweeps: each version measured at a series of load levels until it saturates, in one run.

    config = SweepConfig(bench=BenchmarkConfig(versions=("1", "2"), requests=16, warmup=2, ...),
                         load="closed", levels=(1, 2, 4, 8), targets=LatencyTargets(...))
    handle = start_sweep(config, store, target)      # a BenchmarkHandle, like start_benchmark's
    outcome = run_sweep(config, store, target)       # blocking

A sweep is one run of :mod:`services.bench.runner` (same manifest, sampler, store rows, cancel and
dead-server handling) that sends its requests level by level instead of all at once:

- Levels are concurrencies (closed loop: that many requests in flight) or request rates (open loop:
  Poisson arrivals at that many requests per second, seeded by the run's seed plus the level's
  index). Each level is one version alone at that load, so the level measures what one serving
  instance of that version does. Measured requests per level: ``bench.requests``, raised to the
  level's concurrency where it is lower (each slot sends at least one).
- Every level has its own warm-up (``bench.warmup`` requests, closed loop at the level's
  concurrency, at 1 for rates), recorded with ``warmup=True`` and excluded from the numbers.
- The versions alternate level by level (v1 v2, then v2 v1, ...), so drift hits both alike; with
  ``repeats`` each load value is measured that many times (each repeat its own level), which gives
  capacity a confidence interval.
- After each load value (all its repeats), a version *saturates* when its mean goodput over the
  repeats falls below ``1 - saturation_drop`` of its best so far, or when fewer than
  ``min_good_share`` of its requests met the targets; it then gets no further level.
- Every request is stored as it ends with its level (``requests.level``), and each level, as it ends,
  gets a row of ``sweep_levels`` (:class:`services.bench.store.LevelRow`) with its numbers
  (:func:`services.bench.goodput.level_stats`): a sweep cancelled or whose server dies keeps every
  finished level; the level that was going is stored "cut short" (its requests are kept, it counts
  for nothing).

The stored config is the bench config plus ``"sweep"`` (:meth:`SweepConfig.to_dict`); the stored
summary adds ``"sweep"``: the levels and why each version stopped.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.bench.goodput import DEFAULT_TARGETS, LatencyTargets, level_stats
from services.bench.request_plan import request_plan
from services.bench.runner import (
    BenchmarkConfig,
    BenchmarkHandle,
    LoadMode,
    ProgressCallback,
    RunOutcome,
    _Runner,
    open_loop_workers,
    validate_config,
)
from services.bench.stats import RequestRecord
from services.bench.store import LevelRow, RunStore

if TYPE_CHECKING:
    from services.client.server_target import ServerTarget

DEFAULT_CONCURRENCIES = (1, 2, 4, 8)
SATURATION_DROP = 0.10
MIN_GOOD_SHARE = 0.5


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the requests of each level (``bench``: versions, images, requests and warm-up per level
    and version, tokens, ...; its load, concurrency and rate are set from the levels) and the levels."""

    bench: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    load: LoadMode = "closed"
    levels: tuple[float, ...] = DEFAULT_CONCURRENCIES
    repeats: int = 1
    targets: LatencyTargets = DEFAULT_TARGETS
    saturation_drop: float = SATURATION_DROP
    min_good_share: float = MIN_GOOD_SHARE

    @property
    def versions(self) -> tuple[str, ...]:
        return self.bench.versions

    def level_requests(self, value: float) -> int:
        """Measured requests per version at one level."""
        return max(self.bench.requests, int(value)) if self.load == "closed" else self.bench.requests

    def to_dict(self) -> dict[str, Any]:
        return {"load": self.load, "levels": list(self.levels), "repeats": self.repeats,
                "targets": self.targets.to_dict(), "saturation_drop": self.saturation_drop,
                "min_good_share": self.min_good_share}


def validate_sweep(config: SweepConfig) -> SweepConfig:
    """The sweep with its bench config set for its levels, or ValueError naming what is wrong."""
    if config.load not in ("closed", "open"):
        raise ValueError(f"a sweep's load must be 'closed' (concurrencies) or 'open' (rates), not {config.load!r}")
    levels = tuple(config.levels)
    if not levels:
        raise ValueError("a sweep needs at least one load level")
    for v in levels:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        if not ok or (config.load == "closed" and float(v) != int(v)):
            what = "whole numbers of requests in flight" if config.load == "closed" else "positive rates"
            raise ValueError(f"the levels must be {what}, not {v!r}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"each level may be given once, not {list(levels)}")
    levels = tuple(sorted(int(v) if config.load == "closed" else float(v) for v in levels))
    if isinstance(config.repeats, bool) or not isinstance(config.repeats, int) or config.repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, not {config.repeats!r}")
    if not 0 < config.saturation_drop < 1 or not 0 < config.min_good_share <= 1:
        raise ValueError("saturation_drop must be in (0, 1) and min_good_share in (0, 1]")
    config.targets.validate()
    top = max(levels)
    bench = dataclasses.replace(config.bench, load=config.load,
                                concurrency=int(top) if config.load == "closed" else 1,
                                rate=float(top) if config.load == "open" else config.bench.rate,
                                max_in_flight=None if config.load == "closed" else open_loop_workers(
                                    float(top), config.bench.timeout_s))
    return dataclasses.replace(config, bench=validate_config(bench), levels=levels)


def level_words(load: str, value: float) -> str:
    """``"concurrency 4"`` or ``"2.5 requests/s"``."""
    return f"concurrency {int(value)}" if load == "closed" else f"{value:g} requests/s"


class _SweepRunner(_Runner):
    """A run that sends the sweep's levels (see the module docstring); the rest is ``_Runner``'s."""

    def __init__(self, config: SweepConfig, store: RunStore, target: "ServerTarget | None",
                 on_progress: ProgressCallback | None, cancel_event: threading.Event | None) -> None:
        self.sweep = validate_sweep(config)
        super().__init__(self.sweep.bench, store, target, on_progress, cancel_event)
        per_value = {v: self.sweep.repeats * len(self.config.versions) for v in self.sweep.levels}
        warm = sum(n * self.config.warmup for n in per_value.values())
        measured = sum(n * self.sweep.level_requests(v) for v, n in per_value.items())
        p = self._progress
        p.warmup_total, p.measured_total, p.total = warm, measured, warm + measured
        self._next_seq = 0
        self._levels: list[LevelRow] = []
        self._stopped: dict[str, str] = {}  # version -> why its sweep stopped

    # ------------------------------------------------------------------ what is stored

    def _stored_config(self) -> dict[str, Any]:
        return {**super()._stored_config(), "sweep": self.sweep.to_dict()}

    def _summary_extra(self, records: list[RequestRecord]) -> dict[str, Any]:
        return {"sweep": {**self.sweep.to_dict(), "levels": [dataclasses.asdict(lv) for lv in self._levels],
                          "stopped": dict(self._stopped)}}

    def _place(self, level: LevelRow | None) -> dict[str, Any]:
        here = {} if level is None else {"level": level.idx, "version": level.version, "value": level.value,
                                         "repeat": level.repeat}
        return {**here, "load": self.sweep.load, "finished_levels": sum(1 for lv in self._levels if lv.finished),
                "stopped": dict(self._stopped)}

    # ------------------------------------------------------------------ sending

    def _send_requests(self, workers: int) -> None:
        block = 0
        for value in self.sweep.levels:
            for repeat in range(self.sweep.repeats):
                order = self.config.versions if block % 2 == 0 else tuple(reversed(self.config.versions))
                block += 1
                for version in order:
                    if self._stopping():
                        return
                    if version not in self._stopped:
                        self._run_level(version, value, repeat)
            if self._stopping():
                return
            self._check_saturation(value)
        self._set_status("running", sweep=self._place(None))

    def _run_level(self, version: str, value: float, repeat: int) -> None:
        sw, cfg = self.sweep, self.config
        level = LevelRow(run_id=self._run_id, idx=len(self._levels), version=version, load=sw.load,  # type: ignore[arg-type]
                         value=float(value), repeat=repeat, status="completed")
        plan = request_plan((version,), len(self._images), sw.level_requests(value), cfg.warmup)
        plan = [dataclasses.replace(p, seq=self._next_seq + i, level=level.idx) for i, p in enumerate(plan)]
        self._next_seq += len(plan)
        warm, measured = [p for p in plan if p.warmup], [p for p in plan if not p.warmup]
        if warm:
            self._set_status("warmup", sweep=self._place(level))
            self._closed_loop(warm, int(value) if sw.load == "closed" else 1)
        if not self._stopping():
            self._set_status("running", sweep=self._place(level))
            if sw.load == "closed":
                self._closed_loop(measured, int(value))
            else:
                self._open_loop(measured, float(value), cfg.seed + level.idx,
                                open_loop_workers(float(value), cfg.timeout_s))
        records = [r for r in self._writer.get_requests(self._run_id) if r.level == level.idx]  # type: ignore[union-attr, arg-type]
        if sum(1 for r in records if not r.warmup) < len(measured):  # stopped before all its requests ended
            level.status, level.reason = "cut short", self._stop_reason
        level.stats = level_stats(records, sw.targets).to_dict()
        self._levels.append(level)
        self._writer.add_level(level)  # type: ignore[union-attr]

    def _check_saturation(self, value: float) -> None:
        """Stop the versions whose goodput fell or whose requests mostly missed the targets at ``value``."""
        sw = self.sweep
        for version in self.config.versions:
            if version in self._stopped:
                continue
            mine = [lv for lv in self._levels if lv.version == version and lv.finished]
            here = [lv for lv in mine if lv.value == float(value)]
            if not here:
                continue
            def mean_goodput(levels: list[LevelRow]) -> float:
                return sum((lv.stats or {}).get("goodput_rps") or 0.0 for lv in levels) / len(levels)
            gp = mean_goodput(here)
            earlier = {lv.value for lv in mine if lv.value != float(value)}
            best = max((mean_goodput([lv for lv in mine if lv.value == v]) for v in earlier), default=None)
            share = sum((lv.stats or {}).get("good") or 0 for lv in here) / max(
                1, sum((lv.stats or {}).get("requests") or 0 for lv in here))
            where = level_words(sw.load, value)
            if share < sw.min_good_share:
                why = f"saturated at {where}: {share * 100:.0f}% of its requests met the targets"
            elif best is not None and gp < (1 - sw.saturation_drop) * best:
                why = f"saturated at {where}: goodput {gp:.2f}/s fell below {best:.2f}/s"
            else:
                continue
            self._stop_version(version, why, here)

    def _stop_version(self, version: str, why: str, last: list[LevelRow]) -> None:
        self._stopped[version] = why
        for lv in last:
            lv.status, lv.reason = "saturated", why
            self._writer.add_level(lv)  # type: ignore[union-attr]
        done_values = {lv.value for lv in self._levels if lv.version == version}
        left = [v for v in self.sweep.levels if float(v) not in done_values]
        warm = len(left) * self.sweep.repeats * self.config.warmup
        measured = sum(self.sweep.level_requests(v) for v in left) * self.sweep.repeats
        with self._lock:
            p = self._progress
            p.warmup_total -= warm
            p.measured_total -= measured
            p.total -= warm + measured


def start_sweep(config: SweepConfig, store: RunStore | None = None, target: "ServerTarget | None" = None,
                on_progress: ProgressCallback | None = None,
                cancel_event: threading.Event | None = None) -> BenchmarkHandle:
    """Start a sweep in a daemon thread; its handle is a ``BenchmarkHandle`` (progress, cancel, wait).
    Raises ValueError for an invalid config (before any thread starts)."""
    runner = _SweepRunner(config, store if store is not None else RunStore(), target, on_progress, cancel_event)
    handle = BenchmarkHandle(runner)
    handle._thread.start()
    return handle


def run_sweep(config: SweepConfig, store: RunStore | None = None, target: "ServerTarget | None" = None,
              on_progress: ProgressCallback | None = None,
              cancel_event: threading.Event | None = None) -> RunOutcome:
    """Run a sweep in the caller's thread and return its outcome (see :func:`start_sweep`)."""
    runner = _SweepRunner(config, store if store is not None else RunStore(), target, on_progress, cancel_event)
    return runner.run()
