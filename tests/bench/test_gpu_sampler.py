"""services.bench.sampler against real faults and real processes: NVML (absent on a machine
without GPU), a real HTTP metrics server that is stopped and restarted, a real child process
whose command line looks like a Triton Python-backend stub, and a real sink that raises."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pandas as pd
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.bench.sampler import (
    SOURCE_HOST,
    SOURCE_METRICS,
    SOURCE_NVML,
    SOURCE_SINK,
    GpuReading,
    ProcessReading,
    Sample,
    Sampler,
    attribute_cmdline,
    get_shared_sampler,
    parse_metrics,
    parse_series_key,
    prefilter_metrics,
    sample_rows,
    series_for_chart,
    series_key,
    stop_shared_sampler,
)

METRICS_BODY = """\
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-x"} 1.5e9
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-x"} 8e10
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-x"} 0.25
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="qwen",version="1"} 3
nv_inference_request_success{model="qwen",version="2"} 5
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="qwen",reason="BACKEND",version="1"} 1
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model="qwen",version="2"} 40
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model="qwen",version="2"} 1
vllm:time_to_first_token_seconds_bucket{le="+Inf",model="qwen",version="2"} 2
vllm:time_to_first_token_seconds_sum{model="qwen",version="2"} 0.3
vllm:time_to_first_token_seconds_count{model="qwen",version="2"} 2
# HELP qwen_weight_bytes Bytes of the model weights per version
# TYPE qwen_weight_bytes gauge
qwen_weight_bytes{version="2"} 1.0e10
# TYPE qwen_engine_weight_bytes gauge
qwen_engine_weight_bytes{model="qwen",part="model",precision="fp8",version="2"} 7e9
qwen_engine_weight_bytes{model="qwen",part="decoder_linear",precision="fp8",version="2"} 5e9
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 123456
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 5
"""


class MetricsServer:
    """A real Prometheus-text HTTP server on 127.0.0.1 that can be stopped and restarted."""

    def __init__(self, body: str = METRICS_BODY) -> None:
        self.body = body.encode()
        self.port = 0
        self.hits = 0  # GET requests answered
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        body = self.body
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = MetricsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


STUB_ARGS = ["/tmp/x/qwen/2/model.py", "triton_python_backend_shm_region_7", "1048576"]


@pytest.fixture
def fake_stub() -> Iterator[subprocess.Popen]:
    """A real child process whose command line carries a Triton stub's model path."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)",
                             *STUB_ARGS], stdout=subprocess.PIPE, text=True)
    try:
        # Wait until the interpreter runs (not just the exec): before that its memory is a few hundred kB.
        if proc.stdout.readline().strip() != "ready":
            pytest.fail("the stub-like child process did not start")
        if STUB_ARGS[0] not in psutil.Process(proc.pid).cmdline():
            pytest.fail("child process command line is not visible")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def _wait_for(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# ----------------------------------------------------------------------------- pure helpers


def test_attribute_cmdline_of_real_triton_processes() -> None:
    stub = ["/opt/tritonserver/backends/python/triton_python_backend_stub",
            "/models/qwen/1/model.py", "triton_python_backend_shm_region_3", "1048576",
            "1048576", "12345", "/opt/tritonserver/backends/python", "336", "qwen_0_0", "DEFAULT"]
    assert attribute_cmdline(stub) == ("qwen", "1")
    assert attribute_cmdline(["python", "-c", "x", "/tmp/x/qwen/2/model.py"]) == ("qwen", "2")
    assert attribute_cmdline(["relative/nutrition/12/model.py"]) == ("nutrition", "12")
    assert attribute_cmdline(["/opt/tritonserver/bin/tritonserver", "--model-repository=/m"]) == (
        "server", None)
    assert attribute_cmdline([], name="tritonserver") == ("server", None)
    assert attribute_cmdline(["python", "/srv/qwen/latest/model.py"]) == (None, None)


def test_series_key_round_trip_with_escapes() -> None:
    labels = {"version": "2", "model": 'q"w\\en', "z": "a\nb"}
    key = series_key("vllm:x", labels)
    assert key.startswith('vllm:x{model=')  # labels sorted
    assert parse_series_key(key) == ("vllm:x", labels)
    assert parse_series_key("plain") == ("plain", {})


# ----------------------------------------------------------------------------- NVML fault


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
        if _nvml_available():  # a GPU machine: NVML must work there
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
        assert _wait_for(lambda: len(sampler) >= 10)
        assert sampler.running
        recent = sampler.samples()
    assert not sampler.running
    assert all(s.metrics and s.processes for s in recent)
    if not _nvml_available():
        assert all(SOURCE_NVML in s.source_errors for s in recent)


# ----------------------------------------------------------------------------- metrics endpoint


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
    assert len(first_rows) == 4  # device + 3 qwen gauges
    # asked for, a carried reading's rows carry the time it was read, not the carrying tick's
    assert [r for r in sample_rows(between[-1], carried=True) if r.source == "triton"] == first_rows
    # a chart shows each reading once, at its own time: from every tick, or from a thinned list
    # that left out the tick that read it (the live chart thins long runs)
    whole = series_for_chart([first, *between])
    thinned = series_for_chart(between[1:])
    for chart in (whole, thinned):
        triton = chart[chart["source"] == "triton"]
        assert len(triton) == 4 and set(triton["t_mono"]) == {first.t_mono}
        assert sorted(triton["memory_bytes"]) == sorted(r.memory_bytes for r in first_rows)  # not summed
        assert set(triton["time"]) == {pd.Timestamp(first.t_wall, unit="s", tz="UTC")}
    time.sleep(0.3)
    again = sampler.sample_once()
    assert metrics_server.hits == 2 and again.metrics_fresh and again.metrics_t_mono == again.t_mono


def test_metrics_interval_in_the_running_thread(metrics_server: MetricsServer) -> None:
    with Sampler(rate_hz=50, metrics_url=metrics_server.url, nvml=False, host_memory=False,
                 metrics_interval_s=0.2) as sampler:
        assert _wait_for(lambda: len(sampler) >= 1)
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


# ----------------------------------------------------------------------------- host memory


def test_host_memory_of_a_stub_like_child_is_attributed_to_its_version(
    fake_stub: subprocess.Popen,
) -> None:
    sampler = Sampler(nvml=False, root_pid=os.getpid())
    s = sampler.sample_once()
    assert SOURCE_HOST not in s.source_errors
    mine = [p for p in s.processes if p.pid == fake_stub.pid]
    assert len(mine) == 1
    reading = mine[0]
    assert (reading.kind, reading.model, reading.version) == ("host", "qwen", "2")
    rss = psutil.Process(fake_stub.pid).memory_info().rss
    assert 1_000_000 < reading.memory_bytes and abs(reading.memory_bytes - rss) < rss / 2
    root = [p for p in s.processes if p.pid == os.getpid()]
    assert root and root[0].model == "server"  # the configured root is the server
    # other qwen v2 processes may run under this pid too (a real embedded Triton started by
    # other tests): the chart sums every instance of the version
    v2_total = sum(p.memory_bytes for p in s.processes if (p.model, p.version) == ("qwen", "2"))
    chart = series_for_chart([s])
    row = chart[chart["label"] == "qwen v2"]
    assert len(row) == 1 and row["memory_bytes"].iloc[0] == v2_total >= reading.memory_bytes
    assert row["source"].iloc[0] == "host"


def test_attribution_follows_exec_of_the_same_pid() -> None:
    """A stub seen between fork and exec shows its parent's command line; exec keeps the pid and
    the create time, so the sampler must look again and not keep the first answer."""
    script = ("import os, sys; sys.stdin.readline(); os.execv(sys.executable, [sys.executable,"
              " '-c', 'import time; time.sleep(30)', '/tmp/x/qwen/1/model.py'])")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, text=True)
    try:
        sampler = Sampler(nvml=False, root_pid=proc.pid)
        assert _wait_for(lambda: "-c" in psutil.Process(proc.pid).cmdline())
        before = sampler.sample_once().processes
        assert [(p.pid, p.model, p.version) for p in before] == [(proc.pid, "server", None)]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert _wait_for(lambda: "/tmp/x/qwen/1/model.py" in psutil.Process(proc.pid).cmdline())
        after = sampler.sample_once().processes
        assert [(p.pid, p.model, p.version) for p in after] == [(proc.pid, "qwen", "1")]
    finally:
        proc.kill()
        proc.wait(10)


