"""The comparison report from a paired run on the real local Triton, checked against the database.

The run goes through the real benchmark service (both versions interleaved, a small generated
labelled set) against the session's embedded Triton (tests/conftest.py: the tiny random-weight
model, whose answers are gibberish: no box, so IoU 0). Every number of the report is recomputed
here straight from the RunStore rows, independently of services.compare, and must be equal.
"""

from __future__ import annotations

import csv
import html
import json
import re
from collections import defaultdict

import numpy as np
import pytest

from services.bench.stats import RequestRecord
from services.bench.runner import BenchmarkConfig, run_benchmark
from services.image_sets.image_set import ImageSetSpec
from services.core.boxes import Box, match_boxes, parse_answer
from services.compare.comparison import compare_run
from services.compare.report import main, write_report
from services.core.units import format_bytes
from services.bench.sampler import stop_shared_sampler
from services.bench.store import RunStore
from services.client.server_target import ServerTarget
from tests.compare.support import check_self_contained

pytestmark = pytest.mark.timeout(300)

REQUESTS, WARMUP, MAX_TOKENS, IMAGES = 6, 1, 4, 3


def target_of(server) -> ServerTarget:
    return ServerTarget(server.http_url, server.grpc_url, server.metrics_url, "http", embedded=True,
                        checkpoint=None, repository=server.repository, server_pid=server.pid)


@pytest.fixture(scope="module")
def paired(triton_server, tmp_path_factory):
    """(store, run id) of a completed paired run of both versions on a generated set of 3 images."""
    store = RunStore(tmp_path_factory.mktemp("compare-db"))
    config = BenchmarkConfig(versions=("1", "2"), image_set=ImageSetSpec(kind="generated", seed=7, count=IMAGES,
                                                                         max_side=160),
                             requests=REQUESTS, warmup=WARMUP, max_tokens=MAX_TOKENS,
                             extra_sampling={"ignore_eos": True}, timeout_s=60.0)
    outcome = run_benchmark(config, store=store, target=target_of(triton_server))
    stop_shared_sampler()
    assert outcome.status == "completed", outcome.reason
    yield store, outcome.run_id
    store.close()


# --------------------------------------------------------------------------- recomputed from rows


def _rows(store: RunStore, run_id: int) -> dict[str, list[RequestRecord]]:
    out: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in store.get_requests(run_id):
        if not r.warmup:
            out[r.version].append(r)
    return out


def _pairs(rows: dict[str, list[RequestRecord]]) -> list[tuple[RequestRecord, RequestRecord]]:
    def keyed(rs):
        count: dict[str, int] = defaultdict(int)
        out = {}
        for r in sorted(rs, key=lambda r: r.seq):
            out[(r.image_id, count[r.image_id])] = r
            count[r.image_id] += 1
        return out
    a, b = keyed(rows["1"]), keyed(rows["2"])
    return [(a[k], b[k]) for k in a if k in b]


def _truth(store: RunStore, run_id: int) -> dict[str, list[Box]]:
    images = store.get_run(run_id).manifest["image_set"]["images"]
    return {i["id"]: [Box(**b) for b in i["truth"]] for i in images}


def _mean_iou(pred, truth):
    m = match_boxes(pred, truth)
    return sum(v for _, _, v in m) / len(m) if m else None


