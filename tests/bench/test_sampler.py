"""services.bench.sampler against real faults: NVML (absent on a machine without GPU), a real HTTP
metrics server that is stopped and restarted, a real sink that raises; the ring buffer, the
thread and the shared instance."""

from __future__ import annotations

import os
import socket
import threading
import time
import tracemalloc

import pandas as pd
import pytest

from services.bench.sampler import (
    SOURCE_HOST,
    SOURCE_METRICS,
    SOURCE_NVML,
    SOURCE_SINK,
    Sampler,
    get_shared_sampler,
    stop_shared_sampler,
)
from services.bench.sample_series import Sample, sample_rows, series_for_chart
from services.bench.triton_metrics import parse_series_key
from tests.bench.sampler_fixtures import METRICS_BODY, MetricsServer, metrics_server, nvml_available, wait_for


def test_nvml_failure_is_reported_and_other_sources_still_sample(
    metrics_server: MetricsServer,
) -> None:
    sampler = Sampler(metrics_url=metrics_server.url, root_pid=os.getpid(), retry_interval_s=1.0)
    try:
        t_before = time.time()
        t0 = time.perf_counter()
        ticks = [sampler.sample_once() for _ in range(5)]
        elapsed = time.perf_counter() - t0
        first = ticks[0]
        if nvml_available():  # a GPU machine: NVML must work there
            assert first.gpus and SOURCE_NVML not in first.source_errors
        else:  # this machine: no NVML library, a real fault
            for s in ticks:  # reported in every sample while in back-off
                assert "NVML" in s.source_errors[SOURCE_NVML]
                assert t_before - 1 <= s.source_error_times[SOURCE_NVML] <= time.time()
                assert s.gpus == ()
            status = sampler.source_status()[SOURCE_NVML]
            if elapsed < 0.9:  # back-off: at most one attempt per second
                assert status.attempts == 1
            assert status.failures == status.attempts
        for s in ticks:  # the other sources were not stopped by it
            assert s.metric("nv_inference_request_success", model="qwen", version="1") == 3
            assert any(p.pid == os.getpid() and p.kind == "host" for p in s.processes)
            assert SOURCE_METRICS not in s.source_errors and SOURCE_HOST not in s.source_errors
    finally:
        sampler.stop()


def test_nvml_failure_in_the_running_thread(metrics_server: MetricsServer) -> None:
    with Sampler(rate_hz=50, metrics_url=metrics_server.url, root_pid=os.getpid()) as sampler:
        assert wait_for(lambda: len(sampler) >= 10)
        assert sampler.running
        recent = sampler.samples()
    assert not sampler.running
    assert all(s.metrics and s.processes for s in recent)
    if not nvml_available():
        assert all(SOURCE_NVML in s.source_errors for s in recent)


def test_metrics_endpoint_is_parsed(metrics_server: MetricsServer) -> None:
    sampler = Sampler(metrics_url=metrics_server.url, nvml=False, host_memory=False)
    s = sampler.sample_once()
    assert s.source_errors == {}
    assert s.metric("nv_gpu_memory_used_bytes", gpu_uuid="GPU-x") == 1.5e9
    assert s.metric("nv_gpu_memory_total_bytes", gpu_uuid="GPU-x") == 8e10
    assert s.metric("nv_inference_request_success", model="qwen", version="1") == 3
    assert s.metric("nv_inference_request_success", model="qwen", version="2") == 5
    assert s.metric("nv_inference_request_failure", model="qwen", version="1",
                    reason="BACKEND") == 1
    assert s.metric("vllm:generation_tokens_total", model="qwen", version="2") == 40
    assert s.metric("vllm:time_to_first_token_seconds_count", model="qwen", version="2") == 2
    assert s.metric("qwen_weight_bytes", version="2") == 1e10
    names = {parse_series_key(k)[0] for k in s.metrics}
    assert "nv_cpu_memory_used_bytes" not in names and "process_cpu_seconds_total" not in names
    rows = sample_rows(s)
    device = [r for r in rows if r.kind == "device"]
    assert len(device) == 1 and device[0].source == "triton" and device[0].gpu == "GPU-x"
    assert device[0].memory_bytes == 1_500_000_000
    assert device[0].utilization == pytest.approx(25.0)  # Triton's 0..1 as percent
    weights = [r for r in rows if r.kind == "qwen_weight_bytes"]
    assert len(weights) == 1 and weights[0].version == "2"
    assert weights[0].memory_bytes == 10_000_000_000
    # a gauge with more labels than model/version: one row per part, never summed together
    parts = {r.kind: r.memory_bytes for r in rows if r.kind.startswith("qwen_engine")}
    assert parts == {
        'qwen_engine_weight_bytes{part="model",precision="fp8"}': 7_000_000_000,
        'qwen_engine_weight_bytes{part="decoder_linear",precision="fp8"}': 5_000_000_000,
    }
    chart = series_for_chart([s])
    engine = chart[chart["kind"].str.startswith("qwen_engine")]
    assert sorted(engine["memory_bytes"]) == [5_000_000_000, 7_000_000_000]
    assert all(label.startswith("qwen v2 qwen_engine_weight_bytes") for label in engine["label"])


