"""Sweeps against the real local Triton (tests/conftest.py; transformers engine, tiny random model).

``qwen-bench sweep --json`` as a subprocess: its JSON, the levels stored, the versions alternated,
goodput and capacity equal to a recomputation from the rows read with sqlite3 alone; the
transformers engine serves one request at a time per version, so capacity does not grow with
concurrency while latency does. A sweep cancelled and a sweep whose server is killed keep their
finished levels. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.bench.goodput import LatencyTargets
from services.bench.runner import DEAD_SERVER_REASON, BenchmarkConfig
from services.bench.sampler import stop_shared_sampler
from services.bench.store import RunStore
from services.bench.sweep import SweepConfig, start_sweep, validate_sweep
from services.compare.capacity import sweep_result
from services.core import settings
from services.image_sets.image_set import ImageSetSpec
from tests.bench.test_runner import EXACT, IMAGES, MAX_TOKENS, target_of

pytestmark = pytest.mark.timeout(300)

LEVELS = ("1", "2", "4")
TARGETS = dict(ttft_ms=5000.0, tpot_ms=2000.0, e2e_ms=8000.0)  # generous: every level finishes on a busy CPU
# Long enough answers that the engine's time, not the client's and Triton's per-request overhead, sets
# the pace: with 4 tokens a busy machine's client overhead at concurrency 1 made concurrency look useful.
SWEEP_TOKENS = 48


@pytest.fixture(scope="module", autouse=True)
def _stop_sampler_after_module():
    yield
    stop_shared_sampler()


@pytest.fixture(scope="module")
def cli_sweep(triton_server, tmp_path_factory):
    """One sweep through ``qwen-bench sweep --json``: (its JSON, the database path)."""
    data = tmp_path_factory.mktemp("sweep-db")
    env = {k: v for k, v in os.environ.items() if k not in ("QWEN_TRITON_URL", "QWEN_GPU_PRICE_PER_HOUR")}
    args = [sys.executable, "-m", "services.bench.cli", "sweep", "--url", triton_server.http_url,
            "--metrics-url", triton_server.metrics_url, "--levels", *LEVELS, "--requests", "8", "--warmup", "1",
            "--images", "generated", "--count", "4", "--max-side", "160", "--max-tokens", str(SWEEP_TOKENS),
            "--ignore-eos", "--ttft-ms", str(TARGETS["ttft_ms"]), "--tpot-ms", str(TARGETS["tpot_ms"]),
            "--e2e-ms", str(TARGETS["e2e_ms"]), "--price-per-gpu-hour", "3.6", "--demand", "10",
            "--data-dir", str(data), "--no-progress", "--json"]
    proc = subprocess.run(args, cwd=settings.PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), data / "runs.sqlite3"


def test_sweep_json_has_levels_capacity_cost_and_a_recommendation(cli_sweep):
    out, _ = cli_sweep
    assert set(out["versions"]) == {"1", "2"} and isinstance(out["recommendation"], str) and out["recommendation"]
    for v in ("1", "2"):
        vo = out["versions"][v]
        assert [lv["value"] for lv in vo["levels"]][:1] == [1.0]
        for lv in vo["levels"]:
            assert {"value", "throughput_rps", "goodput_rps", "p50_ms", "p90_ms", "p99_ms", "ttft_p50_ms",
                    "tpot_p50_ms"} <= set(lv)
            assert 0 <= lv["goodput_rps"] <= lv["throughput_rps"] and lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"]
        assert vo["capacity_rps"] == max(lv["goodput_rps"] for lv in vo["levels"] if lv["status"] != "cut short")
        # $3.6 per GPU-hour = $0.001 per second: per 1,000 images, 1 / capacity dollars
        assert vo["cost_per_1k_images"] == pytest.approx(1.0 / vo["capacity_rps"], rel=1e-3)
        assert vo["gpus_needed"] >= 10 / vo["capacity_rps"]
        assert vo["kv_max_concurrency"] is None  # the transformers engine states no KV-cache room


def _db_levels(db: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM sweep_levels ORDER BY idx").fetchall()


def _recomputed_goodput(db: Path, level: int) -> tuple[float, float]:
    """Goodput and throughput of one level from its rows, read with sqlite3 alone."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT send_ns, recv_ns, latency_ms, ttft_ms, output_tokens, status FROM requests "
                            "WHERE level = ? AND warmup = 0", (level,)).fetchall()
    window = (max(r[1] for r in rows) - min(r[0] for r in rows)) / 1e9
    good = 0
    for send, recv, lat, ttft, n, status in rows:
        tpot = (lat - ttft) / (n - 1) if n and n > 1 else 0.0
        good += status == "ok" and lat <= TARGETS["e2e_ms"] and ttft <= TARGETS["ttft_ms"] and tpot <= TARGETS["tpot_ms"]
    return good / window, sum(r[5] == "ok" for r in rows) / window


