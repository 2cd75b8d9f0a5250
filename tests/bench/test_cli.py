"""services.bench.cli: the real entry point as a subprocess against the shared local Triton (help, a short
run with its summary and exports, Ctrl-C, kill -9), and bad server URLs in-process. Nothing is mocked."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from services.bench.cli import main
from services.bench.stats import mean_min_max
from services.bench.store import STALE_REASON, RunStore
from tests.ports import closed_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for name, color in (("one.png", (200, 80, 80)), ("two.jpg", (80, 80, 200))):
        img = Image.new("RGB", (160, 120), color)
        buf = io.BytesIO()
        img.save(buf, "PNG" if name.endswith(".png") else "JPEG")
        (folder / name).write_bytes(buf.getvalue())
        paths.append(folder / name)
    return paths


def server_args(server, protocol: str = "http") -> list[str]:
    url = f"http://{server.http_url}" if protocol == "http" else f"grpc://{server.grpc_url}"
    return ["--url", url, "--grpc-url", server.grpc_url, "--metrics-url", server.metrics_url,
            "--server-pid", str(server.pid)]


def run_args(images: list[Path], data_dir: Path, *extra: str) -> list[str]:
    return ["--images", "uploaded", "--files", *map(str, images), "--max-side", "160", "--max-tokens", "4",
            "--ignore-eos", "--data-dir", str(data_dir), *extra]


def cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("QWEN_TRITON_URL", None)
    return subprocess.Popen([sys.executable, "-m", "services.bench.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def count_rows(db: Path) -> tuple[int | None, int]:
    """(newest run id, its request rows) read by an independent connection; (None, 0) before any."""
    if not db.exists():
        return None, 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT max(id) FROM runs").fetchone()
            if row[0] is None:
                return None, 0
            return row[0], conn.execute("SELECT count(*) FROM requests WHERE run_id = ?", row).fetchone()[0]
    except sqlite3.OperationalError:  # the schema is being created
        return None, 0


def wait_rows(db: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_id, rows = count_rows(db)
        if rows >= n:
            return run_id, rows
        if proc.poll() is not None:
            raise AssertionError(f"the CLI ended early ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} requests stored after {timeout} s")


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--versions", "--requests", "--warmup", "--load", "--concurrency", "--rate", "--images",
                   "--count", "--max-tokens", "--ignore-eos", "--url", "--out", "--data-dir", "Exit status"):
        assert option in out
    assert out.startswith("usage: qwen-bench ")  # the console script's name
    assert "(default: None)" not in out
    entries = re.split(r"\n  (?=-)", out.split("options:", 1)[1])  # one entry per option
    assert len(entries) > 20
    for entry in entries:  # a default is named once: by the help text or by the formatter
        assert " ".join(entry.split()).count("default") <= 1, entry
    assert "(default: 20)" in out and "(default: samples)" in out


def test_a_short_run_prints_the_summary_and_writes_exports_matching_the_database(triton_server, image_files,
                                                                                   tmp_path) -> None:
    out = tmp_path / "exports"
    proc = cli([*server_args(triton_server), *run_args(image_files, tmp_path / "db", "--versions", "1", "2",
                                                        "--requests", "3", "--warmup", "1", "--concurrency", "2",
                                                        "--out", str(out))])
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "1 (bf16)" in stdout and "2 (fp8)" in stdout and "p99" in stdout and "TTFT p50" in stdout
    assert "memory over the run" in stdout
    # each version's notes name the version
    for v in ("bf16 (v1)", "fp8 (v2)"):
        assert f"note: {v}: only 3 requests: p99 is the maximum in disguise" in stdout, stdout
    last = stdout.strip().splitlines()
    run_line = next(line for line in last if line.startswith("run "))
    run_id = int(run_line.split()[1].rstrip(":"))
    assert run_line.endswith("completed")
    assert "req" in stderr  # the progress bar
    with RunStore(tmp_path / "db") as store:
        run = store.get_run(run_id)
        assert run.status == "completed"
        rows = store.get_requests(run_id)
        assert len(rows) == 8 and [r.version for r in rows] == ["1", "2"] * 4
    for v in ("1", "2"):
        exported = json.loads((out / f"latency_v{v}.json").read_text())
        with sqlite3.connect(tmp_path / "db" / "runs.sqlite3") as conn:
            lat = [x for (x,) in conn.execute("SELECT latency_ms FROM requests WHERE run_id = ? AND version = ?"
                                              " AND warmup = 0 AND status = 'ok'", (run_id, v))]
        assert exported["count"] == len(lat) == 3
        assert (exported["mean_ms"], exported["min_ms"], exported["max_ms"]) == pytest.approx(mean_min_max(lat))
        assert (out / f"memory_v{v}.csv").is_file()
    assert (out / f"run_{run_id}.json").is_file() and (out / f"run_{run_id}_requests.csv").is_file()


def test_a_bad_url_gives_a_clear_error_and_a_failing_exit_code(image_files, tmp_path, capsys) -> None:
    code = main(["--url", "ftp://somewhere:8000", *run_args(image_files, tmp_path / "db"), "--no-progress"])
    assert code == 2
    assert "error: bad server URL" in capsys.readouterr().err

    port = closed_port()
    t0 = time.monotonic()
    code = main(["--url", f"127.0.0.1:{port}", "--metrics-url", f"http://127.0.0.1:{port}/metrics",
                 *run_args(image_files, tmp_path / "db"), "--no-progress"])
    assert code == 1 and time.monotonic() - t0 < 30
    captured = capsys.readouterr()
    assert "error: the run failed" in captured.err and "not reachable" in captured.err
    assert "failed" in captured.out

    assert main(["--requests", "0", *run_args(image_files, tmp_path / "db")]) == 2
    assert "requests" in capsys.readouterr().err


def test_ctrl_c_cancels_cleanly_and_keeps_what_was_recorded(triton_server, image_files, tmp_path) -> None:
    out = tmp_path / "exports"
    db = tmp_path / "db" / "runs.sqlite3"
    proc = cli([*server_args(triton_server, "grpc"), *run_args(image_files, tmp_path / "db", "--versions", "1",
                                                                "--requests", "200", "--warmup", "0",
                                                                "--out", str(out))])
    try:
        run_id, _ = wait_rows(db, 2, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "cancelling" in stderr and f"run {run_id}: cancelled" in stdout
    with RunStore(tmp_path / "db") as store:
        run = store.get_run(run_id)
        n = len(store.get_requests(run_id))
    assert run.status == "cancelled" and 2 <= n < 200
    assert json.loads((out / "latency_v1.json").read_text())["count"] == n


def test_sigkill_mid_run_leaves_a_database_that_opens_with_every_request_written(triton_server, image_files,
                                                                                 tmp_path) -> None:
    db = tmp_path / "db" / "runs.sqlite3"
    proc = cli([*server_args(triton_server), *run_args(image_files, tmp_path / "db", "--versions", "1", "2",
                                                        "--requests", "200", "--warmup", "0", "--no-progress")])
    try:
        wait_rows(db, 3, proc)
        _, before = count_rows(db)  # every request committed up to the kill
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        run_id, status = conn.execute("SELECT id, status FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    assert status == "running"  # nobody has looked yet
    with RunStore(tmp_path / "db") as store:  # opening it marks the dead writer's run partial
        run = store.get_run(run_id)
        rows = store.get_requests(run_id)
    assert run.status == "partial" and run.reason == STALE_REASON
    assert len(rows) >= before >= 3
    assert [r.seq for r in rows] == sorted({r.seq for r in rows})  # no duplicates, in order
    assert all(r.status == "ok" and r.answer is not None for r in rows)


def test_image_size_draws_the_generated_set_once_at_that_size_with_its_truth(tmp_path) -> None:
    from services.bench.cli import build_config, build_parser, sized_image_folder
    from services.image_sets.image_set import load_image_set
    from services.image_sets.generator import GeneratorConfig, generate_dataset

    args = build_parser().parse_args(["--images", "generated", "--count", "2", "--image-seed", "3",
                                      "--image-size", "200x150", "--data-dir", str(tmp_path)])
    sized = sized_image_folder(args)
    folder = tmp_path / "image_sets" / "generated-3-2-200x150"
    assert sized.images == "folder" and sized.folder == str(folder)
    labels = [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines()]
    assert [(r["width"], r["height"]) for r in labels] == [(200, 150)] * 2
    expected = list(generate_dataset(3, 2, GeneratorConfig(size=(200, 150))))
    assert [r["boxes"] for r in labels] == [[[b.x1, b.y1, b.x2, b.y2] for b in s.boxes] for s in expected]
    images = load_image_set(build_config(sized).image_set).images
    assert [(im.width, im.height) for im in images] == [(200, 150)] * 2
    assert all(im.truth is not None for im in images)

    stamp = (folder / "labels.jsonl").stat().st_mtime_ns
    sized_image_folder(args)  # drawn once: a second run reads the same folder
    assert (folder / "labels.jsonl").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("extra", [["--images", "samples", "--image-size", "256"],
                                   ["--images", "generated", "--image-size", "big"],
                                   ["--images", "generated", "--image-size", "8x8"]])
def test_a_bad_image_size_is_a_usage_error(extra, tmp_path, capsys) -> None:
    assert main([*extra, "--data-dir", str(tmp_path)]) == 2
    assert "--image-size" in capsys.readouterr().err
