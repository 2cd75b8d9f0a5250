"""services.bench.figures: memory, latency and throughput figures and the summary table.

Frames are built here (known numbers, so every point can be checked), and once from real rows
written into a RunStore in a temporary data folder and read back as the page reads them.
"""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

from services.bench import figures as bf
from services.bench.stats import RequestRecord, summarize
from services.detect.figures import version_color
from services.bench.sample_series import SampleRow
from services.bench.sampler import Sampler
from services.bench.store import RunStore

GIB = 2**30
MIB = 2**20
T0 = 1000.0  # perf_counter seconds of the run's start in the constructed frames


def _gpu_rows(n: int = 6) -> list[SampleRow]:
    """Two GPUs; v1 on GPU 0, v2 split over both; tritonserver on GPU 0; weight gauges."""
    rows = []
    for i in range(n):
        t, w = T0 + i, 1.7e9 + i
        rows += [
            SampleRow(t_wall=w, t_mono=t, source="nvml", kind="device", memory_bytes=(20 + i) * GIB, gpu="0"),
            SampleRow(t_wall=w, t_mono=t, source="nvml", kind="device", memory_bytes=(10 + i) * GIB, gpu="1"),
            SampleRow(t_wall=w, t_mono=t, source="triton", kind="device", memory_bytes=1 * GIB, gpu="GPU-aaaa"),
            SampleRow(t_wall=w, t_mono=t, source="nvml", kind="gpu", memory_bytes=(8 + i) * GIB, gpu="0",
                      model="qwen", version="1", pid=11),
            SampleRow(t_wall=w, t_mono=t, source="nvml", kind="gpu", memory_bytes=3 * GIB, gpu="0",
                      model="qwen", version="2", pid=12),
            SampleRow(t_wall=w, t_mono=t, source="nvml", kind="gpu", memory_bytes=(2 + i) * GIB, gpu="1",
                      model="qwen", version="2", pid=12),
            SampleRow(t_wall=w, t_mono=t, source="nvml", kind="gpu", memory_bytes=512 * MIB, gpu="0",
                      model="server", pid=10),
            SampleRow(t_wall=w, t_mono=t, source="host", kind="host", memory_bytes=900 * MIB,
                      model="qwen", version="1", pid=11),
            SampleRow(t_wall=w, t_mono=t, source="triton",
                      kind='qwen_engine_weight_bytes{mode="torchao",part="model",precision="bf16"}',
                      memory_bytes=15 * GIB, model="qwen", version="1"),
            SampleRow(t_wall=w, t_mono=t, source="triton",
                      kind='qwen_engine_weight_bytes{mode="torchao",part="decoder_linear",precision="bf16"}',
                      memory_bytes=12 * GIB, model="qwen", version="1"),
        ]
    return rows


def _host_rows(n: int = 5) -> list[SampleRow]:
    rows = []
    for i in range(n):
        t = T0 + 0.5 * i
        for version, pid, mib in (("1", 21, 300 + 10 * i), ("1", 23, 100), ("2", 22, 250 + 5 * i)):
            rows.append(SampleRow(t_wall=1.7e9 + t, t_mono=t, source="host", kind="host",
                                  memory_bytes=mib * MIB, model="qwen", version=version, pid=pid))
        rows.append(SampleRow(t_wall=1.7e9 + t, t_mono=t, source="host", kind="host", memory_bytes=50 * MIB,
                              model="server", pid=20))
    return rows


def _traces(fig) -> dict[str, object]:
    return {t.name: t for t in fig.data}


# --------------------------------------------------------------------------- memory