def test_levels_are_stored_alternated_and_goodput_and_capacity_equal_a_recomputation(cli_sweep):
    out, db = cli_sweep
    levels = _db_levels(db)
    assert [lv["version"] for lv in levels[:2]] == ["1", "2"]
    if len(levels) >= 4:
        assert [lv["version"] for lv in levels[2:4]] == ["2", "1"]  # alternated level by level
    with sqlite3.connect(db) as conn:
        per_level = dict(conn.execute("SELECT level, sum(warmup) FROM requests GROUP BY level").fetchall())
        assert conn.execute("SELECT count(*) FROM requests WHERE level IS NULL").fetchone()[0] == 0
    assert all(per_level[lv["idx"]] == 1 for lv in levels)  # each level its own warm-up
    for v in ("1", "2"):
        mine = [lv for lv in levels if lv["version"] == v]
        by_json = {lv["level"]: lv for lv in out["versions"][v]["levels"]}
        goodputs = []
        for lv in mine:
            gp, tp = _recomputed_goodput(db, lv["idx"])
            assert by_json[lv["idx"]]["goodput_rps"] == pytest.approx(gp, rel=1e-3, abs=1e-4)
            assert by_json[lv["idx"]]["throughput_rps"] == pytest.approx(tp, rel=1e-3)
            assert json.loads(lv["stats"])["goodput_rps"] == pytest.approx(gp, rel=1e-6)  # as the sweep saw it
            goodputs.append(gp)
        assert out["versions"][v]["capacity_rps"] == pytest.approx(max(goodputs), rel=1e-3, abs=1e-4)


@pytest.fixture(scope="module")
def demo_transformers_server(tmp_path_factory):
    """The demo detector on the transformers engine: its engine time (about 0.4 s for 48 tokens on
    these CPUs), not the per-request overhead around it, sets the pace, as a real model's does. On
    the tiny checkpoint the overhead dominates (a 48-token answer takes a few ms of engine time), and
    concurrency then hides the overhead: 2.6x the throughput at 4 than at 1, measured, which says
    nothing about batching."""
    demo = settings.PROJECT_ROOT / "models" / "demo-detector"
    if not (demo / "model.safetensors").exists():
        pytest.skip(f"the demo detector is missing ({demo})")
    from services.serving.embedded_triton import start_embedded_triton

    server = start_embedded_triton(demo, workdir=tmp_path_factory.mktemp("demo-transformers"),
                                   ports={"http": None, "grpc": None, "metrics": None}, engine="transformers")
    yield server
    server.stop()