class SpawningRoot:
    """A real process that, told to on its stdin, forks a child (sh) which forks a grandchild
    (sleep)."""

    SCRIPT = ("import subprocess, sys; sys.stdin.readline();"
              " c = subprocess.Popen(['sh', '-c', 'sleep 60 & wait']); print(c.pid, flush=True);"
              " sys.stdin.readline()")

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.spawned: list[psutil.Process] = []

    def spawn(self) -> list[psutil.Process]:
        """Fork the child and grandchild; both, once the grandchild runs."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        child = psutil.Process(int(self.proc.stdout.readline()))
        self.spawned.append(child)
        assert _wait_for(lambda: len(child.children()) == 1)
        self.spawned += child.children()
        return list(self.spawned)

    def kill_root(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        self.kill_root()
        for p in self.spawned:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def spawning_root() -> Iterator[SpawningRoot]:
    root = SpawningRoot()
    try:
        yield root
    finally:
        root.close()


def test_discovery_after_the_first_walk_reads_only_new_pids(spawning_root: SpawningRoot) -> None:
    sampler = Sampler(nvml=False, root_pid=spawning_root.pid, discovery_interval_s=0.0)
    walks = []
    walk = sampler._discover_all
    sampler._discover_all = lambda: walks.append(1) or walk()  # type: ignore[method-assign]
    first = sampler.sample_once()
    assert [p.pid for p in first.processes] == [spawning_root.pid] and len(walks) == 1
    child, grandchild = spawning_root.spawn()
    s = sampler.sample_once()  # the new pids (and only they) are looked at: no second walk
    assert len(walks) == 1
    assert sorted(p.pid for p in s.processes) == sorted([spawning_root.pid, child.pid, grandchild.pid])
    assert {p.pid: p.model for p in s.processes}[spawning_root.pid] == "server"
    # a process that ends leaves the tree at the next tick, without a walk
    grandchild.kill()
    grandchild.wait(10)
    assert _wait_for(lambda: grandchild.pid not in {p.pid for p in sampler.sample_once().processes})
    assert len(walks) == 1 and SOURCE_HOST not in sampler.errors()


def test_a_new_root_is_the_server_at_once(spawning_root: SpawningRoot) -> None:
    """Answers other than a stub's are kept while the command line stays the same; a new root
    pid makes another process the server on the next tick."""
    child, grandchild = spawning_root.spawn()
    sampler = Sampler(nvml=False, root_pid=spawning_root.pid)
    for _ in range(2):
        got = {p.pid: (p.model, p.version) for p in sampler.sample_once().processes}
        assert got == {spawning_root.pid: ("server", None), child.pid: (None, None),
                       grandchild.pid: (None, None)}
    sampler.configure(root_pid=child.pid)
    got = {p.pid: (p.model, p.version) for p in sampler.sample_once().processes}
    assert got == {child.pid: ("server", None), grandchild.pid: (None, None)}


def test_a_root_that_ends_before_its_children_is_reported(spawning_root: SpawningRoot) -> None:
    sampler = Sampler(nvml=False, root_pid=spawning_root.pid, discovery_interval_s=0.0,
                      retry_interval_s=0.0)
    spawning_root.spawn()
    assert len(sampler.sample_once().processes) == 3
    spawning_root.kill_root()
    ticks = [sampler.sample_once() for _ in range(3)]  # the root is missed, then walked for
    assert "NoSuchProcess" in ticks[-1].source_errors[SOURCE_HOST]
    assert ticks[-1].processes == ()


def test_host_processes_found_by_name(fake_stub: subprocess.Popen) -> None:
    name = psutil.Process(fake_stub.pid).name()
    sampler = Sampler(nvml=False, root_pid=None, process_names=[name])
    s = sampler.sample_once()
    assert any(p.pid == fake_stub.pid and p.version == "2" for p in s.processes)
    nobody = Sampler(nvml=False, process_names=["no-such-process-name-x"]).sample_once()
    assert "no process named" in nobody.source_errors[SOURCE_HOST]


def test_host_source_reports_a_server_that_has_ended(fake_stub: subprocess.Popen) -> None:
    sampler = Sampler(nvml=False, root_pid=fake_stub.pid, retry_interval_s=0.0)
    assert sampler.sample_once().processes[0].version == "2"
    fake_stub.kill()
    fake_stub.wait(10)
    s = sampler.sample_once()
    assert s.processes == () and SOURCE_HOST in s.source_errors
    s2 = sampler.sample_once()  # retried: the pid is gone for good
    assert "NoSuchProcess" in s2.source_errors[SOURCE_HOST] or "ended" in \
        s2.source_errors[SOURCE_HOST]


def test_real_embedded_triton_processes_and_metrics(triton_server) -> None:
    """The real tritonserver of the shared fixture (tests/conftest.py): its stubs carry
    ``<repo>/qwen/<version>/model.py`` on their command lines, its metrics port is Triton's own."""
    sampler = Sampler(nvml=False, root_pid=triton_server.pid,
                      metrics_url=triton_server.metrics_url)
    s = sampler.sample_once()
    assert SOURCE_HOST not in s.source_errors and SOURCE_METRICS not in s.source_errors
    labels = {(p.model, p.version) for p in s.processes}
    assert {("server", None), ("qwen", "1"), ("qwen", "2")} <= labels
    server = [p for p in s.processes if p.pid == triton_server.pid]
    assert server and server[0].model == "server" and server[0].name == "tritonserver"
    assert all(p.kind == "host" and p.memory_bytes > 0 for p in s.processes)
    for v in ("1", "2"):
        assert s.metric("nv_inference_request_success", model="qwen", version=v) is not None
    # every qwen_* series the server exports is kept, nothing else outside the kept families
    import urllib.request

    raw = urllib.request.urlopen(triton_server.metrics_url, timeout=5).read().decode()
    raw_qwen = {ln.split("{")[0].split()[0] for ln in raw.splitlines()
                if ln.startswith("qwen_")}
    kept = {parse_series_key(k)[0] for k in s.metrics}
    assert raw_qwen <= kept
    assert all(n.startswith(("nv_inference_", "nv_gpu_", "vllm:", "qwen_")) for n in kept)


