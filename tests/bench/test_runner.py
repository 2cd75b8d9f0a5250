"""services.bench.runner against the real local Triton (tests/conftest.py): closed and open loop on both
versions, cancellation, a server killed mid-run, an unreachable server, a version that is not there;
plus the pure parts (box and IoU of an answer, config checks); the request plan and the image sets are
tested in tests/bench/test_request_plan.py and tests/image_sets/test_image_set.py.

The tiny random-weight model answers gibberish quickly on this CPU: runs are short (a few requests of a
few tokens on small images), and ``ignore_eos`` makes every answer exactly ``max_tokens`` long. Nothing
is mocked.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from services.bench.stats import mean_min_max
from services.bench.request_plan import poisson_offsets
from services.bench.runner import (
    DEAD_SERVER_REASON,
    BenchmarkConfig,
    answer_box,
    config_to_dict,
    run_benchmark,
    start_benchmark,
    validate_config,
)
from services.image_sets.image_set import BenchImage, ImageSetSpec
from services.core.boxes import Box
from services.bench.sampler import get_shared_sampler, stop_shared_sampler
from services.bench.store import RunStore
from services.bench.server_timings import NO_HISTOGRAMS
from services.client.server_target import ServerTarget
from tests.ports import closed_port

pytestmark = pytest.mark.timeout(180)

EXACT = {"ignore_eos": True}
MAX_TOKENS = 4


def png(color: tuple[int, int, int], size: tuple[int, int] = (160, 120)) -> bytes:
    img = Image.new("RGB", size, color)
    ImageDraw.Draw(img).rectangle((40, 30, 120, 100), outline=(0, 0, 0), width=3)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


IMAGES = (("red.png", png((220, 60, 60))), ("green.png", png((60, 200, 60))), ("blue.png", png((60, 60, 220))))


def target_of(server, protocol: str = "grpc") -> ServerTarget:
    return ServerTarget(server.http_url, server.grpc_url, server.metrics_url, protocol, embedded=True,
                        checkpoint=None, repository=server.repository, server_pid=server.pid)


def config(**kw) -> BenchmarkConfig:
    base = dict(versions=("1", "2"), image_set=ImageSetSpec(kind="uploaded", images=IMAGES, max_side=160),
                requests=4, warmup=1, max_tokens=MAX_TOKENS, extra_sampling=dict(EXACT), timeout_s=60.0)
    base.update(kw)
    return BenchmarkConfig(**base)


def db_rows(store: RunStore, run_id: int, sql: str = "SELECT count(*) FROM requests WHERE run_id = ?") -> int:
    with sqlite3.connect(store.path) as conn:  # an independent reader
        return conn.execute(sql, (run_id,)).fetchone()[0]


@pytest.fixture(scope="module", autouse=True)
def _stop_sampler_after_module():
    yield
    stop_shared_sampler()  # the runs started the process-wide sampler: do not leave it polling


@pytest.fixture
def store(tmp_path) -> RunStore:
    s = RunStore(tmp_path / "db")
    yield s
    s.close()


# --------------------------------------------------------------------------- pure parts


def _image(truth) -> BenchImage:
    return BenchImage(id="x", b64="", width=800, height=600, sent_width=800, sent_height=600,
                      truth=truth, sha256="")


def test_answer_box_records_the_best_match_and_its_iou() -> None:
    truth = (Box(100, 200, 500, 600), Box(600, 100, 900, 400))
    box, iou = answer_box("nutrition-table(10,10),(50,50) nutrition-table(600,100),(900,400)", _image(truth))
    assert box == {"x1": 600.0, "y1": 100.0, "x2": 900.0, "y2": 400.0} and iou == pytest.approx(1.0)
    box, iou = answer_box("<|box_start|>(100,200),(500,400)<|box_end|>", _image(truth))
    assert iou == pytest.approx(0.5) and box["y2"] == 400.0
    assert answer_box("hy!ox gibberish", _image(truth)) == (None, 0.0)  # truth but no box: IoU 0
    box, iou = answer_box("nutrition-table(0,0),(10,10)", _image(truth))  # a box that misses
    assert box is not None and iou == 0.0
    assert answer_box("nutrition-table(1,2),(3,4)", _image(None)) == ({"x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0},
                                                                       None)
    assert answer_box("nutrition-table(1,2),(3,4)", _image(()))[1] is None  # known to hold no table


@pytest.mark.parametrize("change, words", [
    (dict(versions=()), "at least one"),
    (dict(versions=("1", "1")), "once"),
    (dict(requests=0), "requests"),
    (dict(warmup=-1), "warmup"),
    (dict(concurrency=0), "concurrency"),
    (dict(load="burst"), "load"),
    (dict(load="open", rate=0.0), "rate"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(timeout_s=0), "timeout"),
    (dict(protocol="ftp"), "protocol"),
    (dict(extra_sampling={"max_tokens": 3}), "max_tokens"),
    (dict(image_set=ImageSetSpec(kind="uploaded")), "uploaded"),
    (dict(image_set=ImageSetSpec(kind="folder")), "folder"),
    (dict(image_set=ImageSetSpec(kind="camera")), "kind"),
])
def test_a_bad_config_is_refused_before_anything_starts(change, words, store) -> None:
    with pytest.raises(ValueError, match=words):
        start_benchmark(config(**change), store=store, target=None)
    assert store.list_runs() == []


def test_config_as_json_keeps_no_image_bytes() -> None:
    d = config_to_dict(validate_config(config(versions=(1, 2))))
    assert d["versions"] == ["1", "2"]
    assert [i["name"] for i in d["image_set"]["images"]] == ["red.png", "green.png", "blue.png"]
    assert all(len(i["sha256"]) == 64 and i["bytes"] > 0 for i in d["image_set"]["images"])
    json.dumps(d)


# --------------------------------------------------------------------------- runs on the real server


def _check_summary(s, count: int) -> None:
    assert s.count == count and s.failures == 0 and s.warmup == 1
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.min_ms <= s.mean_ms <= s.max_ms
    assert s.requests_per_s > 0 and s.output_tokens_per_s > 0
    assert s.output_tokens == count * MAX_TOKENS
    assert s.ttft_p50_ms is not None and s.ttft_p50_ms <= s.ttft_p99_ms
    assert s.tpot_mean_ms is not None and s.tpot_mean_ms > 0


def test_closed_loop_on_both_versions_records_every_request_in_interleaved_order(triton_server, store, tmp_path):
    seen = []
    outcome = run_benchmark(config(load="closed", concurrency=2), store=store, target=target_of(triton_server),
                            on_progress=seen.append)
    assert outcome.status == "completed" and outcome.reason is None, outcome.reason
    rows = store.get_requests(outcome.run_id)
    assert len(rows) == 2 * (4 + 1)
    assert [r.seq for r in rows] == list(range(10))
    assert [r.version for r in rows] == ["1", "2"] * 5
    assert [r.warmup for r in rows] == [True, True] + [False] * 8
    names = [n for n, _ in IMAGES]
    assert [r.image_id for r in rows] == [names[0]] * 2 + [names[i % 3] for i in range(4) for _ in range(2)]
    for r in rows:
        assert r.status == "ok" and r.error is None
        assert r.output_tokens == MAX_TOKENS and r.input_tokens > 0
        assert r.send_ns < r.first_token_ns <= r.recv_ns
        assert r.answer and r.iou is None  # uploaded images: no ground truth
        assert len(r.chunk_ns) >= 1
        # each chunk's token count, the server's (num_output_tokens per streamed response)
        assert len(r.chunk_tokens) == len(r.chunk_ns) and sum(r.chunk_tokens) == MAX_TOKENS
        assert r.warmup or r.bursty is (max(r.chunk_tokens) > 1)  # no server TPOT here: chunks judge alone
    for v in ("1", "2"):
        _check_summary(outcome.summaries[v], 4)
    # the transformers engine publishes no vllm:* histograms: its server-side timings are unknown, said so
    assert store.get_server_timings(outcome.run_id) == []
    assert outcome.summary["server_timings"]["reason"] == NO_HISTOGRAMS

    # progress: every status on the way, then the final one; counts add up
    statuses = [p.status for p in seen]
    assert statuses[0] == "starting" and statuses[-1] == "completed"
    assert "warmup" in statuses and "running" in statuses
    last = seen[-1]
    assert (last.done, last.total, last.failures, last.warmup_done, last.measured_done) == (10, 10, 0, 2, 8)
    assert last.by_version == {"1": {"done": 5, "ok": 5, "failures": 0}, "2": {"done": 5, "ok": 5, "failures": 0}}

    # the stored run: status, summary, manifest
    run = store.get_run(outcome.run_id)
    assert run.status == "completed" and run.finished_at
    assert run.config["model"] == "qwen" and run.config["versions"] == ["1", "2"]
    assert run.summary["versions"]["1"]["count"] == 4 and run.summary["requests"]["recorded"] == 10
    m = run.manifest
    assert m["server"]["name"] == "triton" and m["server"]["version"] and "model_repository" in m["server"]["extensions"]
    assert {(v["version"], v["state"]) for v in m["model"]["versions"]} >= {("1", "READY"), ("2", "READY")}
    assert m["model"]["config"]["name"] == "qwen" and m["model"]["config"]["model_transaction_policy"]["decoupled"]
    assert m["quantization"]["1"]["precision"] == "bf16" and m["quantization"]["2"]["precision"] == "fp8"
    assert m["quantization"]["2"]["source"] == "metrics" and m["quantization"]["2"]["quantized_layers"] > 0
    assert m["gpu"] == "none" or m["gpu"]["gpus"]
    assert m["client"]["tritonclient"] and m["client"]["requests"] and m["client"]["python"]
    assert m["client"]["git"] is None or len(m["client"]["git"]["commit"]) == 40
    assert [i["id"] for i in m["image_set"]["images"]] == names
    assert m["protocol"] == "grpc"
    assert "config" not in m and run.config["concurrency"] == 2  # the config is stored once, in its column

    # memory: the run's samples came through its sink, with a baseline before the first request
    assert outcome.memory and run.summary["memory"]
    first_send = min(r.send_ns for r in rows) / 1e9
    host = [s for s in outcome.memory if s.kind == "host" and s.version == "1"]
    assert host and host[0].baseline_t < first_send and host[0].peak_bytes >= host[0].baseline_bytes
    n_samples = db_rows(store, outcome.run_id, "SELECT count(*) FROM samples WHERE run_id = ?")
    assert n_samples > 0
    time.sleep(3 / get_shared_sampler().rate_hz)
    assert db_rows(store, outcome.run_id, "SELECT count(*) FROM samples WHERE run_id = ?") == n_samples  # sink removed

    # exports match the database
    store.export_run(outcome.run_id, tmp_path / "out")
    for v in ("1", "2"):
        exported = json.loads((tmp_path / "out" / f"latency_v{v}.json").read_text())
        with sqlite3.connect(store.path) as conn:
            lat = [x for (x,) in conn.execute("SELECT latency_ms FROM requests WHERE run_id = ? AND version = ?"
                                              " AND warmup = 0 AND status = 'ok'", (outcome.run_id, v))]
        mean, lo, hi = mean_min_max(lat)
        assert exported["count"] == len(lat) == 4
        assert (exported["mean_ms"], exported["min_ms"], exported["max_ms"]) == pytest.approx((mean, lo, hi))
        assert exported["mean_ms"] == pytest.approx(outcome.summaries[v].mean_ms)
        assert (tmp_path / "out" / f"memory_v{v}.csv").read_text().startswith("timestamp,memory_mb\n")


def test_open_loop_on_both_versions_follows_the_seeded_poisson_schedule(triton_server, store):
    cfg = config(load="open", rate=20.0, seed=11, stream=True)
    handle = start_benchmark(cfg, store=store, target=target_of(triton_server, "http"))
    outcome = handle.wait(120)
    assert outcome is not None and outcome.status == "completed", outcome and outcome.reason
    rows = store.get_requests(outcome.run_id)
    assert len(rows) == 10 and [r.version for r in rows] == ["1", "2"] * 5
    assert all(r.status == "ok" for r in rows)
    for v in ("1", "2"):
        _check_summary(outcome.summaries[v], 4)
    measured = [r for r in rows if not r.warmup]
    offsets = poisson_offsets(len(measured), 20.0, 11)
    sent = np.array([r.send_ns for r in measured], dtype=float)
    loop = outcome.summary["open_loop"]
    assert loop["rate"] == 20.0 and loop["seed"] == 11 and loop["late_sends"] >= 0
    # each request leaves at its arrival time, or later by at most the largest lag the run measured
    # (the first one too: hence the lag on both sides); send_ns is stamped just before sending
    lag = loop["max_lag_ms"] / 1e3
    rel = (sent - sent[0]) / 1e9
    assert np.all(rel >= offsets - lag - 0.002)
    assert np.all(rel <= offsets + lag + 0.05)
    assert store.get_run(outcome.run_id).manifest["seeds"]["arrivals"] == 11


def test_a_generated_set_records_box_and_iou_against_its_ground_truth(triton_server, store):
    spec = ImageSetSpec(kind="generated", seed=5, count=2, max_side=160)
    outcome = run_benchmark(config(versions=("2",), image_set=spec, requests=2, warmup=0), store=store,
                            target=target_of(triton_server))
    assert outcome.status == "completed", outcome.reason
    truth = {i["id"]: i["truth"] for i in store.get_run(outcome.run_id).manifest["image_set"]["images"]}
    assert all(i is not None for i in truth.values())
    for r in store.get_requests(outcome.run_id):
        assert r.status == "ok"
        # gibberish from the random model: no box, so IoU 0 where there is a table to find
        assert (r.iou is not None) == bool(truth[r.image_id])
        assert r.iou is None or 0.0 <= r.iou <= 1.0
        assert r.box is None or set(r.box) == {"x1", "y1", "x2", "y2"}


def test_cancel_stops_sending_and_keeps_what_was_done(triton_server, store):
    handle = start_benchmark(config(versions=("1",), requests=40, warmup=0), store=store,
                             target=target_of(triton_server))
    deadline = time.monotonic() + 60
    while handle.progress().done < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    handle.cancel()
    t_cancel = time.monotonic()
    outcome = handle.wait(60)
    assert outcome is not None and time.monotonic() - t_cancel < 30
    assert outcome.status == "cancelled" and "cancelled" in outcome.reason
    n = db_rows(store, outcome.run_id)
    assert 2 <= n < 40 and n == outcome.progress.done
    assert store.get_run(outcome.run_id).status == "cancelled"
    assert outcome.summaries["1"].count == n and outcome.summaries["1"].failures == 0
    assert handle.progress().status == "cancelled"


def test_an_unreachable_server_fails_the_run_at_once_with_the_reason(store):
    port = closed_port()
    target = ServerTarget(f"127.0.0.1:{port}", f"127.0.0.1:{port}", f"http://127.0.0.1:{port}/metrics", "http",
                          embedded=False, checkpoint=None, repository=None, server_pid=None)
    t0 = time.monotonic()
    outcome = start_benchmark(config(), store=store, target=target).wait(60)
    assert outcome is not None and time.monotonic() - t0 < 30
    assert outcome.status == "failed" and "not reachable" in outcome.reason
    run = store.get_run(outcome.run_id)
    assert run.status == "failed" and run.reason == outcome.reason and "error" in run.manifest["server"]
    assert db_rows(store, outcome.run_id) == 0


def test_an_address_the_client_refuses_fails_the_run_with_the_reason(store):
    target = ServerTarget("somewhere:8000/v2", "somewhere:8001", "http://somewhere:8002/metrics", "http",
                          embedded=False, checkpoint=None, repository=None, server_pid=None)
    outcome = start_benchmark(config(), store=store, target=target).wait(30)
    assert outcome is not None and outcome.status == "failed"
    assert outcome.reason.startswith("bad server address") and "no path" in outcome.reason
    assert store.get_run(outcome.run_id).status == "failed"


def test_a_version_the_server_does_not_have_fails_the_run_before_any_request(triton_server, store):
    outcome = run_benchmark(config(versions=("1", "9")), store=store, target=target_of(triton_server, "http"))
    assert outcome.status == "failed" and "version 9" in outcome.reason
    assert db_rows(store, outcome.run_id) == 0


@pytest.mark.timeout(300)
def test_a_server_killed_mid_run_gives_a_partial_run_with_every_finished_request(own_triton_server, store):
    server = own_triton_server
    cfg = config(requests=40, warmup=0, concurrency=2, timeout_s=30.0)
    handle = start_benchmark(cfg, store=store, target=target_of(server, "grpc"))
    killed = threading.Event()
    killed_after: list[int] = []
    t_kill: list[float] = []

    def killer() -> None:  # a timer thread: kill -9 the server once a few requests are stored
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run_id = handle.progress().run_id
            if run_id is not None and db_rows(store, run_id) >= 3:
                killed_after.append(db_rows(store, run_id))
                os.kill(server.pid, signal.SIGKILL)
                t_kill.append(time.monotonic())
                killed.set()
                return
            time.sleep(0.05)

    threading.Thread(target=killer, daemon=True).start()
    slowest = 0.0
    while not handle.done():  # the handle keeps answering while the run goes on (the page polls it)
        t = time.perf_counter()
        handle.progress()
        slowest = max(slowest, time.perf_counter() - t)
        time.sleep(0.02)
    t_end = time.monotonic()
    outcome = handle.wait(1)
    assert killed.is_set() and outcome is not None
    assert t_end - t_kill[0] < 20, "the run did not stop promptly after the server died"
    assert slowest < 0.1
    assert outcome.status == "partial", (outcome.status, outcome.reason)
    assert outcome.reason.startswith(DEAD_SERVER_REASON) and "unreachable" in outcome.reason
    run = store.get_run(outcome.run_id)
    assert run.status == "partial" and run.reason == outcome.reason
    rows = store.get_requests(outcome.run_id)
    assert len(rows) == outcome.progress.done < 80  # every finished request is stored; sending stopped
    ok = [r for r in rows if r.status == "ok"]
    failed = [r for r in rows if r.status == "error"]
    assert len(ok) >= killed_after[0] >= 3
    assert len(failed) >= cfg.stop_after_unreachable
    assert all(r.error and r.send_ns and r.recv_ns and r.answer is None for r in failed)
    assert any(r.error.startswith("ServerUnreachable: ") for r in failed)
    total = sum(s.count + s.failures for s in outcome.summaries.values())
    assert total == len(rows) and sum(s.failures for s in outcome.summaries.values()) == len(failed)