@pytest.mark.server
def test_transformers_engine_capacity_does_not_grow_with_concurrency(demo_transformers_server, tmp_path):
    """One request at a time per version: at concurrency 4 the requests queue (latency grows), the
    throughput stays about that of concurrency 1 (it would be about 4x with batching; the vLLM
    engine's test below finds it grow)."""
    from services.bench.sweep import run_sweep

    bench = BenchmarkConfig(versions=("1",), image_set=ImageSetSpec(kind="generated", count=8, seed=3),
                            requests=8, warmup=1, max_tokens=SWEEP_TOKENS, extra_sampling=dict(EXACT),
                            timeout_s=120.0)
    sweep = SweepConfig(bench=bench, levels=(1, 4), targets=LatencyTargets(ttft_ms=120000.0, tpot_ms=10000.0,
                                                                            e2e_ms=240000.0))
    with RunStore(tmp_path / "db") as store:
        outcome = run_sweep(sweep, store, target_of(demo_transformers_server, "http"))
        assert outcome.status == "completed", outcome.reason
        result = sweep_result(store, outcome.run_id)
    by_value = {lv.value: lv.stats for lv in result.versions["1"].levels}
    print(f"\ntransformers v1 sweep: {by_value[1.0].throughput_rps:.2f} images/s at concurrency 1, "
          f"{by_value[4.0].throughput_rps:.2f} at 4; p50 {by_value[1.0].p50_ms:.0f} -> {by_value[4.0].p50_ms:.0f} ms")
    assert by_value[4.0].throughput_rps < 1.5 * by_value[1.0].throughput_rps
    assert by_value[4.0].p50_ms > 2.0 * by_value[1.0].p50_ms


def _sweep(levels=(1, 2, 4, 8), requests=6, **kw) -> SweepConfig:
    bench = BenchmarkConfig(versions=("1", "2"), image_set=ImageSetSpec(kind="uploaded", images=IMAGES, max_side=160),
                            requests=requests, warmup=1, max_tokens=MAX_TOKENS, extra_sampling=dict(EXACT),
                            timeout_s=30.0)
    return SweepConfig(bench=bench, levels=levels, targets=LatencyTargets(**TARGETS), saturation_drop=0.9, **kw)


def _wait_levels(store: RunStore, handle, n: int, timeout: float = 150) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_id = handle.progress().run_id
        if run_id is not None and len(store.get_levels(run_id)) >= n:
            return run_id
        assert not handle.done(), handle.wait(1)
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} levels finished in {timeout} s")


def test_a_cancelled_sweep_keeps_its_finished_levels(triton_server, tmp_path):
    store = RunStore(tmp_path / "db")
    handle = start_sweep(_sweep(), store, target_of(triton_server, "http"))
    run_id = _wait_levels(store, handle, 2)
    handle.cancel()
    outcome = handle.wait(60)
    assert outcome is not None and outcome.status == "cancelled"
    levels = store.get_levels(run_id)
    finished = [lv for lv in levels if lv.finished]
    assert len(finished) >= 2 and all(lv.stats["requests"] == 6 for lv in finished)
    assert len(levels) < 8 and all(not lv.finished for lv in levels[len(finished):])
    result = sweep_result(store, run_id)
    assert result is not None and result.finished_levels() == len(finished)
    assert result.versions["1"].capacity_rps is not None and result.versions["1"].capacity_rps > 0
    assert outcome.summary["sweep"]["levels"] and store.get_run(run_id).status == "cancelled"
    store.close()


def test_a_sweep_whose_server_dies_keeps_its_finished_levels(own_triton_server, tmp_path):
    server, store = own_triton_server, RunStore(tmp_path / "db")
    handle = start_sweep(_sweep(requests=8), store, target_of(server, "grpc"))
    run_id = _wait_levels(store, handle, 2)
    os.kill(server.pid, signal.SIGKILL)
    outcome = handle.wait(120)
    assert outcome is not None and outcome.status == "partial" and outcome.reason.startswith(DEAD_SERVER_REASON)
    levels = store.get_levels(run_id)
    finished = [lv for lv in levels if lv.finished]
    assert len(finished) >= 2 and levels[-1].status == "cut short"
    result = sweep_result(store, run_id)
    assert result.status == "partial" and result.finished_levels() == len(finished)
    assert any("only its finished levels count" in n for n in result.notes)
    for vc in result.versions.values():  # capacity from the finished levels only
        done = [lv.stats.goodput_rps for lv in vc.levels if lv.finished]
        if done:
            assert vc.capacity_rps == pytest.approx(max(done))
    store.close()


