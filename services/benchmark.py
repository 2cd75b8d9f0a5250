"""Benchmark runs: the same requests sent to one or both versions, every request and sample recorded.

CONTRACT (the Benchmark page and the command-line entry build on exactly these names):

    config = BenchmarkConfig(versions=("1", "2"), image_set=ImageSetSpec(kind="samples"), requests=20, ...)
    handle = start_benchmark(config, store=RunStore(), target=current_target())   # a background thread
    handle.progress()   -> BenchmarkProgress (done / total, failures, status, run_id, last error)
    handle.cancel()     # stops sending; in-flight requests finish; the run ends "cancelled"
    handle.wait(timeout) -> RunOutcome (run_id, status, reason, summaries per version)
    run_benchmark(config, store, target, on_progress=None, cancel_event=None) -> RunOutcome  # blocking

Images come from ``ImageSetSpec`` (uploaded bytes, the bundled samples, a generated labelled set
from a seed, or a dataset folder), each with its ground truth where known. With both versions the
requests are interleaved in the same image order (v1 img0, v2 img0, v1 img1, ...), so drift hits both
alike. Load: closed loop at a concurrency, or open loop at a request rate with Poisson arrivals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

LoadMode = Literal["closed", "open"]
ImageSetKind = Literal["uploaded", "samples", "generated", "folder"]


@dataclass(frozen=True)
class ImageSetSpec:
    """Which images a run sends. ``uploaded``: ``images`` holds (name, bytes) pairs."""

    kind: ImageSetKind = "samples"
    seed: int = 0  # generated sets
    count: int = 16  # generated sets
    folder: str | None = None  # dataset folder (labels.jsonl or OpenFoodFacts parquet)
    images: tuple[tuple[str, bytes], ...] = ()  # uploaded
    max_side: int = 1024


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


@dataclass
class BenchmarkProgress:
    run_id: int | None
    status: str  # "starting", "warmup", "running", "completed", "partial", "failed", "cancelled"
    done: int
    total: int
    failures: int
    last_error: str | None = None


@dataclass
class RunOutcome:
    run_id: int
    status: str
    reason: str | None
    summaries: dict[str, Any]  # version -> bench_stats.VersionSummary
