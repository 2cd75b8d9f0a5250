"""services.bench.store: durability across SIGKILL, stale-run detection, exports against the rows."""

from __future__ import annotations

import csv
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from services.bench.stats import RequestRecord
from services.bench.sample_series import SampleRow
from services.bench.sampler import Sampler
from services.bench.store import MIB, STALE_REASON, LevelRow, RunStore, default_data_dir

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[2])
from services.bench.stats import RequestRecord
from services.bench.sample_series import SampleRow
from services.bench.store import RunStore

store = RunStore(sys.argv[1])
run = store.create_run({"model": "qwen", "versions": ["1", "2"]}, {"note": "killed on purpose"})
print(f"run {run}", flush=True)
for i in range(100000):
    t = time.perf_counter_ns()
    v = str(1 + i % 2)
    store.add_request(run, RequestRecord(seq=i, version=v, send_ns=t, recv_ns=t + 1000 + i,
                                         output_tokens=5, answer=f"answer {i}"))
    store.add_samples(run, [SampleRow(t_wall=time.time(), t_mono=time.perf_counter(),
                                      source="host", kind="host", memory_bytes=1000 + i,
                                      model="qwen", version=v, pid=os.getpid())])
    print(f"wrote {i + 1}", flush=True)
    time.sleep(0.002)