def test_the_comparison_equals_the_numbers_in_the_database(paired):
    store, rid = paired
    rows = _rows(store, rid)
    c = compare_run(store, rid)
    assert (c.a.version, c.b.version) == ("1", "2") and c.paired and c.interleaved
    assert (c.measured_a, c.measured_b) == (REQUESTS, REQUESTS)
    assert c.image_set == f"generated labels, seed 7, {IMAGES} images"

    pairs = _pairs(rows)
    assert len(pairs) == REQUESTS
    assert [(p.seq_a, p.seq_b) for p in c.agreement.pairs] == [(a.seq, b.seq) for a, b in pairs]

    def lat(r):
        return (r.recv_ns - r.send_ns) / 1e6 if r.latency_ms is None else r.latency_ms

    def ttft(r):
        return (r.first_token_ns - r.send_ns) / 1e6 if r.ttft_ms is None else r.ttft_ms

    def tpot(r):
        return (lat(r) - ttft(r)) / (r.output_tokens - 1)

    for name, fn in (("latency_ms", lat), ("ttft_ms", ttft), ("tpot_ms", tpot)):
        mc = c.metric(name)
        for side, dist, values in (("1", mc.dist_a, mc.values_a), ("2", mc.dist_b, mc.values_b)):
            expected = [fn(r) for r in rows[side] if r.status == "ok"]
            assert values == pytest.approx(expected)
            assert dist.count == len(expected) == REQUESTS
            assert (dist.p50, dist.p90, dist.p99, dist.mean) == pytest.approx(
                (np.percentile(expected, 50), np.percentile(expected, 90), np.percentile(expected, 99),
                 np.mean(expected)))
        d = mc.difference
        assert d.paired and d.n_a == REQUESTS
        assert d.diff == pytest.approx(np.median([fn(b) for _, b in pairs]) - np.median([fn(a) for a, _ in pairs]))
        assert d.lo <= d.diff <= d.hi

    # throughput: tokens per second of request time
    for side, ts in (("1", c.throughput.a), ("2", c.throughput.b)):
        ok = [r for r in rows[side] if r.status == "ok"]
        assert ts.output_tokens == sum(r.output_tokens for r in ok) == REQUESTS * MAX_TOKENS
        assert ts.stream_tokens_per_s == pytest.approx(ts.output_tokens / (sum(lat(r) for r in ok) / 1e3))
        window = (max(r.recv_ns for r in rows[side]) - min(r.send_ns for r in rows[side])) / 1e9
        assert ts.requests_per_s == pytest.approx(len(ok) / window)
    assert c.throughput.windows_overlap  # interleaved: say why window throughput is diluted

    # accuracy: every answer parsed again, against the ground truth the manifest recorded
    truth = _truth(store, rid)
    assert set(truth) == {r.image_id for r in rows["1"]}
    for side, acc in (("1", c.accuracy.a), ("2", c.accuracy.b)):
        ious, no_box = [], 0
        for r in rows[side]:
            pred = parse_answer(r.answer, 1000, 1000).grid_boxes
            no_box += not pred
            v = _mean_iou(pred, truth[r.image_id])
            if v is not None:
                ious.append(v)
        assert acc.no_box == no_box and acc.failed == 0
        assert acc.mean_iou == pytest.approx(np.mean(ious) if ious else None)
        # the benchmark's own iou column (best match) agrees for answers of at most one box
        for r in rows[side]:
            if len(parse_answer(r.answer, 1000, 1000).grid_boxes) <= 1 and len(truth[r.image_id]) == 1:
                assert r.iou == pytest.approx(_mean_iou(parse_answer(r.answer, 1000, 1000).grid_boxes,
                                                        truth[r.image_id]))
    assert c.accuracy.known

    # memory: recomputed from the stored samples (host memory of each version's process: no GPU here)
    run = store.get_run(rid)
    smp = store.samples_frame(rid)
    t0, t1 = run.summary["sample_window"]["t0"], run.summary["sample_window"]["t1"]
    first = min(r.send_ns for r in store.get_requests(rid)) / 1e9
    for side, mem in (("1", c.memory.a), ("2", c.memory.b)):
        kind = "gpu" if mem.source == "gpu-process" else "host"
        s = smp[(smp["kind"] == kind) & (smp["version"] == side) & (smp["t_mono"] >= t0) & (smp["t_mono"] <= t1)]
        series = s.groupby("t_mono")["memory_bytes"].sum().sort_index()
        before = series[series.index < first]
        i0 = len(before) - 1 if len(before) else 0
        assert mem.baseline_bytes == int(series.iloc[i0])
        assert mem.peak_bytes == int(series.iloc[i0:].max())
        assert mem.delta_bytes == mem.peak_bytes - mem.baseline_bytes
        gauge = smp[(smp["version"] == side) & smp["kind"].str.startswith("qwen_engine_weight_bytes")
                    & smp["kind"].str.contains('part="model"', regex=False)].sort_values("t_mono")
        assert mem.weights_bytes == int(gauge["memory_bytes"].iloc[-1])
        assert mem.weights_bytes == run.manifest["quantization"][side]["weight_bytes"]["model"]
        assert mem.rest_bytes == mem.peak_bytes - mem.weights_bytes
        assert mem.kv_room_bytes is None  # the embedded engine reserves no KV room: never invented
    w1, w2 = c.memory.a.weights_bytes, c.memory.b.weights_bytes
    assert c.memory.saved_bytes == w1 - w2 and c.memory.saved_pct == pytest.approx((w1 - w2) / w1 * 100)
    assert f"saves {format_bytes(w1 - w2)} ({(w1 - w2) / w1 * 100:.1f}%) of weights" in c.verdict.memory

    # the floor: this machine has no GPU
    if run.manifest["gpu"] == "none":
        assert c.floor_a.applicable is False and c.floor_b.applicable is False
        assert "not applicable" in c.verdict.floor