# ----------------------------------------------------------------------------- metrics prefilter

# what the sampler keeps, written out here independently of services.bench.sampler
KEPT_EXACT = {"nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_utilization"}
KEPT_PREFIXES = ("nv_inference_", "vllm:", "qwen_")


def _kept(name: str) -> bool:
    return name in KEPT_EXACT or name.startswith(KEPT_PREFIXES)


def _line_name(line: str) -> str:
    """The family named by a HELP/TYPE line, or the metric name of a sample line."""
    if line.startswith("#"):
        return line.split()[2]
    return line.split("{")[0].split()[0]


def _full_parse(text: str) -> dict[str, float]:
    """What parse_metrics returned before the prefilter: prometheus_client over the whole text,
    then the kept series, with the wire names (no ``_total`` the text did not have)."""
    wire = {_line_name(ln) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name
            if name not in wire and name.endswith("_total") and name[:-6] in wire:
                name = name[:-6]
            if _kept(name):
                out[series_key(name, s.labels)] = float(s.value)
    return out


def _check_prefilter(raw: str) -> list[str]:
    """The prefilter keeps exactly the HELP/TYPE and sample lines of kept families, in order, and
    parsing what it keeps gives what parsing everything gave. Returns the dropped families."""
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    described = [ln for ln in lines if ln.startswith(("# HELP ", "# TYPE ")) or not ln.startswith("#")]
    kept = prefilter_metrics(raw).splitlines()
    assert kept == [ln for ln in described if _kept(_line_name(ln))]
    assert parse_metrics(raw) == _full_parse(raw)
    return sorted({_line_name(ln) for ln in described if not _kept(_line_name(ln))})


def test_prefilter_on_a_real_triton_metrics_page(triton_server) -> None:
    import urllib.request

    raw = urllib.request.urlopen(triton_server.metrics_url, timeout=5).read().decode()
    dropped = _check_prefilter(raw)
    assert {"nv_cpu_memory_used_bytes", "nv_pinned_memory_pool_total_bytes"} <= set(dropped)
    parsed = parse_metrics(raw)
    names = {parse_series_key(k)[0] for k in parsed}
    assert {"nv_inference_request_success", "nv_inference_count", "qwen_engine_weight_bytes",
            "qwen_engine_quantized_layers"} <= names
    for v in ("1", "2"):
        assert parsed[series_key("nv_inference_request_success", {"model": "qwen", "version": v})] >= 0
    kept_text = prefilter_metrics(raw)
    assert len(kept_text) < len(raw)


def test_prefilter_on_counters_histograms_and_unkept_families() -> None:
    body = METRICS_BODY + """\
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-x"} 301.5
# TYPE nv_cache_hit_duration histogram
nv_cache_hit_duration_bucket{le="+Inf"} 3
nv_cache_hit_duration_count 3
# a plain comment
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model="qwen",version="1"} 12
"""
    dropped = _check_prefilter(body)
    assert dropped == ["nv_cache_hit_duration", "nv_cache_hit_duration_bucket", "nv_cache_hit_duration_count",
                       "nv_cpu_memory_used_bytes", "nv_gpu_power_usage", "process_cpu_seconds_total"]
    parsed = parse_metrics(body)
    assert parsed[series_key("vllm:prompt_tokens_total", {"model": "qwen", "version": "1"})] == 12
    assert parsed[series_key("nv_inference_request_success", {"model": "qwen", "version": "2"})] == 5
    assert parsed[series_key("vllm:time_to_first_token_seconds_bucket",
                             {"le": "+Inf", "model": "qwen", "version": "2"})] == 2


@pytest.mark.parametrize("body", ["<html><body><h1>404 Not Found</h1></body></html>\n",
                                  '{"error": "no metrics here"}\n'])
def test_a_page_that_is_no_exposition_format_is_still_an_error(body: str) -> None:
    with pytest.raises(ValueError):
        parse_metrics(body)
    server = MetricsServer(body)
    server.start()
    try:
        s = Sampler(metrics_url=server.url, nvml=False, host_memory=False).sample_once()
    finally:
        server.stop()
    assert s.metrics == {} and s.source_errors[SOURCE_METRICS].startswith("ValueError")


# ----------------------------------------------------------------------------- bounded memory


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


# ----------------------------------------------------------------------------- thread, sink, cost


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
        assert _wait_for(lambda: calls["bad"] >= 20 and len(sampler) >= 20)
        assert sampler.running
        latest = sampler.latest()
        assert latest is not None and "disk full" in latest.source_errors[SOURCE_SINK]
        assert calls["good"] >= 20  # the other sink still gets every sample
        sampler.remove_sink(bad_sink)
        n = calls["bad"]
        assert _wait_for(lambda: SOURCE_SINK not in sampler.errors())  # healthy again
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
        assert _wait_for(lambda: len(shared) >= 3)
        assert not shared.latest().metrics
        again = get_shared_sampler(metrics_url=metrics_server.url)
        assert again is shared
        assert sum(t.name == "gpu-sampler" for t in threading.enumerate()) == 1
        assert _wait_for(lambda: bool(shared.latest().metrics))
        assert shared.latest().metric("qwen_weight_bytes", version="2") == 1e10
    finally:
        stop_shared_sampler()
    assert _wait_for(lambda: not any(t.name == "gpu-sampler" for t in threading.enumerate()))


def test_series_for_chart_sums_instances_of_a_version() -> None:
    s = Sample(
        t_mono=10.0, t_wall=1_800_000_000.0,
        gpus=(GpuReading(0, "H100", "GPU-a", 30_000, 80_000, 50.0),),
        processes=(
            ProcessReading(11, "gpu", "qwen", "1", 10_000, 0),
            ProcessReading(12, "gpu", "qwen", "1", 5_000, 0),
            ProcessReading(13, "gpu", "server", None, 1_000, 0),
            ProcessReading(11, "host", "qwen", "1", 7_000),
        ),
    )
    df = series_for_chart([s])
    got = {(r.source, r.label): r.memory_bytes for r in df.itertuples()}
    assert got == {("nvml", "GPU 0"): 30_000, ("nvml", "qwen v1"): 15_000,
                   ("nvml", "server"): 1_000, ("host", "qwen v1"): 7_000}
    assert str(df["time"].dt.tz) == "UTC"
    assert list(df.columns) == ["time", "t_mono", "source", "kind", "gpu", "model", "version",
                                "label", "memory_bytes"]
    assert series_for_chart([]).empty