"""


def _count(path: Path, sql: str, *args: object) -> int:
    with sqlite3.connect(path) as conn:  # an independent reader, not the store under test
        return conn.execute(sql, args).fetchone()[0]


def test_rows_survive_sigkill_and_the_run_becomes_partial(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.strip())
                if line.startswith("wrote") and int(line.split()[1]) >= 25:
                    break
        assert lines and lines[-1].startswith("wrote"), (lines, proc.poll())
        os.kill(proc.pid, signal.SIGKILL)  # mid-run, while it keeps writing
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines += [ln.strip() for ln in proc.stdout.read().splitlines()]  # what reached the pipe
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    run_id = int(lines[0].split()[1])
    reported = max(int(ln.split()[1]) for ln in lines if ln.startswith("wrote"))
    assert reported >= 25
    db = tmp_path / "runs.sqlite3"
    n_req = _count(db, "SELECT COUNT(*) FROM requests WHERE run_id = ?", run_id)
    n_smp = _count(db, "SELECT COUNT(*) FROM samples WHERE run_id = ?", run_id)
    # Every write the child reported is there. One more may be: the kill can land after a commit
    # and before its "wrote" line reaches the pipe; nothing of a half-done write can be there.
    assert n_req in (reported, reported + 1), (n_req, reported)
    assert n_smp in (reported, reported + 1) and n_smp <= n_req
    with RunStore(tmp_path) as store:  # opening marks the dead writer's run
        run = store.get_run(run_id)
        assert run is not None and run.status == "partial" and run.reason == STALE_REASON
        assert run.finished_at is not None
        reqs = store.get_requests(run_id)
        assert [r.seq for r in reqs] == list(range(n_req))
        assert all(r.answer == f"answer {r.seq}" for r in reqs)
        assert len(store.get_samples(run_id)) == n_smp
        assert store.mark_stale_runs() == []  # already done


def test_live_writer_is_not_stale_but_a_reused_pid_is(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        live = store.create_run({"model": "qwen"}, {})
        reused = store.create_run({"model": "qwen"}, {})
        elsewhere = store.create_run({"model": "qwen"}, {})
    db = tmp_path / "runs.sqlite3"
    with sqlite3.connect(db) as conn:
        # A pid the OS gave to another process: cannot be caused on demand, so the stored
        # process start time is changed instead (the pid is this live process).
        conn.execute("UPDATE runs SET writer_create_time = 1.0 WHERE id = ?", (reused,))
        # A run written on another machine sharing the folder: its process cannot be checked.
        conn.execute("UPDATE runs SET writer_host = 'another-host', writer_pid = 999999999"
                     " WHERE id = ?", (elsewhere,))
    with RunStore(tmp_path) as store:
        assert store.get_run(live).status == "running"
        assert store.get_run(reused).status == "partial"
        assert store.get_run(elsewhere).status == "running"
        store.finish_run(live, "completed", summary={"ok": True})
        assert store.get_run(live).status == "completed"


def test_pragmas_env_folder_and_run_lifecycle(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("QWEN_DATA_DIR", str(tmp_path / "from-env"))
    assert default_data_dir() == tmp_path / "from-env"
    with RunStore() as store:
        assert store.path == tmp_path / "from-env" / "runs.sqlite3" and store.path.exists()
        assert store.pragma("journal_mode") == "wal"
        assert store.pragma("synchronous") == 1  # NORMAL
        assert store.pragma("foreign_keys") == 1
        a = store.create_run({"model": "qwen", "seed": 3}, {"gpu": "none"})
        b = store.create_run({"model": "qwen"}, {})
        assert [r.id for r in store.list_runs()] == [b, a]
        assert store.get_run(a).config == {"model": "qwen", "seed": 3}
        assert store.get_run(a).manifest == {"gpu": "none"}
        with pytest.raises(ValueError):
            store.finish_run(a, "running")
        with pytest.raises(KeyError):
            store.finish_run(12345, "completed")
        store.finish_run(a, "failed", reason="server down")
        assert [r.id for r in store.list_runs(status="failed")] == [a]
        assert store.get_run(a).reason == "server down"
        store.add_request(a, RequestRecord(seq=0, version="1", latency_ms=1.0))
        store.add_samples(a, [SampleRow(1.0, 1.0, "host", "host", 5)])
        assert store.delete_run(a) is True and store.delete_run(a) is False
        assert store.get_run(a) is None
        assert _count(store.path, "SELECT COUNT(*) FROM requests") == 0  # cascaded
        assert _count(store.path, "SELECT COUNT(*) FROM samples") == 0
        assert len(store.runs_frame()) == 1


def _fill_two_versions(store: RunStore) -> int:
    run = store.create_run({"model": "qwen", "versions": ["1", "2"]}, {"gpu": "test"})
    rows = [  # (version, warmup, latency_ms, status)
        ("1", True, 900.0, "ok"), ("1", False, 100.0, "ok"), ("1", False, 120.0, "ok"),
        ("1", False, 5.0, "error"), ("1", False, 140.0, "ok"),
        ("2", True, 800.0, "ok"), ("2", False, 60.0, "ok"), ("2", False, 75.5, "ok"),
        ("2", False, 1.0, "error"),
    ]
    for i, (v, warm, lat, status) in enumerate(rows):
        store.add_request(run, RequestRecord(
            seq=i, version=v, warmup=warm, send_ns=i * 10**9, recv_ns=i * 10**9 + int(lat * 1e6),
            status=status, error=None if status == "ok" else "boom", output_tokens=7,
            box=[1, 2, 3, 4], iou=0.5))
    samples = []
    for k in range(5):
        t_wall, t_mono = 1_800_000_000.0 + k * 0.1, 50.0 + k * 0.1
        samples += [
            SampleRow(t_wall, t_mono, "nvml", "device", 40 * 10**9 + k, "0", utilization=30.0),
            SampleRow(t_wall, t_mono, "nvml", "gpu", 16 * 10**9 + k * 10**6, "0", "qwen", "1",
                      pid=11),
            SampleRow(t_wall, t_mono, "nvml", "gpu", 10**9, "0", "qwen", "1", pid=12),
            SampleRow(t_wall, t_mono, "nvml", "gpu", 10 * 10**9 - k, "0", "qwen", "2", pid=13),
            SampleRow(t_wall, t_mono, "host", "host", 3 * 10**9, None, "qwen", "1", pid=11),
        ]
    assert store.add_samples(run, samples) == len(samples)
    return run


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_exports_equal_the_database(tmp_path: Path) -> None:
    with RunStore(tmp_path / "db") as store:
        run = _fill_two_versions(store)
        paths = store.export_run(run, tmp_path / "out")
        files = store.export_files(run)
    assert {p.name for p in paths} == set(files) == {
        "latency_v1.json", "latency_v2.json", "memory_v1.csv", "memory_v2.csv",
        f"run_{run}.json", f"run_{run}_requests.csv", f"run_{run}_samples.csv"}
    db = tmp_path / "db" / "runs.sqlite3"
    with sqlite3.connect(db) as conn:
        for v in ("1", "2"):
            mean, lo, hi, n = conn.execute(
                "SELECT AVG(latency_ms), MIN(latency_ms), MAX(latency_ms), COUNT(*) FROM requests"
                " WHERE run_id = ? AND version = ? AND warmup = 0 AND status = 'ok'", (run, v)
            ).fetchone()
            got = json.loads((tmp_path / "out" / f"latency_v{v}.json").read_text())
            assert set(got) == {"mean_ms", "min_ms", "max_ms", "count"}
            assert got["count"] == n and got["min_ms"] == lo and got["max_ms"] == hi
            assert got["mean_ms"] == pytest.approx(mean)
            expected = conn.execute(
                "SELECT t_wall, SUM(memory_bytes) FROM samples WHERE run_id = ? AND kind = 'gpu'"
                " AND model = 'qwen' AND version = ? GROUP BY t_mono ORDER BY t_mono", (run, v)
            ).fetchall()
            header, rows = _read_csv(tmp_path / "out" / f"memory_v{v}.csv")
            assert header == ["timestamp", "memory_mb"]
            assert len(rows) == len(expected) == 5
            for (ts, mb), (t_wall, total) in zip(rows, expected):
                assert datetime.fromisoformat(ts).timestamp() == pytest.approx(t_wall, abs=1e-3)
                assert float(mb) == pytest.approx(total / MIB, abs=1e-3)
        n_req = conn.execute("SELECT COUNT(*) FROM requests WHERE run_id = ?", (run,)).fetchone()[0]
        n_smp = conn.execute("SELECT COUNT(*) FROM samples WHERE run_id = ?", (run,)).fetchone()[0]
    # hand check of version 1: 100, 120, 140 (warm-up 900 and the failure excluded)
    v1 = json.loads(files["latency_v1.json"])
    assert v1 == {"mean_ms": 120.0, "min_ms": 100.0, "max_ms": 140.0, "count": 3}
    full = json.loads(files[f"run_{run}.json"])
    assert len(full["requests"]) == n_req == 9 and len(full["samples"]) == n_smp == 25
    assert full["memory_attribution"] == {"1": "gpu-process", "2": "gpu-process"}
    assert full["run"]["config"]["versions"] == ["1", "2"]
    assert full["requests"][1]["box"] == [1, 2, 3, 4]
    _, req_rows = _read_csv(tmp_path / "out" / f"run_{run}_requests.csv")
    _, smp_rows = _read_csv(tmp_path / "out" / f"run_{run}_samples.csv")
    assert len(req_rows) == n_req and len(smp_rows) == n_smp


def test_memory_export_falls_back_to_the_gpu_total(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        run = store.create_run({"model": "qwen"}, {})
        store.add_request(run, RequestRecord(seq=0, version="2", latency_ms=3.0))
        store.add_samples(run, [
            SampleRow(1_800_000_000.0 + k, float(k), "nvml", "device", (k + 1) * MIB, str(g))
            for k in range(3) for g in (0, 1)
        ])
        rows, attribution = store.memory_export(run, "2")
        assert attribution == "gpu-total-nvml"
        assert [mb for _, mb in rows] == [2.0, 4.0, 6.0]  # both GPUs summed per time
        empty = store.create_run({"model": "qwen"}, {})
        assert store.memory_export(empty, "1") == ([], "none")


def test_sampler_sink_and_request_writes_from_two_threads(tmp_path: Path) -> None:
    """A real sampler writes through the sink in its thread while this thread writes requests;
    a real child with a stub-like command line gives version 2's host memory."""
    stub = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                             "/tmp/x/qwen/2/model.py"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if "/tmp/x/qwen/2/model.py" in psutil.Process(stub.pid).cmdline():
                    break
            except psutil.Error:
                pass
            time.sleep(0.01)
        with RunStore(tmp_path) as store:
            run = store.create_run({"model": "qwen", "versions": ["2"]}, {})
            sink = store.sample_sink(run, flush_interval_s=0.05)
            # the stub is the root: only its readings (another test's server may run here)
            sampler = Sampler(rate_hz=100, nvml=False, root_pid=stub.pid, sink=sink)
            with sampler:
                for i in range(100):
                    t = time.perf_counter_ns()
                    store.add_request(run, RequestRecord(seq=i, version="2", send_ns=t,
                                                         recv_ns=t + 10**6))
                    time.sleep(0.003)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and sink.written < 20:
                    time.sleep(0.02)
            sink.close()
            assert sampler.errors() == {}
            stored = store.get_samples(run)
            assert len(stored) == sink.written >= 20
            assert len(store.get_requests(run)) == 100
            v2 = [r for r in stored if r.version == "2"]
            assert len(v2) == len(stored)
            assert all(r.pid == stub.pid and r.kind == "host" and r.model == "qwen" for r in v2)
            rows, attribution = store.memory_export(run, "2")
            assert attribution == "host-process"
            assert len(rows) == len(v2)
    finally:
        stub.kill()
        stub.wait(10)


