"""SQLite store of benchmark runs, their requests and their memory samples.

One database file (``runs.sqlite3``) in the data folder: the ``data/`` folder of the project, or
``$QWEN_DATA_DIR``, or the folder given to :class:`RunStore`. WAL journal, ``synchronous=NORMAL``,
foreign keys on. Every request is committed as it is added and every batch of samples as it is
flushed, so a run cut short by a crash or ``SIGKILL`` keeps all it recorded (WAL + NORMAL keeps
every committed transaction across a process crash; only a power loss or OS crash may lose the
last ones). :meth:`RunStore.sample_sink` batches sampler samples per ~0.5 s: a kill loses at most
that much of the memory series.

Each thread gets its own connection (sqlite3 connections are not shared across threads).

Tables: ``runs`` (status running|completed|partial|failed|cancelled; the run's config, stored once,
in the ``config`` column, and its manifest (:mod:`services.bench.manifest`); the writer's pid, process
create time and host name, so that :meth:`RunStore.mark_stale_runs` can tell a killed run from a
live one), ``requests`` (one row per request, see ``services.bench.stats.RequestRecord``; ``chunk_ns`` keeps
streamed chunk times for ITL; ``level`` the sweep level it belongs to), ``samples`` (one memory reading
per row, see ``services.bench.sample_series.SampleRow``; ``pid`` is the process a reading belongs to)
(with the ``vllm:*`` series in ``value``), ``sweep_levels`` (one row per load level of a sweep,
:class:`LevelRow`, written as each level ends, so that a sweep cut short keeps its finished levels)
and ``server_timings`` (per version and metric, the server's TTFT / TPOT / end-to-end over the
measured window, from the ``vllm:*`` histograms: :mod:`services.bench.server_timings`). Opening a database of an older schema
adds what it lacks (:meth:`RunStore._migrate`); its runs read as before.

Exports per run (:meth:`RunStore.export_files`, :meth:`RunStore.export_run`):

- ``latency_vN.json``: ``{"mean_ms", "min_ms", "max_ms", "count"}`` over the successful non-warm-up
  requests of version N (the seed's format; null values when there are none).
- ``memory_vN.csv``: exactly the seed's two columns ``timestamp,memory_mb``: ``timestamp`` is ISO
  8601 UTC with milliseconds, ``memory_mb`` is MiB (2**20 bytes, as nvidia-smi and torch report).
  The memory is, in this order of preference: the GPU memory of the processes serving version N
  (NVML, summed over its instances); else their host resident memory (CPU demo); else the total
  used memory of the GPUs (NVML, else Triton's metric), which is not specific to version N; else
  the summed resident memory of all serving processes found. Which one was used is written into ``run_<id>.json`` under ``"memory_attribution"``, not into the CSV.
- ``run_<id>.json`` (run, requests, samples, attribution), ``run_<id>_requests.csv``,
  ``run_<id>_samples.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import psutil

from services.bench.stats import RequestRecord, mean_min_max
from services.bench.sample_series import Sample, SampleRow, sample_rows

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR_ENV = "QWEN_DATA_DIR"
DB_NAME = "runs.sqlite3"
RUN_STATUSES = ("running", "completed", "partial", "failed", "cancelled")
FINAL_STATUSES = RUN_STATUSES[1:]
STALE_REASON = "the benchmark process ended without finishing (killed or crashed)"
MIB = 2**20

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN
        ('running', 'completed', 'partial', 'failed', 'cancelled')),
    reason TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    manifest TEXT NOT NULL DEFAULT '{}',
    summary TEXT,
    finished_at TEXT,
    writer_pid INTEGER,
    writer_create_time REAL,
    writer_host TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    version TEXT NOT NULL,
    image_id TEXT,
    warmup INTEGER NOT NULL DEFAULT 0 CHECK (warmup IN (0, 1)),
    send_ns INTEGER,
    first_token_ns INTEGER,
    recv_ns INTEGER,
    latency_ms REAL,
    ttft_ms REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT,
    answer TEXT,
    box TEXT,
    iou REAL,
    chunk_ns TEXT,
    level INTEGER,
    chunk_tokens TEXT,
    bursty INTEGER CHECK (bursty IN (0, 1))
);
CREATE INDEX IF NOT EXISTS requests_by_run ON requests(run_id, seq);
CREATE TABLE IF NOT EXISTS sweep_levels (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    version TEXT NOT NULL,
    load TEXT NOT NULL CHECK (load IN ('closed', 'open')),
    value REAL NOT NULL,
    repeat INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    reason TEXT,
    stats TEXT,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    t_wall REAL NOT NULL,
    t_mono REAL NOT NULL,
    source TEXT NOT NULL,
    gpu TEXT,
    model TEXT,
    version TEXT,
    kind TEXT NOT NULL,
    memory_bytes INTEGER,
    utilization REAL,
    pid INTEGER,
    value REAL
);
CREATE INDEX IF NOT EXISTS samples_by_run ON samples(run_id, t_mono);
CREATE TABLE IF NOT EXISTS server_timings (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    metric TEXT NOT NULL,
    count INTEGER NOT NULL,
    mean_ms REAL,
    p50_ms REAL,
    p90_ms REAL,
    p99_ms REAL,
    t0 REAL NOT NULL,
    t1 REAL NOT NULL,
    PRIMARY KEY (run_id, version, metric)
);
"""
SCHEMA_VERSION = 4  # 1: the run's config also inside its manifest (``manifest["config"]``); 2: once;
# 3: sweeps: ``requests.level`` and the ``sweep_levels`` table (older databases gain both, empty);
# 4: timings: ``requests.chunk_tokens`` and ``bursty``, ``samples.value`` (the ``vllm:*`` series) and
# the ``server_timings`` table (older databases gain them, empty: their runs read as before)
_ADDED_COLUMNS = {"requests": (("level", "INTEGER"), ("chunk_tokens", "TEXT"),
                               ("bursty", "INTEGER CHECK (bursty IN (0, 1))")),
                  "samples": (("value", "REAL"),)}
