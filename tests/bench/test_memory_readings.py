"""services.bench.memory_readings through the sampler, against real processes: a child whose command
line looks like a Triton Python-backend stub, a process that execs, a root that forks children and
ends, processes found by name, and the real embedded tritonserver."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Iterator

import psutil
import pytest

from services.bench.sampler import SOURCE_HOST, SOURCE_METRICS, Sampler
from services.bench.memory_readings import attribute_cmdline
from services.bench.sample_series import series_for_chart
from services.bench.triton_metrics import parse_series_key
from tests.bench.sampler_fixtures import fake_stub, wait_for


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
    pss = psutil.Process(fake_stub.pid).memory_full_info().pss  # shared pages counted once
    assert reading.measure == "pss"
    assert 1_000_000 < reading.memory_bytes and abs(reading.memory_bytes - pss) < pss / 2
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
        assert wait_for(lambda: "-c" in psutil.Process(proc.pid).cmdline())
        before = sampler.sample_once().processes
        assert [(p.pid, p.model, p.version) for p in before] == [(proc.pid, "server", None)]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert wait_for(lambda: "/tmp/x/qwen/1/model.py" in psutil.Process(proc.pid).cmdline())
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
        assert wait_for(lambda: len(child.children()) == 1)
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
    walk = sampler._host_reader._discover_all
    sampler._host_reader._discover_all = lambda *a: walks.append(1) or walk(*a)  # type: ignore[method-assign]
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
    assert wait_for(lambda: grandchild.pid not in {p.pid for p in sampler.sample_once().processes})
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