V1_DATABASE = Path(__file__).parent / "data" / "runs_v1.sqlite3"  # written by the store of schema version 1


def test_a_version_1_database_keeps_its_rows_and_stores_the_config_once(tmp_path: Path) -> None:
    """``runs_v1.sqlite3`` was made by the code before the config was stored once: run 1 by a real
    run that failed at preflight, run 2 (completed, with requests and samples) through the store;
    both with the config in the ``config`` column and again in ``manifest["config"]``."""
    import shutil

    db = tmp_path / "runs.sqlite3"
    shutil.copy(V1_DATABASE, db)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        old = {i: (json.loads(c), json.loads(m)) for i, c, m in raw.execute("SELECT id, config, manifest FROM runs")}
        # a row whose config is only in its manifest (the column left at its default)
        raw.execute("INSERT INTO runs (created_at, status, manifest) VALUES"
                    " ('2026-01-01T00:00:00.000+00:00', 'failed', ?)",
                    (json.dumps({"gpu": "none", "config": {"versions": ["2"], "requests": 3}}),))
    assert all("config" in m and m["config"]["versions"] == c["versions"] for c, m in old.values())
    with RunStore(tmp_path) as store:
        assert store.pragma("user_version") == 4
        runs = {r.id: r for r in store.list_runs()}
        assert sorted(runs) == [1, 2, 3]
        for i, (config, manifest) in old.items():
            assert runs[i].config == {**manifest["config"], **config} == config  # nothing lost
            assert runs[i].manifest == {k: v for k, v in manifest.items() if k != "config"}
            assert runs[i].status == {1: "failed", 2: "completed"}[i]
        assert runs[3].config == {"versions": ["2"], "requests": 3} and runs[3].manifest == {"gpu": "none"}
        assert runs[2].config["load"] == "open" and runs[2].manifest["seeds"]["arrivals"] == 11
        assert [r.latency_ms for r in store.get_requests(2)] == pytest.approx([50.0, 60.0])
        assert store.versions(2) == ["1", "2"] and store.versions(1) == ["1", "2"]
        files = store.export_files(2)
        assert json.loads(files["latency_v1.json"])["count"] == 1 and len(store.get_samples(2)) == 1
        new = store.create_run({"model": "qwen"}, {"gpu": "none"})
        # schema 3: the old requests have no sweep level; the new tables and column take a sweep's rows
        assert all(r.level is None for r in store.get_requests(2)) and store.get_levels(2) == []
        store.add_request(new, RequestRecord(seq=0, version="1", latency_ms=5.0, level=0))
        store.add_level(LevelRow(run_id=new, idx=0, version="1", load="closed", value=2, repeat=0,
                                 status="completed", stats={"goodput_rps": 1.5}))
        assert store.get_requests(new)[0].level == 0 and store.get_levels(new)[0].stats == {"goodput_rps": 1.5}
    with RunStore(tmp_path) as again:  # opening again changes nothing
        assert again.get_run(new).manifest == {"gpu": "none"} and again.get_run(2).config == runs[2].config


