"""AppTest tests of the Benchmark page (pages/2_Benchmark.py) against the real test server.

Runs are real: ``services.bench.runner`` sends requests to the tiny random-weight model of
tests/conftest.py (about 50 ms each) and records them in a RunStore in the test's own data folder
(``QWEN_DATA_DIR``). The page is driven like a person would: fill the form, start, let the page
rerun until the run has ended, read the summary and the history, reopen, export, delete.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from streamlit.testing.v1 import AppTest

from services.core import settings
from services.bench.figures import HISTORY_COLUMNS, SUMMARY_COLUMNS
from services.bench.stats import RequestRecord
from services.bench.store import RunStore
from tests.ports import closed_port

pytestmark = pytest.mark.timeout(300)

APP = str(settings.PROJECT_ROOT / "app.py")
BENCH = "pages/2_Benchmark.py"
RUN_WAIT_S = 90  # the longest a short run may take on a busy machine


def bench_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(BENCH).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Benchmark bf16 against fp8"
    return at


def fill_form(at: AppTest, requests: int = 4, warmup: int = 1, max_tokens: int = 4) -> None:
    at.number_input(key="bench_requests").set_value(requests)
    at.number_input(key="bench_warmup").set_value(warmup)
    at.number_input(key="bench_max_tokens").set_value(max_tokens)


def wait_for_end(at: AppTest, timeout_s: float = RUN_WAIT_S) -> None:
    """Rerun the page (as the live fragment's rerun would) until this session's run has ended."""
    deadline = time.monotonic() + timeout_s
    while "bench_job" in at.session_state:
        assert time.monotonic() < deadline, "the run did not end in time"
        time.sleep(0.5)
        at.run()
        assert not at.exception, at.exception


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def table(at: AppTest, columns: list[str]):
    """The shown table with exactly these columns (AppTest's dataframes carry no key)."""
    found = [d.value for d in at.dataframe if list(d.value.columns) == columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


def history(at: AppTest):
    return table(at, HISTORY_COLUMNS)


def summary(at: AppTest):
    return table(at, SUMMARY_COLUMNS)


def test_a_short_run_shows_live_progress_then_summary_history_and_exports(bench_env):
    at = bench_page()
    assert "No runs yet." in texts(at.info)
    fill_form(at)
    at.button(key="bench_start").click().run()
    assert not at.exception, at.exception
    assert not texts(at.error), texts(at.error)
    # the run is this session's, kept in its session state; the start button waits for it
    assert "bench_job" in at.session_state or "bench_view_run" in at.session_state
    if "bench_job" in at.session_state:
        assert "Running" in texts(at.subheader)
        assert at.button(key="bench_start").disabled
        # the history says the run is going, never "No runs yet"
        assert "No runs yet." not in texts(at.info)
        assert any("of this session is going" in t for t in texts(at.info)) or \
            any(s.endswith("running") for s in history(at)["status"]), texts(at.info)
    wait_for_end(at)

    run_id = at.session_state["bench_view_run"]
    assert f"Run #{run_id}" in texts(at.subheader)
    assert any(t.startswith("Status: completed") for t in texts(at.success)), texts(at.success)
    shown = summary(at)
    assert list(shown["version"]) == ["bf16 (v1)", "fp8 (v2)"]
    assert list(shown["count"]) == [4, 4] and list(shown["failures"]) == [0, 0]
    assert list(shown["warm-up"]) == [1, 1]
    for col in ("mean (ms)", "p50 (ms)", "p90 (ms)", "p99 (ms)", "req/s", "tok/s"):
        assert shown[col].notna().all() and (shown[col] > 0).all(), col
    assert (shown["p50 (ms)"] <= shown["p90 (ms)"]).all() and (shown["p90 (ms)"] <= shown["p99 (ms)"]).all()
    # no vllm:* histograms (the transformers engine; here its metrics port is not even given): said so
    assert any(t.startswith("Server-side timings: unknown (") for t in texts(at.caption)), texts(at.caption)
    assert any(t.endswith("requests arrived in bursts.") for t in texts(at.caption)), texts(at.caption)

    hist = history(at)
    row = hist[hist["run"] == run_id].iloc[0]
    assert row["status"].endswith("completed") and row["versions"] == "bf16 (v1), fp8 (v2)"
    assert "4 req/version" in row["workload"]

    # the exports are the run store's files, offered for download
    names = {b.proto.label for b in at.download_button}
    assert {"latency_v1.json", "latency_v2.json", "memory_v1.csv", "memory_v2.csv",
            f"run_{run_id}.json", f"run_{run_id}_requests.csv", f"run_{run_id}_samples.csv"} <= names
    with RunStore(bench_env) as store:
        run = store.get_run(run_id)
        assert run is not None and run.status == "completed"
        assert len(store.get_requests(run_id, include_warmup=False)) == 8
        latency = json.loads(store.export_files(run_id)["latency_v1.json"])
        assert latency["count"] == 4
        assert shown.iloc[0]["mean (ms)"] == pytest.approx(latency["mean_ms"], abs=0.05)


def _stored_run(store: RunStore, status: str, reason: str | None, n: int = 3) -> int:
    run = store.create_run({"model": "qwen", "versions": ["1", "2"], "requests": n, "warmup": 0, "load": "closed",
                            "concurrency": 1, "image_set": {"kind": "samples"}, "max_tokens": 4, "stream": True})
    t = time.perf_counter_ns()
    for i in range(n):
        for j, version in enumerate(("1", "2")):
            send = t + (2 * i + j) * 60_000_000
            store.add_request(run, RequestRecord(seq=2 * i + j, version=version, send_ns=send,
                                                 first_token_ns=send + 5_000_000,
                                                 recv_ns=send + (40 + 10 * j) * 1_000_000, output_tokens=4))
    store.finish_run(run, status, reason)
    return run


def test_history_reopens_and_deletes_with_confirmation(bench_env):
    with RunStore(bench_env) as store:
        first = _stored_run(store, "completed", None)
        second = _stored_run(store, "failed", "the server went away: connection refused", n=2)
    at = bench_page()
    hist = history(at)
    assert list(hist["run"]) == [second, first]
    failed = hist[hist["run"] == second].iloc[0]
    assert failed["status"].endswith("failed") and failed["reason"] == "the server went away: connection refused"

    # reopen the first run: its summary and charts
    at.selectbox(key="bench_history_pick").set_value(first).run()
    at.button(key="bench_open").click().run()
    assert not at.exception, at.exception
    assert f"Run #{first}" in texts(at.subheader)
    shown = summary(at)
    assert list(shown["count"]) == [3, 3]
    assert list(shown["mean (ms)"]) == [40.0, 50.0]

    # reopen the failed one: its status says why
    at.selectbox(key="bench_history_pick").set_value(second).run()
    at.button(key="bench_open").click().run()
    assert f"Run #{second}" in texts(at.subheader)
    assert "Status: failed: the server went away: connection refused" in texts(at.error)

    # delete asks first; "Keep it" keeps it
    at.button(key="bench_delete").click().run()
    assert any(f"Delete run #{second}" in w for w in texts(at.warning))
    at.button(key="bench_delete_no").click().run()
    assert list(history(at)["run"]) == [second, first]
    # "Yes, delete" deletes it, with its rows; the view of it closes
    at.button(key="bench_delete").click().run()
    at.button(key="bench_delete_yes").click().run()
    assert not at.exception, at.exception
    assert f"Run #{second} deleted, with its requests and memory samples." in texts(at.success)
    assert list(history(at)["run"]) == [first]
    assert f"Run #{second}" not in texts(at.subheader)
    with RunStore(bench_env) as store:
        assert store.get_run(second) is None and store.requests_frame(second).empty
        assert store.get_run(first) is not None


def test_cancel_ends_the_run_as_cancelled_and_keeps_what_it_recorded(bench_env):
    at = bench_page()
    fill_form(at, requests=400, warmup=0)
    at.button(key="bench_start").click().run()
    assert "bench_job" in at.session_state, texts(at.error)
    deadline = time.monotonic() + 30
    while True:  # let a few requests finish, then cancel
        job = at.session_state["bench_job"]
        if job.handle.progress().done >= 4:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    at.run()
    at.button(key="bench_cancel").click().run()
    assert not at.exception, at.exception
    wait_for_end(at)
    run_id = at.session_state["bench_view_run"]
    hist = history(at)
    assert hist[hist["run"] == run_id].iloc[0]["status"].endswith("cancelled")
    with RunStore(bench_env) as store:
        done = len(store.get_requests(run_id))
    assert 4 <= done < 800
    shown = summary(at)
    assert sum(shown["count"]) + sum(shown["failures"]) == done


def test_two_sessions_each_run_and_watch_their_own_run(bench_env, label_image_bytes):
    """Two browser sessions at once, each with its own run (the handle lives in each session's
    state): one sends the bundled samples to both versions, the other an uploaded image to fp8."""
    a, b = bench_page(), bench_page()
    fill_form(a, requests=3, warmup=0)
    b.radio(key="bench_image_kind").set_value("uploaded").run()
    fill_form(b, requests=2, warmup=0)
    b.multiselect(key="bench_versions").set_value(["2"])
    b.file_uploader(key="bench_uploads").set_value(("shelf photo.png", label_image_bytes, "image/png"))
    a.button(key="bench_start").click().run()
    b.button(key="bench_start").click().run()
    assert not a.exception and not b.exception
    assert a.session_state["bench_job"] is not b.session_state["bench_job"]
    wait_for_end(a)
    wait_for_end(b)
    run_a, run_b = a.session_state["bench_view_run"], b.session_state["bench_view_run"]
    assert run_a != run_b
    assert list(summary(a)["version"]) == ["bf16 (v1)", "fp8 (v2)"] and list(summary(a)["count"]) == [3, 3]
    assert list(summary(b)["version"]) == ["fp8 (v2)"] and list(summary(b)["count"]) == [2]
    b.run()
    hist = history(b).set_index("run")
    assert set(hist.index) >= {run_a, run_b}
    assert "uploaded images" in hist.loc[run_b, "workload"] and hist.loc[run_b, "versions"] == "fp8 (v2)"
    with RunStore(bench_env) as store:
        assert {r.image_id for r in store.get_requests(run_b)} == {"shelf photo.png"}
        assert {r.version for r in store.get_requests(run_a)} == {"1", "2"}


def test_a_dead_server_gives_a_clear_error_and_the_page_stays(bench_env, monkeypatch):
    live_url = os.environ["QWEN_TRITON_URL"]
    monkeypatch.setenv("QWEN_TRITON_URL", f"127.0.0.1:{closed_port()}")
    at = bench_page()
    assert any("not reachable" in e for e in texts(at.error)), texts(at.error)
    fill_form(at, requests=2, warmup=0)
    at.button(key="bench_start").click().run()
    assert not at.exception, at.exception
    wait_for_end(at, 60)
    # the run is recorded as failed, and says why; the page is still usable for a new run
    run_id = at.session_state["bench_view_run"]
    errors = texts(at.error)
    assert any(e.startswith(f"Status: failed: ") and "not reachable" in e for e in errors), errors
    hist = history(at)
    failed = hist[hist["run"] == run_id].iloc[0]
    assert failed["status"].endswith("failed") and "not reachable" in failed["reason"]
    assert not at.button(key="bench_start").disabled
    # the server comes back (the sidebar's URL now names the live one): a new run works
    at.sidebar.text_input(key="server_url").set_value(live_url).run()
    fill_form(at, requests=2, warmup=0)
    at.button(key="bench_start").click().run()
    wait_for_end(at)
    assert at.session_state["bench_view_run"] != run_id
    assert list(summary(at)["count"]) == [2, 2]
    assert len(history(at)) == 2


def test_a_server_dying_mid_run_ends_it_partial_and_keeps_what_was_recorded(bench_env, own_triton_server,
                                                                           monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", own_triton_server.http_url)
    at = bench_page()
    fill_form(at, requests=400, warmup=0)
    at.button(key="bench_start").click().run()
    assert "bench_job" in at.session_state, texts(at.error)
    deadline = time.monotonic() + 30
    while at.session_state["bench_job"].handle.progress().done < 4:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    own_triton_server.stop()
    wait_for_end(at, 60)
    assert not at.exception, at.exception
    run_id = at.session_state["bench_view_run"]
    banner = [w for w in texts(at.warning) + texts(at.error) if w.startswith("Status: ")]
    assert banner and banner[0].startswith("Status: partial: the server stopped answering"), banner
    with RunStore(bench_env) as store:
        recorded = store.get_requests(run_id)
        assert store.get_run(run_id).status == "partial"
    ok = [r for r in recorded if r.ok]
    assert len(ok) >= 4 and any(not r.ok for r in recorded)
    shown = summary(at)
    assert sum(shown["count"]) == len(ok) and sum(shown["failures"]) == len(recorded) - len(ok)
    hist = history(at)
    assert hist[hist["run"] == run_id].iloc[0]["status"].endswith("partial")


def test_form_problems_are_shown_before_anything_starts(bench_env):
    at = bench_page()
    at.multiselect(key="bench_versions").set_value([])
    at.button(key="bench_start").click().run()
    assert "Pick at least one version." in texts(at.error)
    at.radio(key="bench_image_kind").set_value("folder").run()
    at.multiselect(key="bench_versions").set_value(["2"])
    at.text_input(key="bench_folder").set_value(str(bench_env / "no such folder"))
    at.button(key="bench_start").click().run()
    assert any("There is no folder" in e for e in texts(at.error)), texts(at.error)
    at.radio(key="bench_image_kind").set_value("uploaded").run()
    at.button(key="bench_start").click().run()
    assert "Upload at least one image, or pick another image set." in texts(at.error)
    assert "bench_job" not in at.session_state
    with RunStore(bench_env) as store:
        assert store.list_runs() == []


def test_a_sweep_in_the_form_is_checked_then_runs_and_shows_its_recommendation(bench_env):
    at = bench_page()
    at.radio(key="bench_mode").set_value("sweep").run()
    assert at.text_input(key="bench_levels").value == "1, 2, 4, 8"
    assert at.number_input(key="bench_e2e_target").value == 2000.0  # the defaults are shown
    at.text_input(key="bench_levels").set_value("1, two")
    at.button(key="bench_start").click().run()
    assert any("must be numbers" in e for e in texts(at.error)), texts(at.error)
    at.text_input(key="bench_levels").set_value("1.5")
    at.button(key="bench_start").click().run()
    assert any("whole numbers of requests in flight" in e for e in texts(at.error)), texts(at.error)
    assert "bench_job" not in at.session_state
    fill_form(at, requests=3)
    at.text_input(key="bench_levels").set_value("2, 1")
    for key in ("bench_ttft_target", "bench_tpot_target", "bench_e2e_target"):
        at.number_input(key=key).set_value(60000.0)
    at.button(key="bench_start").click().run()
    assert "bench_job" in at.session_state and at.session_state["bench_job"].sweep
    wait_for_end(at)
    with RunStore(bench_env) as store:
        run = store.list_runs()[0]
        assert run.config["sweep"]["levels"] == [1, 2] and run.config["sweep"]["targets"]["e2e_ms"] == 60000.0
        assert [lv.value for lv in store.get_levels(run.id)] == [1.0, 1.0, 2.0, 2.0]
    assert any(s.value.startswith("Deploy") for s in at.success) or \
        any(i.value.startswith("No clear winner") for i in at.info)


def test_a_run_of_only_bad_uploads_says_why_it_has_no_charts(bench_env, triton_server):
    """Every uploaded file is unusable: the run fails before its first request. Its view shows no
    empty chart: in place of the memory and latency charts, why there is nothing to draw."""
    from services.bench.runner import BenchmarkConfig, run_benchmark
    from services.client.server_target import current_target
    from services.image_sets.image_set import ImageSetSpec

    spec = ImageSetSpec(kind="uploaded", images=(("notes.txt", b"not an image"), ("empty.png", b"")))
    with RunStore(bench_env) as store:
        outcome = run_benchmark(BenchmarkConfig(versions=("1", "2"), image_set=spec, requests=2, warmup=0),
                                store=store, target=current_target(triton_server.http_url, "http"))
    assert outcome.status == "failed"
    at = bench_page()
    at.selectbox(key="bench_history_pick").set_value(outcome.run_id).run()
    at.button(key="bench_open").click().run()
    assert not at.exception, at.exception
    assert f"Run #{outcome.run_id}" in texts(at.subheader)
    assert not at.get("plotly_chart")  # no empty chart
    infos = texts(at.info)
    assert f"No memory readings to chart: run #{outcome.run_id} failed before any was recorded " \
           f"({outcome.reason})." in infos, infos
    assert any(t.startswith(f"No requests to chart: run #{outcome.run_id} failed") for t in infos), infos