LEVEL_STATUSES = ("completed", "saturated", "cut short")

REQUEST_COLUMNS = [
    "seq", "version", "image_id", "warmup", "send_ns", "first_token_ns", "recv_ns", "latency_ms",
    "ttft_ms", "input_tokens", "output_tokens", "status", "error", "answer", "box", "iou",
    "chunk_ns", "level", "chunk_tokens", "bursty",
]
SAMPLE_COLUMNS = [
    "t_wall", "t_mono", "source", "gpu", "model", "version", "kind", "memory_bytes",
    "utilization", "pid", "value",
]
TIMING_COLUMNS = ["count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "t0", "t1"]


@dataclass
class LevelRow:
    """One load level of a sweep as stored (``sweep_levels``): version ``version`` at load ``value``
    (concurrency for ``load == "closed"``, requests/s for ``"open"``), its ``repeat``; ``status``:
    "completed", "saturated" (completed, and it stopped the version's sweep) or "cut short" (cancelled
    or the server died while it went: its requests are stored, but it is not a finished level);
    ``stats``: what the sweep computed when the level ended (``services.bench.goodput.LevelStats``)."""

    run_id: int
    idx: int
    version: str
    load: str
    value: float
    repeat: int
    status: str
    reason: str | None = None
    stats: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status != "cut short"


@dataclass
class RunInfo:
    """One row of ``runs`` with its JSON columns decoded."""

    id: int
    created_at: str
    status: str
    reason: str | None
    config: dict[str, Any]
    manifest: dict[str, Any]
    summary: Any
    finished_at: str | None
    writer_pid: int | None
    writer_host: str | None


def default_data_dir() -> Path:
    """``$QWEN_DATA_DIR`` if set, else ``data/`` under the project root."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else PROJECT_ROOT / "data"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _iso(t_wall: float) -> str:
    return datetime.fromtimestamp(t_wall, timezone.utc).isoformat(timespec="milliseconds")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    return str(obj)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class RunStore:
    """Runs, requests and samples in one SQLite file; safe to use from several threads.

    Opening the store marks runs left "running" by a dead process as "partial"
    (see :meth:`mark_stale_runs`).
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, db_name: str = DB_NAME):
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / db_name
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        with self._conn() as conn:  # the connection sets WAL, NORMAL and foreign keys
            conn.executescript(SCHEMA)
        self._migrate()
        self.mark_stale_runs()

    def _migrate(self) -> None:
        """Bring a database of an earlier schema version up to :data:`SCHEMA_VERSION`.

        Version 1 stored the run's config twice: in the ``config`` column and again as
        ``manifest["config"]``. Each such row keeps one copy, in the ``config`` column: the
        manifest's keys that the column lacks are merged into it (the column wins where both have
        a key), then the manifest's copy is dropped. Rows written since are left as they are.
        """
        conn = self._conn()
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        for table, added in _ADDED_COLUMNS.items():  # schemas 3 and 4 (their tables are made by SCHEMA)
            columns = {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}
            with conn:
                for name, decl in added:
                    if name not in columns:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        with conn:
            rows = conn.execute("SELECT id, config, manifest FROM runs WHERE manifest LIKE '%\"config\"%'").fetchall()
            for r in rows:
                manifest = _loads(r["manifest"]) or {}
                if not isinstance(manifest, dict) or "config" not in manifest:
                    continue
                from_manifest = manifest.pop("config")
                config = _loads(r["config"]) or {}
                if isinstance(from_manifest, dict):
                    config = {**from_manifest, **config}
                conn.execute("UPDATE runs SET config = ?, manifest = ? WHERE id = ?",
                             (_dumps(config), _dumps(manifest), r["id"]))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        self._local = threading.local()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pragma(self, name: str) -> Any:
        """The value of ``PRAGMA name`` on this thread's connection (journal_mode, ...)."""
        return self._conn().execute(f"PRAGMA {name}").fetchone()[0]

    # ------------------------------------------------------------------ runs

    def create_run(self, config: dict[str, Any], manifest: dict[str, Any] | None = None) -> int:
        """A new run in status "running", owned by this process; returns its id."""
        pid = os.getpid()
        with self._conn() as conn:
            cur = conn.execute(
                "INSERT INTO runs (created_at, status, config, manifest, writer_pid,"
                " writer_create_time, writer_host) VALUES (?, 'running', ?, ?, ?, ?, ?)",
                (_now_iso(), _dumps(config), _dumps(manifest or {}), pid,
                 _process_create_time(pid), socket.gethostname()),
            )
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish_run(
        self, run_id: int, status: str, reason: str | None = None, summary: Any = None
    ) -> None:
        """Set the final status (completed|partial|failed|cancelled), reason and summary."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, not {status!r}")
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, reason = ?, summary = ?, finished_at = ? WHERE id = ?",
                (status, reason, None if summary is None else _dumps(summary), _now_iso(), run_id),
            )
        if cur.rowcount != 1:
            raise KeyError(f"no run {run_id}")

    def mark_stale_runs(self) -> list[int]:
        """Mark "running" runs whose writer process is gone as "partial"; returns their ids.

        The writer is gone when no process has its pid, or the process with that pid started at
        another time (pid reused), or it is a zombie. Runs written from another host are left
        alone (their process cannot be checked from here).
        """
        conn = self._conn()
        rows = conn.execute(
            "SELECT id, writer_pid, writer_create_time, writer_host FROM runs"
            " WHERE status = 'running'"
        ).fetchall()
        host = socket.gethostname()
        stale = []
        for r in rows:
            if r["writer_host"] not in (None, host):
                continue
            if not self._writer_alive(r["writer_pid"], r["writer_create_time"]):
                stale.append(int(r["id"]))
        if stale:
            with conn:
                conn.executemany(
                    "UPDATE runs SET status = 'partial', reason = ?, finished_at = ?"
                    " WHERE id = ? AND status = 'running'",
                    [(STALE_REASON, _now_iso(), i) for i in stale],
                )
        return stale

    @staticmethod
    def _writer_alive(pid: int | None, create_time: float | None) -> bool:
        if pid is None:
            return False
        try:
            p = psutil.Process(pid)
            if create_time is not None and abs(p.create_time() - create_time) > 1.0:
                return False
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True  # it exists; we may not inspect it

    @staticmethod
    def _run_info(r: sqlite3.Row) -> RunInfo:
        return RunInfo(
            id=int(r["id"]), created_at=r["created_at"], status=r["status"], reason=r["reason"],
            config=_loads(r["config"]) or {}, manifest=_loads(r["manifest"]) or {},
            summary=_loads(r["summary"]), finished_at=r["finished_at"],
            writer_pid=r["writer_pid"], writer_host=r["writer_host"],
        )

    def get_run(self, run_id: int) -> RunInfo | None:
        """One run, or None."""
        r = self._conn().execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if r is None else self._run_info(r)

    def list_runs(self, limit: int | None = None, status: str | None = None) -> list[RunInfo]:
        """Runs, newest first, optionally only those in ``status``."""
        sql, args = "SELECT * FROM runs", []
        if status is not None:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [self._run_info(r) for r in self._conn().execute(sql, args)]

    def runs_frame(self, limit: int | None = None) -> pd.DataFrame:
        """:meth:`list_runs` as a DataFrame (JSON columns decoded to objects)."""
        cols = [f.name for f in dataclasses.fields(RunInfo)]
        return pd.DataFrame([dataclasses.asdict(r) for r in self.list_runs(limit)], columns=cols)

    def delete_run(self, run_id: int) -> bool:
        """Delete a run with its requests and samples; False when there was no such run."""
        with self._conn() as conn:
            cur = conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        return cur.rowcount == 1

    # ------------------------------------------------------------------ requests

    def add_request(self, run_id: int, request: RequestRecord) -> int:
        """Insert and commit one request; latency/TTFT in ms are derived from the ns stamps when
        not given. Returns the row id."""
        r = request
        values = (
            run_id, r.seq, str(r.version), r.image_id, int(bool(r.warmup)), r.send_ns,
            r.first_token_ns, r.recv_ns, r.effective_latency_ms, r.effective_ttft_ms,
            r.input_tokens, r.output_tokens, r.status, r.error, r.answer,
            None if r.box is None else _dumps(r.box), r.iou,
            None if r.chunk_ns is None else _dumps(list(r.chunk_ns)), r.level,
            None if r.chunk_tokens is None else _dumps(list(r.chunk_tokens)),
            None if r.bursty is None else int(bool(r.bursty)),
        )
        with self._conn() as conn:
            cur = conn.execute(
                f"INSERT INTO requests (run_id, {', '.join(REQUEST_COLUMNS)})"
                f" VALUES ({', '.join('?' * (len(REQUEST_COLUMNS) + 1))})",
                values,
            )
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def get_requests(
        self, run_id: int, version: str | None = None, include_warmup: bool = True
    ) -> list[RequestRecord]:
        """The run's requests in ``seq`` order, as dataclasses."""
        sql, args = "SELECT * FROM requests WHERE run_id = ?", [run_id]
        if version is not None:
            sql += " AND version = ?"
            args.append(str(version))
        if not include_warmup:
            sql += " AND warmup = 0"
        sql += " ORDER BY seq, id"
        out = []
        for row in self._conn().execute(sql, args):
            d = {c: row[c] for c in REQUEST_COLUMNS}
            d["warmup"] = bool(d["warmup"])
            d["box"] = _loads(d["box"])
            d["chunk_ns"] = _loads(d["chunk_ns"])
            d["chunk_tokens"] = _loads(d["chunk_tokens"])
            d["bursty"] = None if d["bursty"] is None else bool(d["bursty"])
            out.append(RequestRecord(run_id=row["run_id"], **d))
        return out

    def set_bursts(self, run_id: int, flags: dict[int, bool | None]) -> None:
        """Set the ``bursty`` flag of the run's requests, by ``seq`` (judged again once the server's
        TPOT is known: :func:`services.bench.stats.arrived_in_bursts`)."""
        with self._conn() as conn:
            conn.executemany("UPDATE requests SET bursty = ? WHERE run_id = ? AND seq = ?",
                             [(None if f is None else int(bool(f)), run_id, seq) for seq, f in flags.items()])

    # ------------------------------------------------------------------ server-side timings

    def set_server_timings(self, run_id: int, rows: Iterable[dict[str, Any]]) -> None:
        """Store the server-side timings of a run (rows with ``version``, ``metric`` and
        :data:`TIMING_COLUMNS`: :func:`services.bench.server_timings.timing_rows`), replacing any."""
        cols = ["version", "metric", *TIMING_COLUMNS]
        with self._conn() as conn:
            conn.execute("DELETE FROM server_timings WHERE run_id = ?", (run_id,))
            conn.executemany(
                f"INSERT INTO server_timings (run_id, {', '.join(cols)}) VALUES ({', '.join('?' * (len(cols) + 1))})",
                [(run_id, *(str(r[c]) if c == "version" else r[c] for c in cols)) for r in rows])

    def get_server_timings(self, run_id: int) -> list[dict[str, Any]]:
        """The run's server-side timings as stored (empty: none recorded, or an older run)."""
        rows = self._conn().execute("SELECT * FROM server_timings WHERE run_id = ? ORDER BY version, metric",
                                    (run_id,))
        return [{k: r[k] for k in ["version", "metric", *TIMING_COLUMNS]} for r in rows]

    def requests_frame(self, run_id: int) -> pd.DataFrame:
        """The run's requests as stored (one column per table column, JSON kept as text)."""
        return pd.read_sql_query(
            f"SELECT run_id, {', '.join(REQUEST_COLUMNS)} FROM requests WHERE run_id = ?"
            " ORDER BY seq, id",
            self._conn(), params=(run_id,),
        )

    def versions(self, run_id: int) -> list[str]:
        """The versions the run sent requests to, else those listed in its config."""
        rows = self._conn().execute(
            "SELECT DISTINCT version FROM requests WHERE run_id = ? ORDER BY version", (run_id,)
        ).fetchall()
        if rows:
            return [r[0] for r in rows]
        run = self.get_run(run_id)
        return [str(v) for v in (run.config.get("versions") or [])] if run else []

    # ------------------------------------------------------------------ sweep levels

    def add_level(self, level: LevelRow) -> None:
        """Record (or replace) one level of a sweep, committed at once."""
        if level.status not in LEVEL_STATUSES:
            raise ValueError(f"level status must be one of {LEVEL_STATUSES}, not {level.status!r}")
        with self._conn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO sweep_levels (run_id, idx, version, load, value, repeat, status, reason,"
                " stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (level.run_id, level.idx, str(level.version), level.load, float(level.value), level.repeat,
                 level.status, level.reason, None if level.stats is None else _dumps(level.stats)))

    def get_levels(self, run_id: int) -> list[LevelRow]:
        """The run's sweep levels in the order they were measured (empty for a run that is no sweep)."""
        rows = self._conn().execute("SELECT * FROM sweep_levels WHERE run_id = ? ORDER BY idx", (run_id,))
        return [LevelRow(run_id=r["run_id"], idx=r["idx"], version=r["version"], load=r["load"], value=r["value"],
                         repeat=r["repeat"], status=r["status"], reason=r["reason"], stats=_loads(r["stats"]))
                for r in rows]

    # ------------------------------------------------------------------ samples

    def add_samples(self, run_id: int, samples: Iterable[Sample | SampleRow]) -> int:
        """Insert and commit memory readings (sampler samples or rows); returns rows written."""
        rows: list[SampleRow] = []
        for s in samples:
            rows.extend(sample_rows(s) if isinstance(s, Sample) else [s])
        if not rows:
            return 0
        with self._conn() as conn:
            conn.executemany(
                f"INSERT INTO samples (run_id, {', '.join(SAMPLE_COLUMNS)})"
                f" VALUES ({', '.join('?' * (len(SAMPLE_COLUMNS) + 1))})",
                [(run_id, *(getattr(r, c) for c in SAMPLE_COLUMNS)) for r in rows],
            )
        return len(rows)

    def sample_sink(self, run_id: int, flush_interval_s: float = 0.5) -> "SampleSink":
        """A sampler sink writing this run's samples, committed every ``flush_interval_s``."""
        return SampleSink(self, run_id, flush_interval_s)

    def get_samples(
        self, run_id: int, t0: float | None = None, t1: float | None = None
    ) -> list[SampleRow]:
        """The run's memory rows (``t0 <= t_mono <= t1`` when given), in time order."""
        sql, args = self._samples_query(run_id, t0, t1)
        return [
            SampleRow(**{c: row[c] for c in SAMPLE_COLUMNS})
            for row in self._conn().execute(sql, args)
        ]

    def samples_frame(
        self, run_id: int, t0: float | None = None, t1: float | None = None
    ) -> pd.DataFrame:
        """The run's memory rows as a DataFrame (the columns of ``SampleRow``)."""
        sql, args = self._samples_query(run_id, t0, t1)
        return pd.read_sql_query(sql, self._conn(), params=args)

    @staticmethod
    def _samples_query(run_id: int, t0: float | None, t1: float | None) -> tuple[str, list]:
        sql, args = f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE run_id = ?", [run_id]
        if t0 is not None:
            sql += " AND t_mono >= ?"
            args.append(t0)
        if t1 is not None:
            sql += " AND t_mono <= ?"
            args.append(t1)
        return sql + " ORDER BY t_mono, id", args

    # ------------------------------------------------------------------ exports

    def latency_export(self, run_id: int, version: str) -> dict[str, Any]:
        """The seed's ``latency_vN.json``: mean/min/max/count over successful measured requests."""
        lat = [
            r.effective_latency_ms
            for r in self.get_requests(run_id, version, include_warmup=False)
            if r.ok
        ]
        mean, lo, hi = mean_min_max(lat)
        return {"mean_ms": mean, "min_ms": lo, "max_ms": hi, "count": len(lat)}

    def memory_export(self, run_id: int, version: str) -> tuple[list[tuple[str, float]], str]:
        """Rows ``(timestamp, memory_mb)`` of ``memory_vN.csv`` and which memory they are:
        ``"gpu-process"``, ``"host-process"``, ``"gpu-total-nvml"``, ``"gpu-total-triton"``,
        ``"host-total"`` or ``"none"`` (see the module docstring)."""
        run = self.get_run(run_id)
        if run is None:
            raise KeyError(f"no run {run_id}")
        model = str(run.config.get("model", "qwen"))
        conn = self._conn()
        choices = [
            ("gpu-process", "kind = 'gpu' AND model = ? AND version = ?", (model, str(version))),
            ("host-process", "kind = 'host' AND model = ? AND version = ?", (model, str(version))),
            ("gpu-total-nvml", "kind = 'device' AND source = 'nvml'", ()),
            ("gpu-total-triton", "kind = 'device' AND source = 'triton'", ()),
            ("host-total", "kind = 'host'", ()),
        ]
        for label, where, args in choices:
            rows = conn.execute(
                f"SELECT t_wall, SUM(memory_bytes) FROM samples WHERE run_id = ? AND {where}"
                " AND memory_bytes IS NOT NULL GROUP BY t_mono, t_wall ORDER BY t_mono",
                (run_id, *args),
            ).fetchall()
            if rows:
                return [(_iso(t), round(b / MIB, 3)) for t, b in rows], label
        return [], "none"

    def export_files(self, run_id: int) -> dict[str, bytes]:
        """Every export of one run as ``{file name: bytes}`` (for download buttons)."""
        run = self.get_run(run_id)
        if run is None:
            raise KeyError(f"no run {run_id}")
        files: dict[str, bytes] = {}
        attribution: dict[str, str] = {}
        for v in self.versions(run_id):
            files[f"latency_v{v}.json"] = (
                json.dumps(self.latency_export(run_id, v), indent=2) + "\n"
            ).encode()
            rows, attribution[v] = self.memory_export(run_id, v)
            files[f"memory_v{v}.csv"] = _csv_bytes(["timestamp", "memory_mb"], rows)
        req = self.requests_frame(run_id)
        smp = self.samples_frame(run_id)
        files[f"run_{run_id}_requests.csv"] = req.to_csv(index=False).encode()
        files[f"run_{run_id}_samples.csv"] = smp.to_csv(index=False).encode()
        full = {
            "run": dataclasses.asdict(run),
            "memory_attribution": attribution,
            "requests": [dataclasses.asdict(r) for r in self.get_requests(run_id)],
            "samples": [dataclasses.asdict(s) for s in self.get_samples(run_id)],
        }
        files[f"run_{run_id}.json"] = (_dumps(full) + "\n").encode()
        return files

    def export_run(self, run_id: int, folder: str | os.PathLike[str]) -> list[Path]:
        """Write :meth:`export_files` into ``folder`` (created); returns the paths written."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in self.export_files(run_id).items():
            p = out / name
            p.write_bytes(data)
            paths.append(p)
        return paths


def _csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


class SampleSink:
    """A sampler sink that buffers a run's samples and commits them every ``flush_interval_s``.

    Called in the sampler's thread (which gets its own connection). Call :meth:`close` at the end
    of the run to write what is left. When writes fail (the error reaches the sampler, which
    reports it as source "sink"), the samples are kept for the next flush, at most
    ``max_buffer`` of them (the oldest are dropped beyond that).
    """

    def __init__(
        self, store: RunStore, run_id: int, flush_interval_s: float = 0.5,
        max_buffer: int = 36_000,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.written = 0
        self._buf: list[Sample | SampleRow] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def __call__(self, sample: Sample | SampleRow) -> None:
        with self._lock:
            self._buf.append(sample)
            due = time.monotonic() - self._last_flush >= self.flush_interval_s
        if due:
            self.flush()

    def flush(self) -> int:
        """Write the buffered samples now; returns the rows written."""
        with self._lock:
            buf, self._buf = self._buf, []
            self._last_flush = time.monotonic()
            if not buf:
                return 0
            try:
                n = self.store.add_samples(self.run_id, buf)
            except Exception:
                self._buf = (buf + self._buf)[-self.max_buffer :]  # retry on the next flush
                raise
            self.written += n
            return n

    def close(self) -> int:
        """Flush what is left."""
        return self.flush()