V3_DATABASE = Path(__file__).parent / "data" / "runs_v3.sqlite3"  # written by the store of schema version 3


def test_a_version_3_database_gains_the_timing_columns_and_table(tmp_path: Path) -> None:
    """``runs_v3.sqlite3`` was made by the schema-3 store (main before the timings): one completed run,
    two streamed requests (chunk times, no chunk token counts) and a memory sample."""
    import shutil

    db = tmp_path / "runs.sqlite3"
    shutil.copy(V3_DATABASE, db)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
        assert "chunk_tokens" not in {r[1] for r in raw.execute("PRAGMA table_info(requests)")}
    with RunStore(tmp_path) as store:
        assert store.pragma("user_version") == 4
        old = store.get_requests(1)
        assert [r.chunk_ns for r in old] == [[1_020_000_000, 1_030_000_000, 1_050_000_000], [1_100_000_000]]
        assert all(r.chunk_tokens is None and r.bursty is None for r in old)
        assert store.get_samples(1)[0].memory_bytes == 123456789 and store.get_samples(1)[0].value is None
        assert store.get_server_timings(1) == []
        # the new columns and table take a new run's rows
        run = store.create_run({"model": "qwen"})
        store.add_request(run, RequestRecord(seq=0, version="1", send_ns=0, recv_ns=10, output_tokens=4,
                                             chunk_ns=[5, 10], chunk_tokens=[1, 3], bursty=True))
        store.add_samples(run, [SampleRow(t_wall=1.0, t_mono=1.0, source="triton", model="qwen", version="1",
                                          kind="vllm:generation_tokens_total", memory_bytes=None, value=7.0)])
        store.set_server_timings(run, [{"version": "1", "metric": "ttft", "count": 2, "mean_ms": 3.0,
                                        "p50_ms": 2.5, "p90_ms": 4.0, "p99_ms": 4.9, "t0": 1.0, "t1": 2.0}])
        store.set_bursts(run, {0: False})
    with RunStore(tmp_path) as again:  # opening again changes nothing; the rows read back whole
        r = again.get_requests(run)[0]
        assert r.chunk_tokens == [1, 3] and r.bursty is False
        assert again.get_samples(run)[0].value == 7.0
        assert again.get_server_timings(run)[0]["p99_ms"] == 4.9
        assert again.delete_run(run) and again.get_server_timings(run) == []
