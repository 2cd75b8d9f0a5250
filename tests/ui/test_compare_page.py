"""AppTest tests of the Compare page (pages/3_Compare.py) against the real test server.

The data folder is the test's own (``QWEN_DATA_DIR``); the server URL goes in ``QWEN_TRITON_URL`` as a
user would set it. Paired runs are made through the real benchmark service, on the tiny random-weight
model (gibberish answers: no box), and the page's numbers are checked against services.compare.comparison.
"""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from services.core import settings
from services.bench.runner import BenchmarkConfig, run_benchmark
from services.image_sets.image_set import ImageSetSpec
from services.compare.comparison import build_comparison, compare_run
from services.core.units import format_bytes
from services.bench.sampler import stop_shared_sampler
from services.bench.store import RunStore
from services.client.server_target import ServerTarget

pytestmark = pytest.mark.timeout(300)

APP = str(settings.PROJECT_ROOT / "app.py")
COMPARE = "pages/3_Compare.py"
CHARTS = 9  # change, memory, three CDFs, throughput, accuracy, agreement, floor


def target_of(server) -> ServerTarget:
    return ServerTarget(server.http_url, server.grpc_url, server.metrics_url, "http", embedded=True,
                        checkpoint=None, repository=server.repository, server_pid=server.pid)


def paired_run(server, store: RunStore, versions=("1", "2"), seed: int = 4) -> int:
    config = BenchmarkConfig(versions=versions, image_set=ImageSetSpec(kind="generated", seed=seed, count=2, max_side=160),
                             requests=4, warmup=1, max_tokens=4, extra_sampling={"ignore_eos": True}, timeout_s=60.0)
    outcome = run_benchmark(config, store=store, target=target_of(server))
    stop_shared_sampler()
    assert outcome.status == "completed", outcome.reason
    return outcome.run_id


@pytest.fixture
def env(triton_server, tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    monkeypatch.setenv("QWEN_TRITON_METRICS_URL", triton_server.metrics_url)
    monkeypatch.delenv("QWEN_TRITON_PROTOCOL", raising=False)
    yield triton_server, tmp_path
    stop_shared_sampler()


def compare_page(timeout: float = 60) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    at.switch_page(COMPARE).run()
    assert not at.exception, at.exception
    return at


def verdict_lines(at: AppTest) -> list[str]:
    return [line[2:] for m in at.markdown if m.value.startswith("- Memory:") for line in m.value.split("\n")]


def test_without_runs_the_page_says_how_to_get_one(env):
    at = compare_page()
    assert at.title[0].value == "Compare bf16 and fp8"
    assert any("No stored paired run yet" in i.value for i in at.info)
    assert not at.main.header  # no comparison, no sections


def test_a_stored_paired_run_is_compared_with_verdict_charts_tables_and_downloads(env):
    server, data = env
    with RunStore(data) as store:
        rid = paired_run(server, store)
        expected = compare_run(store, rid)
    at = compare_page()
    assert at.selectbox(key="cmp_run").value == rid
    headers = [h.value for h in at.main.header]
    assert headers == ["Recommendation", "Verdict", "Memory", "Latency", "Throughput", "Accuracy", "Agreement",
                       "Decode against the memory-bandwidth floor"] + (["Notes"] if expected.notes else []) + ["Report"]
    assert verdict_lines(at) == expected.verdict.lines
    # the page leads with the recommendation; a run that is no sweep measured no capacity
    assert at.info[0].value.startswith("No clear winner: capacity was not measured")
    assert len(at.get("plotly_chart")) >= CHARTS
    # the tables hold the comparison's numbers
    latency = next(d.value for d in at.dataframe if "metric (ms)" in d.value.columns)
    mc = expected.metric("latency_ms")
    assert latency.iloc[0]["median B−A"] == f"{mc.difference.diff:+.2f}"
    assert latency.iloc[0]["n A"] == str(mc.dist_a.count) == "4"
    # the server's own timings: unknown on the transformers engine, said so under the latency
    assert "As the server measured it" in [h.value for h in at.main.subheader]
    assert f"Server-side timings: {expected.server.reason}." in [c.value for c in at.caption]
    # the memory table is static, its long cells ("KV-cache room: how") wrapped, never cut
    memory = next(t.value for t in at.table if "bf16 (v1)" in t.value.columns)
    weights = memory.loc["weights"]
    assert memory.loc["KV-cache room: how", "bf16 (v1)"] == expected.memory.a.kv_note
    assert weights["bf16 (v1)"] == format_bytes(expected.memory.a.weights_bytes)
    assert weights["fp8 (v2)"] == format_bytes(expected.memory.b.weights_bytes)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Report (HTML, self-contained)", "Numbers (JSON)", "Summary (CSV)", "Pairs (CSV)"]
    # gibberish answers: no box from either version, so nothing to show in the gallery, and it says so
    if expected.agreement.worst() == []:
        assert any("No image where the versions disagree" in i.value for i in at.info)


def test_two_stored_runs_can_be_compared_side_by_side(env):
    server, data = env
    with RunStore(data) as store:
        r1 = paired_run(server, store, versions=("1",), seed=4)
        r2 = paired_run(server, store, versions=("2",), seed=4)
    at = compare_page()
    # single-version runs are no paired runs
    assert any("No stored paired run yet" in i.value for i in at.info)
    at.radio(key="cmp_source").set_value("two").run()
    at.selectbox(key="cmp_a_run").set_value(r1).run()
    at.selectbox(key="cmp_b_run").set_value(r2).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="cmp_a_version").value == "1" and at.selectbox(key="cmp_b_version").value == "2"
    caption = " ".join(c.value for c in at.caption)
    assert "different times" in caption  # same generated images, so paired by image across the runs
    with RunStore(data) as store:
        expected = build_comparison(store, (r1, "1"), (r2, "2"))
    assert verdict_lines(at) == expected.verdict.lines
    assert expected.a.label == f"bf16 (v1), run {r1}" and expected.paired