def test_a_bad_sweep_is_refused_before_anything_starts():
    for change, words in (({"levels": ()}, "at least one"), ({"levels": (1, 2.5)}, "whole numbers"),
                          ({"levels": (2, 2)}, "once"), ({"repeats": 0}, "repeats"),
                          ({"targets": LatencyTargets(e2e_ms=-1)}, "end-to-end")):
        with pytest.raises(ValueError, match=words):
            validate_sweep(SweepConfig(**{"levels": (1, 2), **change}))
    ok = validate_sweep(SweepConfig(levels=(4, 1, 2)))
    assert ok.levels == (1, 2, 4) and ok.bench.concurrency == 4
    rates = validate_sweep(SweepConfig(load="open", levels=(0.5, 2.0)))
    assert rates.bench.load == "open" and rates.bench.rate == 2.0 and rates.level_requests(2.0) == rates.bench.requests


def test_a_rate_sweep_sends_poisson_arrivals_level_by_level(triton_server, tmp_path):
    from services.bench.sweep import run_sweep

    store = RunStore(tmp_path / "db")
    outcome = run_sweep(_sweep(levels=(1.0, 3.0), requests=4, load="open"), store, target_of(triton_server, "http"))
    assert outcome.status == "completed", outcome.reason
    # a sweep has no single measured window: its server-side timings say they were not measured
    from services.bench.server_timings import NOT_MEASURED

    assert outcome.summary["server_timings"]["reason"] == NOT_MEASURED
    levels = store.get_levels(outcome.run_id)
    assert [(lv.version, lv.load, lv.value) for lv in levels] == [("1", "open", 1.0), ("2", "open", 1.0),
                                                                  ("2", "open", 3.0), ("1", "open", 3.0)]
    result = sweep_result(store, outcome.run_id)
    assert result.load == "open"
    for vc in result.versions.values():
        slow = vc.levels[0].stats
        # 4 arrivals at 1/s span about 3 s: throughput well under the 3/s level's
        assert slow.requests == 4 and 0 < slow.throughput_rps < 3.0
    store.close()


def test_repeated_levels_alternate_the_versions_and_give_capacity_an_interval(triton_server, tmp_path):
    from services.bench.sweep import run_sweep

    store = RunStore(tmp_path / "db")
    outcome = run_sweep(_sweep(levels=(1,), requests=3, repeats=2), store, target_of(triton_server, "http"))
    assert outcome.status == "completed", outcome.reason
    levels = store.get_levels(outcome.run_id)
    assert [(lv.version, lv.repeat) for lv in levels] == [("1", 0), ("2", 0), ("2", 1), ("1", 1)]
    for vc in sweep_result(store, outcome.run_id).versions.values():
        c = vc.capacity
        assert c.repeats == 2 and c.lo is not None and c.lo <= c.rps <= c.hi
        assert c.rps == pytest.approx(sum(lv.stats.goodput_rps for lv in vc.levels) / 2)
    store.close()


@pytest.mark.vllm
@pytest.mark.server
def test_vllm_engine_capacity_grows_with_concurrency(vllm_server, tmp_path):
    """The real vLLM engine batches requests: a sweep over concurrency 1 and 8 finds each version's
    capacity at 8, well above its goodput at 1 (the transformers engine's stays flat, above)."""
    from services.bench.sweep import run_sweep

    bench = BenchmarkConfig(versions=("1", "2"), image_set=ImageSetSpec(kind="generated", count=16, seed=7),
                            requests=16, warmup=2, max_tokens=32, extra_sampling=dict(EXACT), timeout_s=120.0)
    sweep = SweepConfig(bench=bench, levels=(1, 8), targets=LatencyTargets(ttft_ms=60000.0, tpot_ms=10000.0,
                                                                            e2e_ms=120000.0))
    with RunStore(tmp_path / "db") as store:
        outcome = run_sweep(sweep, store, target_of(vllm_server, "http"))
        assert outcome.status == "completed", outcome.reason
        result = sweep_result(store, outcome.run_id)
    for v in ("1", "2"):
        goodput = {lv.value: lv.stats.goodput_rps for lv in result.versions[v].levels}
        print(f"\nvLLM v{v} sweep: goodput {goodput[1.0]:.2f} images/s at concurrency 1, {goodput[8.0]:.2f} at 8")
        assert goodput[8.0] > 1.5 * goodput[1.0]
        assert result.versions[v].capacity_rps == pytest.approx(goodput[8.0])