def test_stopped_metrics_server_is_reported_and_recovery_follows(
    metrics_server: MetricsServer,
) -> None:
    sampler = Sampler(metrics_url=metrics_server.url, nvml=False, host_memory=False,
                      retry_interval_s=0.05, metrics_interval_s=0.0)
    assert sampler.sample_once().metrics
    metrics_server.stop()
    down = sampler.sample_once()
    assert down.metrics == {}
    assert "Connection refused" in down.source_errors[SOURCE_METRICS] or "URLError" in \
        down.source_errors[SOURCE_METRICS]
    assert SOURCE_METRICS in down.source_error_times
    metrics_server.start()  # same port again
    recovered = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.06)  # past the back-off
        s = sampler.sample_once()
        if not s.source_errors:
            recovered = s
            break
    assert recovered is not None, sampler.errors()
    assert recovered.metric("vllm:generation_tokens_total", model="qwen", version="2") == 40
    status = sampler.source_status()[SOURCE_METRICS]
    assert status.failures >= 1 and status.last_error is None


def test_metrics_server_that_never_answers_times_out() -> None:
    # a real socket that accepts connections into its backlog and never responds
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        sampler = Sampler(metrics_url=f"http://127.0.0.1:{port}/metrics", nvml=False,
                          host_memory=False, metrics_timeout_s=0.2)
        t0 = time.perf_counter()
        s = sampler.sample_once()
        took = time.perf_counter() - t0
    assert "timed out" in s.source_errors[SOURCE_METRICS]
    assert took < 2.0


def test_metrics_endpoint_is_read_every_interval_and_carried_between(
    metrics_server: MetricsServer,
) -> None:
    sampler = Sampler(rate_hz=10, metrics_url=metrics_server.url, nvml=False, host_memory=False,
                      metrics_interval_s=0.3)
    first = sampler.sample_once()
    assert metrics_server.hits == 1 and first.metrics_fresh and first.metrics_t_mono == first.t_mono
    between = [sampler.sample_once() for _ in range(3)]  # well within 0.3 s: not read again
    assert metrics_server.hits == 1
    for s in between:
        assert s.metrics == first.metrics and s.metrics_t_mono == first.t_mono
        assert not s.metrics_fresh
        assert s.metric("qwen_weight_bytes", version="2") == 1e10  # latest() readers still see it
        assert [r for r in sample_rows(s) if r.source == "triton"] == []  # stored once, not 4 times
    first_rows = [r for r in sample_rows(first) if r.source == "triton"]
    memory_rows = [r for r in first_rows if r.memory_bytes is not None]
    assert len(memory_rows) == 4  # device + 3 qwen gauges
    # the vllm:* series come too, each as its value (no memory), labelled with its version
    vllm_rows = [r for r in first_rows if r.kind.startswith("vllm:")]
    assert vllm_rows and len(vllm_rows) + 4 == len(first_rows)
    assert all(r.value is not None and r.memory_bytes is None and r.version for r in vllm_rows)
    # asked for, a carried reading's rows carry the time it was read, not the carrying tick's
    assert [r for r in sample_rows(between[-1], carried=True) if r.source == "triton"] == first_rows
    # a chart shows each reading once, at its own time: from every tick, or from a thinned list
    # that left out the tick that read it (the live chart thins long runs)
    whole = series_for_chart([first, *between])
    thinned = series_for_chart(between[1:])
    for chart in (whole, thinned):
        triton = chart[chart["source"] == "triton"]
        assert len(triton) == 4 and set(triton["t_mono"]) == {first.t_mono}
        assert sorted(triton["memory_bytes"]) == sorted(r.memory_bytes for r in memory_rows)  # not summed
        assert set(triton["time"]) == {pd.Timestamp(first.t_wall, unit="s", tz="UTC")}
    time.sleep(0.3)
    again = sampler.sample_once()
    assert metrics_server.hits == 2 and again.metrics_fresh and again.metrics_t_mono == again.t_mono