def test_a_new_paired_run_from_the_page_ends_in_its_comparison(env):
    at = compare_page()
    at.radio(key="cmp_source").set_value("new").run()
    at.selectbox(key="cmp_kind").set_value("generated")
    at.number_input(key="cmp_count").set_value(2)
    at.number_input(key="cmp_requests").set_value(2)
    at.number_input(key="cmp_warmup").set_value(0)
    at.number_input(key="cmp_max_tokens").set_value(3)
    at.number_input(key="cmp_max_side").set_value(160)
    at.button[0].click().run()  # the form's submit button
    assert not at.exception, at.exception
    deadline = time.monotonic() + 120
    while not verdict_lines(at) and time.monotonic() < deadline:
        time.sleep(1.0)
        at.run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
    lines = verdict_lines(at)
    assert lines and lines[0].startswith("Memory:")
    caption = " ".join(c.value for c in at.caption)
    assert "2 / 2 measured requests" in caption and "interleaved in one run" in caption
    with RunStore(env[1]) as store:
        runs = store.list_runs()
        assert len(runs) == 1 and runs[0].status == "completed"
        assert compare_run(store, runs[0].id).verdict.lines == lines


def test_a_new_run_whose_server_dies_is_compared_with_a_note_saying_why(own_triton_server, tmp_path, monkeypatch):
    """The server killed (SIGKILL) a few requests into a fresh paired run from the page: the run ends
    partial, the page says why above the comparison of what was recorded (ui.compare_new_run.NOTE)."""
    import os
    import signal

    from services.bench.runner import DEAD_SERVER_REASON

    monkeypatch.setenv("QWEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QWEN_TRITON_URL", own_triton_server.http_url)
    monkeypatch.setenv("QWEN_TRITON_METRICS_URL", own_triton_server.metrics_url)
    monkeypatch.delenv("QWEN_TRITON_PROTOCOL", raising=False)
    at = compare_page()
    at.radio(key="cmp_source").set_value("new").run()
    assert at.button[0].label == "Run bf16 (v1) and fp8 (v2), interleaved"
    for key, value in (("cmp_count", 2), ("cmp_requests", 400), ("cmp_warmup", 0), ("cmp_max_tokens", 3),
                       ("cmp_max_side", 160)):
        at.number_input(key=key).set_value(value)
    at.button[0].click().run()
    assert not at.exception, at.exception
    deadline = time.monotonic() + 180
    with RunStore(tmp_path) as store:
        while not store.list_runs() or len(store.get_requests(store.list_runs()[0].id)) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    os.kill(own_triton_server.pid, signal.SIGKILL)
    warnings: list[str] = []
    while not warnings:
        assert time.monotonic() < deadline, [e.value for e in at.error]
        time.sleep(1.0)
        at.run()
        assert not at.exception, at.exception
        warnings = [w.value for w in at.warning if w.value.startswith("The paired run partial")]
    assert warnings[0].startswith(f"The paired run partial: {DEAD_SERVER_REASON}: ")
    assert warnings[0].endswith("The comparison below is of the requests it recorded before it stopped.")
    with RunStore(tmp_path) as store:
        (run,) = store.list_runs()
        assert run.status == "partial" and run.reason in warnings[0]
    stop_shared_sampler()