def test_the_report_files_hold_the_database_numbers(paired, tmp_path):
    store, rid = paired
    c = compare_run(store, rid)
    paths = write_report(store, c, tmp_path / "report")
    names = sorted(p.name for p in paths)
    stem = f"comparison_run{rid}_v1_v2"
    assert names == sorted([f"{stem}.html", f"{stem}.json", f"{stem}_summary.csv", f"{stem}_pairs.csv"])

    data = json.loads((tmp_path / "report" / f"{stem}.json").read_text())["comparison"]
    rows = _rows(store, rid)
    lat = {v: [r.latency_ms for r in rows[v] if r.status == "ok"] for v in ("1", "2")}
    latency = next(m for m in data["latency"] if m["metric"] == "latency_ms")
    assert latency["values_a"] == pytest.approx(lat["1"]) and latency["values_b"] == pytest.approx(lat["2"])
    assert latency["dist_a"]["p50"] == pytest.approx(np.median(lat["1"]))
    assert latency["difference"]["diff"] == pytest.approx(c.metric("latency_ms").difference.diff)
    assert latency["difference"]["significant"] == c.metric("latency_ms").difference.significant
    assert data["memory"]["a"]["weights_bytes"] == c.memory.a.weights_bytes
    assert data["verdict"]["lines"] == c.verdict.lines

    with open(tmp_path / "report" / f"{stem}_pairs.csv", newline="") as fh:
        pairs = list(csv.DictReader(fh))
    by_seq = {r.seq: r for r in store.get_requests(rid)}
    assert len(pairs) == REQUESTS
    for p in pairs:
        a, b = by_seq[int(p["seq_a"])], by_seq[int(p["seq_b"])]
        assert (a.version, b.version, a.image_id, b.image_id) == ("1", "2", p["image_id"], p["image_id"])
        assert float(p["latency_ms_a"]) == pytest.approx(a.latency_ms)
        assert float(p["latency_ms_b"]) == pytest.approx(b.latency_ms)
        assert int(p["output_tokens_a"]) == a.output_tokens == MAX_TOKENS
    with open(tmp_path / "report" / f"{stem}_summary.csv", newline="") as fh:
        summary = {(r["section"], r["metric"]): r for r in csv.DictReader(fh)}
    row = summary[("latency", "latency_ms")]
    assert float(row["a"]) == pytest.approx(np.median(lat["1"])) and float(row["b"]) == pytest.approx(np.median(lat["2"]))
    assert float(summary[("memory", "weights_bytes")]["a"]) == c.memory.a.weights_bytes

    text = (tmp_path / "report" / f"{stem}.html").read_text()
    check_self_contained(text)
    # the first screen says what was measured, from the run's manifest and config
    first = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text[:text.index("<h2>Verdict")])).split())
    manifest = store.get_run(rid).manifest
    assert "Model and checkpoint model 'qwen'; checkpoint unknown (not recorded)" in first  # the target named none
    assert "no GPU on the benchmark host" in first or manifest["gpu"]["gpus"][0]["name"] in first
    assert f"Triton Inference Server {manifest['server']['version']}" in first and "engine: python backend" in first
    assert "bf16 (v1): bf16" in first and "fp8 (v2): fp8, mode fp8_" in first
    assert (f"{IMAGES} generated label images (seed 7), longest side 160 px; {REQUESTS} measured requests per "
            f"version after {WARMUP} warm-up; closed loop, concurrency 1; max {MAX_TOKENS} tokens") in first
    for line in c.verdict.lines:
        assert line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;") \
            .replace('"', "&quot;") in text
    for div in ("fig-change", "fig-memory", "fig-latency", "fig-ttft", "fig-tpot", "fig-throughput",
                "fig-accuracy", "fig-agreement", "fig-floor"):
        assert f'id="{div}"' in text


def test_command_line_reports_a_stored_run_and_a_fresh_one(paired, triton_server, tmp_path, monkeypatch, capsys):
    store, rid = paired
    assert main(["--run", str(rid), "--out", str(tmp_path / "stored"), "--data-dir", str(store.data_dir)]) == 0
    out = capsys.readouterr().out
    assert "Memory:" in out and f"comparison_run{rid}_v1_v2.html" in out
    assert (tmp_path / "stored" / f"comparison_run{rid}_v1_v2.json").is_file()

    # --fresh: a new paired run through the benchmark service, then its report
    monkeypatch.setenv("QWEN_TRITON_METRICS_URL", triton_server.metrics_url)
    before = {r.id for r in store.list_runs()}
    assert main(["--fresh", "--url", triton_server.http_url, "--protocol", "http", "--image-set", "generated",
                 "--seed", "2", "--count", "2", "--max-side", "160", "--requests", "2", "--warmup", "0",
                 "--max-tokens", "3", "--data-dir", str(store.data_dir), "--gallery", "0",
                 "--out", str(tmp_path / "fresh")]) == 0
    stop_shared_sampler()
    new = [r for r in store.list_runs() if r.id not in before]
    assert len(new) == 1 and new[0].status == "completed" and new[0].config["versions"] == ["1", "2"]
    report = json.loads((tmp_path / "fresh" / f"comparison_run{new[0].id}_v1_v2.json").read_text())["comparison"]
    assert report["measured_a"] == report["measured_b"] == 2
    assert sorted(r.version for r in store.get_requests(new[0].id)) == ["1", "1", "2", "2"]


def test_help_names_each_default_once(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: qwen-report ") and "(default: None)" not in out and "(default: False)" not in out
    for entry in re.split(r"\n  (?=-)", out.split("options:", 1)[1]):  # one entry per option
        assert " ".join(entry.split()).count("default") <= 1, entry
    assert "(default: 16)" in out and "(default: generated)" in out


def test_command_line_refuses_missing_choices(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])