def test_metrics_interval_in_the_running_thread(metrics_server: MetricsServer) -> None:
    with Sampler(rate_hz=50, metrics_url=metrics_server.url, nvml=False, host_memory=False,
                 metrics_interval_s=0.2) as sampler:
        assert wait_for(lambda: len(sampler) >= 1)
        time.sleep(1.0)
        got = sampler.samples()
        hits = metrics_server.hits
    fresh = [s for s in got if s.metrics_fresh]
    assert len(got) >= 25  # ~50 ticks a second go on at their own rate
    assert len(fresh) == hits and 4 <= hits <= 8, (len(got), hits)  # ~1 s / 0.2 s
    assert all(s.metrics for s in got)  # every tick carries the newest reading
    gaps = sorted(b.t_mono - a.t_mono for a, b in zip(fresh, fresh[1:]))
    assert gaps[0] > 0.17 and gaps[len(gaps) // 2] < 0.3, gaps  # never early; ~0.2 s apart
    for s in got:  # a carried reading is the last one read before the tick
        assert s.metrics_t_mono == max(f.t_mono for f in fresh if f.t_mono <= s.t_mono)


def test_a_failed_read_carries_nothing_and_a_new_url_is_read_at_once(
    metrics_server: MetricsServer,
) -> None:
    sampler = Sampler(rate_hz=10, metrics_url=metrics_server.url, nvml=False, host_memory=False,
                      metrics_interval_s=0.1, retry_interval_s=0.5)
    assert sampler.sample_once().metrics
    port = metrics_server.port
    metrics_server.stop()
    time.sleep(0.1)
    down = sampler.sample_once()  # due: read, failed
    assert down.metrics == {} and down.metrics_t_mono is None and SOURCE_METRICS in down.source_errors
    time.sleep(0.1)
    backing_off = sampler.sample_once()  # due by the interval, not yet retried: no stale reading
    assert backing_off.metrics == {} and SOURCE_METRICS in backing_off.source_errors
    other = MetricsServer(METRICS_BODY.replace("1.0e10", "3.0e10"))
    other.start()
    try:
        assert other.port != port
        sampler.configure(metrics_url=other.url)
        s = sampler.sample_once()  # a new URL is read at once: no back-off, no interval wait
        assert other.hits == 1 and s.metrics_fresh and not s.source_errors
        assert s.metric("qwen_weight_bytes", version="2") == 3e10
        sampler.configure(metrics_interval_s=60.0)
        assert sampler.sample_once().metrics_fresh and other.hits == 2  # a new interval: read now
        assert not sampler.sample_once().metrics_fresh and other.hits == 2
    finally:
        other.stop()
    with pytest.raises(ValueError):
        sampler.configure(metrics_interval_s=-1.0)
    with pytest.raises(ValueError):
        Sampler(metrics_interval_s=-0.1)


def test_ring_buffer_stays_bounded_over_10000_ticks() -> None:
    sampler = Sampler(nvml=False, root_pid=os.getpid(), maxlen=1000, discovery_interval_s=3600)
    tracemalloc.start()
    try:
        for _ in range(2000):
            sampler.sample_once()
        full, _ = tracemalloc.get_traced_memory()
        for _ in range(8000):
            sampler.sample_once()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sampler) == 1000 and sampler.maxlen == 1000
    per_sample = full / 1000  # a full ring holds 1000 samples
    assert per_sample > 100  # the measurement sees the samples at all
    # 8000 more ticks: an unbounded buffer would grow by ~8000 samples' worth
    assert after - full < 50 * per_sample, (full, after)
    kept = sampler.samples()
    assert all(a.t_mono < b.t_mono for a, b in zip(kept, kept[1:]))