def test_gpu_memory_figure_has_a_line_per_gpu_and_per_version() -> None:
    chart = bf.memory_chart_frame(_gpu_rows())
    fig = bf.memory_figure(chart, t0=T0)
    tr = _traces(fig)
    assert list(tr) == ["GPU 0 used (all processes)", "GPU 1 used (all processes)", "bf16 (v1) GPU memory",
                        "fp8 (v2) GPU memory", "tritonserver GPU memory", "bf16 (v1) weights (bf16)"]
    # NVML wins over Triton's device metric; GiB because the values are large
    assert fig.layout.yaxis.title.text == "GPU memory (GiB)"
    assert list(tr["GPU 0 used (all processes)"].x) == [0, 1, 2, 3, 4, 5]
    assert list(tr["GPU 0 used (all processes)"].y) == [20, 21, 22, 23, 24, 25]
    # v2 spans two GPUs: summed per time
    assert list(tr["fp8 (v2) GPU memory"].y) == [5, 6, 7, 8, 9, 10]
    assert tr["bf16 (v1) GPU memory"].line.color == version_color("1")
    assert tr["fp8 (v2) GPU memory"].line.color == version_color("2")
    # only the whole-model weight gauge, dotted
    assert tr["bf16 (v1) weights (bf16)"].line.dash == "dot"
    assert set(tr["bf16 (v1) weights (bf16)"].y) == {15}
    # host RSS is not mixed into a GPU chart unless asked for
    assert not any("host" in name for name in tr)
    with_host = _traces(bf.memory_figure(chart, t0=T0, include_host=True))
    assert "bf16 (v1) host memory (PSS)" in with_host


def test_triton_device_metric_is_used_when_nvml_gave_nothing() -> None:
    rows = [r for r in _gpu_rows(3) if r.source == "triton" and r.kind == "device"]
    tr = _traces(bf.memory_figure(bf.memory_chart_frame(rows), t0=T0))
    assert list(tr) == ["GPU GPU-aaaa used"]
    assert list(tr["GPU GPU-aaaa used"].y) == [1, 1, 1]  # GiB from 1 GiB on (services.core.units)


def test_host_memory_figure_on_a_machine_without_gpu_says_so() -> None:
    fig = bf.memory_figure(bf.memory_chart_frame(_host_rows()), t0=T0)
    tr = _traces(fig)
    assert list(tr) == ["bf16 (v1) host memory", "fp8 (v2) host memory", "tritonserver host memory"]
    assert "Host memory" in fig.layout.title.text and "no GPU" in fig.layout.title.text
    assert fig.layout.yaxis.title.text == "host memory (MiB)"
    # two processes of v1 are summed
    assert list(tr["bf16 (v1) host memory"].y) == [400, 410, 420, 430, 440]
    # the versions' lines differ in style as well as colour: where they coincide, both stay visible
    v1, v2 = tr["bf16 (v1) host memory"].line, tr["fp8 (v2) host memory"].line
    assert (v1.dash, v2.dash) == ("solid", "dash") and v1.width > v2.width + 1
    assert list(tr["bf16 (v1) host memory"].x) == [0, 0.5, 1, 1.5, 2]


def test_memory_figure_of_no_samples_is_empty_and_says_why() -> None:
    for empty in (None, [], pd.DataFrame()):
        fig = bf.memory_figure(bf.memory_chart_frame(empty))
        assert len(fig.data) == 0
        assert "no memory readings" in fig.layout.annotations[0].text


