"""The supervisor of the embedded server: restarts after a death, gives up with the log, leaves nothing.

Faults are caused for real: the server and a version's model process are killed with SIGKILL, and a
checkpoint the engine cannot load makes every start fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.serving.supervisor import DOWN, FAILED, READY, STARTING, Supervisor, model_processes, sweep_stale

pytestmark = pytest.mark.timeout(900)

FREE_PORTS = {"http": None, "grpc": None, "metrics": None}
START_S = 300  # one start on a busy 2-core machine


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _traces(server) -> dict:
    """What a running server has on the machine: its processes, shared-memory files and folder."""
    return {"procs": [psutil.Process(server.pid)] + list(model_processes(server).values()),
            "shm": server.shm_prefix, "folder": server.workdir}


def _left_behind(traces: dict) -> list[str]:
    left = [f"process {p.pid}" for p in traces["procs"] if _alive(p)]
    left += [str(p) for p in Path("/dev/shm").iterdir() if p.name.startswith(traces["shm"])]
    return left + ([str(traces["folder"])] if traces["folder"].exists() else [])


def _wait_phase(sup: Supervisor, phases: set[str], timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = sup.snapshot()
        if snap.phase in phases:
            return snap
        time.sleep(0.1)
    raise AssertionError(f"still {sup.snapshot().phase} after {timeout} s: {sup.snapshot().message}")


@pytest.fixture
def supervised(tiny_checkpoint):
    sup = Supervisor({"checkpoint": tiny_checkpoint, "ports": FREE_PORTS}, poll_s=0.5, backoff_s=(0.5,))
    yield sup.start()
    sup.stop()


@pytest.mark.server
def test_a_killed_model_process_or_server_is_noticed_and_restarted_leaving_nothing(supervised):
    first = supervised.wait_ready(START_S)
    assert first.phase == READY, first.message
    assert first.server.owns_workdir and first.server.workdir.name.startswith("server-")
    traces = _traces(first.server)
    assert len(traces["procs"]) == 3  # tritonserver, bf16's and fp8's model processes

    bf16 = model_processes(first.server)["1"]
    bf16.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    down = _wait_phase(supervised, {DOWN, STARTING}, 5)
    assert time.monotonic() - t0 < 5
    assert down.reason.startswith(f"the bf16 (v1) model process (pid {bf16.pid}) died") or down.phase == STARTING
    second = supervised.wait_ready(START_S)
    assert second.phase == READY and second.server.pid != first.server.pid, second.message
    assert _left_behind(traces) == []

    traces = _traces(second.server)
    os.kill(second.server.pid, signal.SIGKILL)
    down = _wait_phase(supervised, {DOWN}, 5)
    assert "tritonserver killed by SIGKILL" in down.message
    third = supervised.wait_ready(START_S)
    assert third.phase == READY, third.message
    assert _left_behind(traces) == []

    traces = _traces(third.server)
    supervised.stop()
    assert supervised.snapshot().phase == "stopped"
    assert _left_behind(traces) == []


@pytest.mark.server
def test_a_server_that_never_starts_ends_failed_with_its_log_and_can_be_restarted(tmp_path):
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a checkpoint the engine cannot load
    sup = Supervisor({"checkpoint": broken, "ports": FREE_PORTS}, poll_s=0.5, backoff_s=(0.2,), max_attempts=2)
    try:
        sup.start()
        snap = _wait_phase(sup, {FAILED}, 2 * START_S)
        assert snap.attempt == 2
        assert snap.message.startswith("The embedded Triton server failed 2 times in a row")
        assert "tritonserver exited" in snap.reason
        assert "Failed to initialize Python stub" in snap.log_tail  # the log's own words say why
        generation = snap.generation
        sup.restart()
        _wait_phase(sup, {STARTING}, 10)
        assert sup.snapshot().generation > generation
    finally:
        sup.stop()
    assert not list((tmp_path).glob("**/server-*"))


def test_sweep_removes_what_dead_owners_left_and_keeps_the_living(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs (reaped)
    root = tmp_path / "embedded_triton"
    stale, living = root / f"server-{dead.pid}-abcdef", root / f"server-{os.getpid()}-abcdef"
    (stale / "model_repository").mkdir(parents=True)
    living.mkdir()
    shm_stale = Path("/dev/shm") / f"qwen_triton_p{dead.pid}_0123456789_test"
    shm_living = Path("/dev/shm") / f"qwen_triton_p{os.getpid()}_0123456789_test"
    shm_stale.write_bytes(b"x")
    shm_living.write_bytes(b"x")
    # a process still using the stale folder (as a tritonserver orphaned by its owner's death would)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"{stale}/model_repository"])
    try:
        removed = sweep_stale(tmp_path)
        orphan.wait(timeout=10)  # killed (the sweep reaped it: its code is lost to Popen)
        assert not stale.exists() and not shm_stale.exists()
        assert living.exists() and shm_living.exists()
        assert f"process {orphan.pid}" in removed and str(stale) in removed
    finally:
        orphan.kill()
        shm_living.unlink(missing_ok=True)
        shm_stale.unlink(missing_ok=True)