def test_window_and_samples_since() -> None:
    sampler = Sampler(nvml=False, root_pid=os.getpid(), maxlen=100)
    ticks = [sampler.sample_once() for _ in range(20)]
    assert sampler.latest() is ticks[-1]
    assert sampler.samples_since(ticks[9].t_mono) == ticks[10:]
    assert sampler.window(ticks[3].t_mono, ticks[7].t_mono) == ticks[3:8]
    assert sampler.samples_since(ticks[-1].t_mono) == []
    sampler.configure(maxlen=5)  # shrinking keeps the newest
    assert sampler.samples() == ticks[-5:]


def test_sink_exception_does_not_stop_sampling() -> None:
    calls = {"bad": 0, "good": 0}

    def bad_sink(sample: Sample) -> None:
        calls["bad"] += 1
        raise RuntimeError("disk full")

    def good_sink(sample: Sample) -> None:
        calls["good"] += 1

    sampler = Sampler(rate_hz=200, nvml=False, root_pid=os.getpid(), sink=bad_sink)
    sampler.add_sink(good_sink)
    with sampler:
        assert wait_for(lambda: calls["bad"] >= 20 and len(sampler) >= 20)
        assert sampler.running
        latest = sampler.latest()
        assert latest is not None and "disk full" in latest.source_errors[SOURCE_SINK]
        assert calls["good"] >= 20  # the other sink still gets every sample
        sampler.remove_sink(bad_sink)
        n = calls["bad"]
        assert wait_for(lambda: SOURCE_SINK not in sampler.errors())  # healthy again
        assert calls["bad"] == n
    assert not sampler.running
    assert sampler.source_status()[SOURCE_SINK].failures >= 20


def test_thread_rate_cost_and_stop() -> None:
    with Sampler(rate_hz=50, nvml=False, root_pid=os.getpid()) as sampler:
        t_start = time.perf_counter()
        time.sleep(0.6)
        frac = sampler.cpu_fraction()
    t_end = time.perf_counter()
    got = sampler.samples()
    assert 10 <= len(got) <= 40, len(got)  # ~30 at 50/s over 0.6 s
    gaps = sorted(b.t_mono - a.t_mono for a, b in zip(got, got[1:]))
    assert 0.01 < gaps[len(gaps) // 2] < 0.04  # median period ~20 ms
    assert 0.0 < frac < 1.0
    assert all(t_start - 0.1 <= s.t_mono <= t_end for s in got)
    time.sleep(0.1)
    assert len(sampler.samples()) == len(got)  # stopped: nothing more


def test_shared_sampler_is_one_thread_and_reconfigurable(metrics_server: MetricsServer) -> None:
    stop_shared_sampler()
    try:
        results: list[Sampler] = []
        lock = threading.Lock()

        def grab() -> None:
            s = get_shared_sampler(nvml=False, root_pid=os.getpid(), rate_hz=50)
            with lock:
                results.append(s)

        threads = [threading.Thread(target=grab) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(results) == 8 and all(s is results[0] for s in results)
        shared = results[0]
        assert sum(t.name == "gpu-sampler" for t in threading.enumerate()) == 1
        assert wait_for(lambda: len(shared) >= 3)
        assert not shared.latest().metrics
        again = get_shared_sampler(metrics_url=metrics_server.url)
        assert again is shared
        assert sum(t.name == "gpu-sampler" for t in threading.enumerate()) == 1
        assert wait_for(lambda: bool(shared.latest().metrics))
        assert shared.latest().metric("qwen_weight_bytes", version="2") == 1e10
    finally:
        stop_shared_sampler()
    assert wait_for(lambda: not any(t.name == "gpu-sampler" for t in threading.enumerate()))