@pytest.fixture
def lone_pid():
    """A childless process to root the sampler at: the test process itself may have children (the
    session's Triton server and its stubs), which the sampler would rightly count too."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait(timeout=10)


def test_memory_chart_frame_reads_live_sampler_samples(lone_pid) -> None:
    sampler = Sampler(root_pid=lone_pid, nvml=False, metrics_url=None)
    samples = [sampler.sample_once() for _ in range(3)]
    chart = bf.memory_chart_frame(samples)
    assert len(chart) == 3 and set(chart["kind"]) == {"host"}
    fig = bf.memory_figure(chart, t0=samples[0].t_mono)
    (trace,) = fig.data
    assert len(trace.x) == 3 and trace.x[0] == 0 and all(y > 0 for y in trace.y)


def test_version_memory_prefers_process_gpu_memory_then_host_then_device() -> None:
    chart = bf.memory_chart_frame(_gpu_rows())
    mem = bf.version_memory(chart, ["1", "2", "3"], first_request_t=T0 + 1.5)
    # baseline: last reading before the first request (t = T0 + 1); peak: the largest after
    assert mem["1"] == bf.VersionMemory("1", 9 * GIB, 13 * GIB, 4 * GIB, "GPU memory of its processes")
    assert mem["2"].baseline_bytes == 6 * GIB and mem["2"].peak_bytes == 10 * GIB
    assert mem["3"].measured == "used memory of all GPUs (not per version)"
    host = bf.version_memory(bf.memory_chart_frame(_host_rows()), ["1", "2"])
    assert host["1"].measured == "host memory of its processes (PSS: shared pages once)"
    assert (host["1"].baseline_bytes, host["1"].peak_bytes) == (400 * MIB, 440 * MIB)
    assert bf.version_memory(pd.DataFrame(), ["1"]) == {}


# --------------------------------------------------------------------------- requests


def _requests_frame() -> pd.DataFrame:
    """v1 and v2 interleaved, 1 warm-up each, one v2 failure; 100 ms apart, latency known."""
    rows = []
    t = int(T0 * 1e9)
    seq = 0
    for i in range(12):
        for version in ("1", "2"):
            warm = i == 0
            failed = version == "2" and i == 5
            latency_ms = 40.0 + i + (10.0 if version == "2" else 0.0)
            send = t + seq * 100_000_000
            rows.append({
                "run_id": 1, "seq": seq, "version": version, "image_id": f"img{i}", "warmup": int(warm),
                "send_ns": send, "first_token_ns": send + 5_000_000,
                "recv_ns": None if failed else send + int(latency_ms * 1e6),
                "latency_ms": None if failed else latency_ms, "ttft_ms": 5.0,
                "input_tokens": 100, "output_tokens": None if failed else 4,
                "status": "error" if failed else "ok", "error": "timed out after 1 s" if failed else None,
            })
            seq += 1
    return pd.DataFrame(rows)


def test_latency_figure_points_rolling_median_warmup_and_failures() -> None:
    df = _requests_frame()
    fig = bf.latency_figure(df, t0=T0, window=3)
    tr = _traces(fig)
    assert set(tr) == {"bf16 (v1) requests", "bf16 (v1) rolling median (3)", "bf16 (v1) warm-up (not counted)",
                       "fp8 (v2) requests", "fp8 (v2) rolling median (3)", "fp8 (v2) warm-up (not counted)",
                       "fp8 (v2) failed (1)"}
    v1 = tr["bf16 (v1) requests"]
    assert list(v1.y) == [41.0 + i for i in range(11)]
    # x: when the request finished, in seconds since t0
    assert v1.x[0] == pytest.approx(0.2 + 0.041)
    med = tr["bf16 (v1) rolling median (3)"]
    assert list(med.y) == list(bf.rolling_median([41.0 + i for i in range(11)], 3).round(3))
    assert med.y[0] == 41.0 and med.y[1] == 41.5 and med.y[2] == 42.0
    fail = tr["fp8 (v2) failed (1)"]
    assert list(fail.y) == [0.0] and fail.marker.symbol == "x"
    assert fail.customdata[0][1] == "timed out after 1 s"
    assert len(tr["fp8 (v2) requests"].x) == 10  # 12 - warm-up - failure
    assert tr["fp8 (v2) requests"].marker.color == version_color("2")


def test_rolling_median_window() -> None:
    assert list(bf.rolling_median([5, 1, 3, 100, 2], 3)) == [5, 3, 3, 3, 3]


def test_latency_figure_without_requests() -> None:
    fig = bf.latency_figure(pd.DataFrame())
    assert len(fig.data) == 0 and "no requests" in fig.layout.annotations[0].text


def test_requests_without_time_stamps_are_placed_in_order() -> None:
    df = pd.DataFrame({"seq": [0, 1, 2], "version": ["1"] * 3, "warmup": [0] * 3, "latency_ms": [5.0, 6.0, 7.0],
                       "status": ["ok"] * 3})
    frame = bf.requests_chart_frame(df)
    assert list(frame["t_s"]) == [0.0, 1.0, 2.0] and list(frame["latency"]) == [5.0, 6.0, 7.0]


def test_throughput_frame_counts_measured_successes_per_bin() -> None:
    df = _requests_frame()
    tp = bf.throughput_frame(df, t0=T0, bin_s=1.0)
    v1 = tp[tp["version"] == "1"]
    # v1 measured requests finish at 0.2 + 0.2 k + latency (k = 0..10): 0.241 .. 2.251 s
    assert v1["req_per_s"].sum() == 11
    assert v1["tok_per_s"].sum() == 44
    v2 = tp[tp["version"] == "2"]
    assert v2["req_per_s"].sum() == 10  # the failure is not counted
    assert list(v1["t_s"]) == [1.0, 2.0, 3.0]
    fig = bf.throughput_figure(df, t0=T0, bin_s=1.0)
    names = [t.name for t in fig.data]
    assert names == ["bf16 (v1)", "bf16 (v1) tokens", "fp8 (v2)", "fp8 (v2) tokens"]
    assert list(fig.data[0].y) == list(v1["req_per_s"])
    # bins: 1 s; at most about 60; about 5 requests each on average, but at least 4 bins
    assert bf.throughput_bin_s(10.0, 100) == 1.0
    assert bf.throughput_bin_s(3600.0, 100_000) == 60.0
    assert bf.throughput_bin_s(100.0, 50) == 10.0
    assert bf.throughput_bin_s(20.0, 4) == 5.0
    assert bf.throughput_bin_s(0.0, 3) == 1.0
    sparse = bf.throughput_frame(df, t0=T0 - 600)  # 10 requests of v2 over 602 s: bins of 151 s
    steps = sparse[sparse["version"] == "1"]["t_s"].diff().dropna().round(6)
    assert set(steps) == {151.0} and sparse.groupby("version").size().max() <= 4


def test_throughput_of_nothing() -> None:
    assert bf.throughput_frame(None).empty
    fig = bf.throughput_figure(pd.DataFrame())
    assert len(fig.data) == 0 and any("no measured request" in a.text for a in fig.layout.annotations)


# --------------------------------------------------------------------------- summary table


def test_summary_tables_fit_and_name_their_units() -> None:
    records = [
        RequestRecord(seq=i, version=v, send_ns=i * 10**9, first_token_ns=i * 10**9 + 10**7,
                      recv_ns=i * 10**9 + (50 + i) * 10**6, output_tokens=6, warmup=i == 0)
        for i in range(10) for v in ("1", "2")
    ] + [RequestRecord(seq=99, version="2", send_ns=10 * 10**9, status="error", error="boom")]
    summaries = summarize(records)
    table = bf.summary_frame(summaries)
    assert list(table.columns) == bf.SUMMARY_COLUMNS and len(table.columns) <= 12
    assert all("(ms)" in c for c in table.columns if "p50" in c or "p9" in c or "mean" in c)
    assert list(table["version"]) == ["bf16 (v1)", "fp8 (v2)"]
    r1, r2 = table.iloc[0], table.iloc[1]
    assert (r1["count"], r1["failures"], r1["warm-up"]) == (9, 0, 1)
    assert (r2["count"], r2["failures"]) == (9, 1)
    assert r1["mean (ms)"] == 55.0 and r1["p50 (ms)"] == 55.0 and r1["TTFT p50 (ms)"] == 10.0
    assert r1["TPOT (ms)"] == pytest.approx(round(sum((50 + i - 10) / 5 for i in range(1, 10)) / 9, 2))
    notes = bf.summary_notes(summaries)
    assert any(n.startswith("bf16 (v1): ") and "p99 is the maximum in disguise" in n for n in notes)
    assert "fp8 (v2): 1 of 10 measured requests failed" in notes  # the version is named
    # the stored JSON form (dicts) gives the same table
    as_dicts = {v: s.to_dict() for v, s in summaries.items()}
    pd.testing.assert_frame_equal(bf.summary_frame(as_dicts), table)

    small = bf.memory_frame({"1": bf.VersionMemory("1", 100 * MIB, 150 * MIB, 50 * MIB, "host RSS of its processes")})
    assert list(small.columns) == ["version", "baseline (MiB)", "peak (MiB)", "delta (MiB)", "what was measured"]
    assert small.iloc[0].tolist() == ["bf16 (v1)", 100.0, 150.0, 50.0, "host RSS of its processes"]
    big = bf.memory_frame({"2": bf.VersionMemory("2", 15 * GIB, 16 * GIB, GIB, "GPU memory of its processes"),
                           "1": bf.VersionMemory("1", 512 * MIB, 3 * GIB // 2, GIB, "GPU memory of its processes")})
    assert list(big["version"]) == ["bf16 (v1)", "fp8 (v2)"]
    assert big.iloc[0]["baseline (GiB)"] == 0.5 and big.iloc[1]["peak (GiB)"] == 16.0
    assert bf.memory_frame({}).empty


# --------------------------------------------------------------------------- from a real store


def test_figures_from_rows_written_to_a_run_store(tmp_path, lone_pid) -> None:
    store = RunStore(tmp_path)
    run = store.create_run({"model": "qwen", "versions": ["1", "2"]})
    sampler = Sampler(root_pid=lone_pid, nvml=False, metrics_url=None)
    sink = store.sample_sink(run, flush_interval_s=0.0)
    sampler.add_sink(sink)
    sampler.sample_once()
    base = time.perf_counter_ns()
    for i in range(6):
        for version in ("1", "2"):
            send = time.perf_counter_ns()
            store.add_request(run, RequestRecord(seq=2 * i + int(version), version=version, send_ns=send,
                                                 first_token_ns=send + 1_000_000, recv_ns=send + 3_000_000,
                                                 output_tokens=3, warmup=i == 0, image_id=f"img{i}"))
        sampler.sample_once()
    sink.close()
    store.add_samples(run, [SampleRow(t_wall=time.time(), t_mono=time.perf_counter(), source="host", kind="host",
                                      memory_bytes=300 * MIB, model="qwen", version="2", pid=1)])
    store.finish_run(run, "completed")

    req, smp = store.requests_frame(run), store.samples_frame(run)
    t0 = bf.run_t0(req, smp)
    assert t0 is not None and t0 <= base / 1e9
    assert bf.first_request_t(req) > base / 1e9  # the first measured request comes after the warm-up
    lat = _traces(bf.latency_figure(req, t0=t0))
    assert len(lat["bf16 (v1) requests"].x) == 5 and len(lat["fp8 (v2) warm-up (not counted)"].x) == 1
    assert all(y == pytest.approx(3.0) for y in lat["bf16 (v1) requests"].y)
    mem = bf.memory_figure(bf.memory_chart_frame(smp), t0=t0)
    names = [t.name for t in mem.data]
    assert "tritonserver host memory" in names and "fp8 (v2) host memory" in names
    assert len(mem.data[names.index("tritonserver host memory")].x) == 7
    summaries = summarize(store.get_requests(run))
    table = bf.summary_frame(summaries)
    assert list(table["count"]) == [5, 5]
    memory = bf.memory_frame(bf.version_memory(smp, ["1", "2"], bf.first_request_t(req)))
    # nothing attributed to v1 and no GPU: v1 has no memory row
    assert list(memory["version"]) == ["fp8 (v2)"]
    assert memory.iloc[0]["what was measured"] == "host memory of its processes (PSS: shared pages once)"
    assert bf.export_names(run, store.versions(run)) == list(store.export_files(run))
    tp = bf.throughput_frame(req, t0=t0)
    assert tp.groupby("version")["req_per_s"].sum().to_dict() == {"1": 5.0, "2": 5.0}
    store.close()


# --------------------------------------------------------------------------- history helpers


def test_history_frame_and_config_description(tmp_path) -> None:
    with RunStore(tmp_path) as store:
        a = store.create_run({"model": "qwen", "versions": ["1", "2"], "requests": 20, "warmup": 2,
                              "load": "open", "rate": 4.0, "concurrency": 1, "max_tokens": 64, "stream": True,
                              "image_set": {"kind": "generated", "seed": 7, "count": 16}})
        store.finish_run(a, "partial", "the server stopped answering: connection refused")
        b = store.create_run({"model": "qwen", "versions": ["2"], "requests": 5, "warmup": 0, "load": "closed",
                              "concurrency": 3, "stream": False, "image_set": {"kind": "folder", "folder": "/data/x"}})
        frame = bf.history_frame(store.list_runs())
    assert list(frame.columns) == bf.HISTORY_COLUMNS
    assert list(frame["run"]) == [b, a]
    rb, ra = frame.iloc[0], frame.iloc[1]
    assert rb["status"] == "⏳ running" and rb["finished (UTC)"] == "" and rb["versions"] == "fp8 (v2)"
    assert rb["workload"] == "5 req/version, closed loop ×3, folder /data/x, not streaming"
    assert ra["status"] == "⚠️ partial" and ra["reason"].startswith("the server stopped answering")
    assert ra["workload"] == ("20 req/version, 2 warm-up, open loop 4.0 req/s, generated images (seed 7, 16), "
                              "max 64 tokens, streaming")
    assert ra["versions"] == "bf16 (v1), fp8 (v2)" and len(ra["started (UTC)"]) == 19
    assert bf.describe_config({}) == "" and bf.history_frame([]).empty


def test_thin_keeps_the_ends_and_at_most_about_max_points() -> None:
    items = list(range(1001))
    out = bf.thin(items, 100)
    assert out[0] == 0 and out[-1] == 1000 and len(out) <= 102
    assert bf.thin(items[:50], 100) == items[:50]
