"""AppTest tests of ``ui.run_lifecycle``: a background run started from a page, its progress
drawn by the live fragment, cancelled, collected once it has ended, and the runs that fail.

A small page of its own (:func:`lifecycle_page`) drives the module as the Benchmark and Compare
pages do; runs are real, against the test server's tiny model, recorded in the test's own data
folder (``QWEN_DATA_DIR``); the server URL goes in ``QWEN_TRITON_URL`` as a user would set it.
"""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from services.bench.runner import BenchmarkConfig
from services.image_sets.image_set import ImageSetSpec
from services.bench.store import RunStore
from ui.run_lifecycle import LiveRun, RunEnd
from tests.ports import closed_port

pytestmark = pytest.mark.timeout(300)

KEY = "lifecycle_job"
RUN_WAIT_S = 90


def lifecycle_page() -> None:
    """A page that starts the run of ``st.session_state["config"]`` and watches it."""
    import streamlit as st

    from ui import run_lifecycle
    from ui.state import current_connection

    key = "lifecycle_job"
    conn = current_connection()
    ended = run_lifecycle.collect_ended(key)
    if ended is not None:
        st.session_state["ended"] = ended
    if st.button("Start", key="start"):
        problem = run_lifecycle.start_run(key, st.session_state["config"], conn, "The test run could not start")
        if problem is not None:
            st.error(problem)

    def draw(live, p) -> None:
        st.progress(min(1.0, p.fraction), text=f"{p.status}: {p.done} of {p.total}")
        if st.button("Cancel", key="cancel"):
            run_lifecycle.cancel_run(live)

    run_lifecycle.live_fragment(key, draw)


def config(requests: int = 4, versions: tuple[str, ...] = ("1", "2")) -> BenchmarkConfig:
    return BenchmarkConfig(versions=versions, image_set=ImageSetSpec(kind="generated", seed=3, count=2, max_side=160),
                           requests=requests, warmup=0, max_tokens=3, timeout_s=60.0)


def started(cfg: BenchmarkConfig) -> AppTest:
    at = AppTest.from_function(lifecycle_page, default_timeout=60)
    at.session_state["config"] = cfg
    at.run()
    at.button(key="start").click().run()
    assert not at.exception, at.exception
    return at


def progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def wait_for_end(at: AppTest, timeout_s: float = RUN_WAIT_S) -> RunEnd:
    """Rerun the page (as the live fragment's rerun would) until the run has been collected."""
    deadline = time.monotonic() + timeout_s
    while KEY in at.session_state:
        assert time.monotonic() < deadline, "the run did not end in time"
        time.sleep(0.3)
        at.run()
        assert not at.exception, at.exception
    return at.session_state["ended"]


def test_a_run_starts_shows_its_progress_and_is_collected_when_it_ends(bench_env):
    at = started(config())
    live = at.session_state[KEY]
    assert isinstance(live, LiveRun) and live.versions == ("1", "2") and not live.cancel_requested
    (text,) = progress_texts(at)  # drawn by the fragment in the same script run
    assert text.endswith(" of 8"), text
    assert not at.error
    ended = wait_for_end(at)
    assert ended == RunEnd("completed", None, ended.run_id, ("1", "2"))
    assert ended.run_id is not None and live.run_id == ended.run_id
    assert ended.sentence("The run") == "The run completed"
    assert live.store._conns == []  # the run's store was released when it was collected
    assert progress_texts(at) == []  # no run: the fragment draws nothing
    with RunStore(bench_env) as store:
        run = store.get_run(ended.run_id)
        assert run.status == "completed" and len(store.get_requests(ended.run_id)) == 8


def test_a_cancelled_run_ends_cancelled(bench_env):
    at = started(config(requests=400))
    deadline = time.monotonic() + 30
    while at.session_state[KEY].handle.progress().done < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    at.run()
    live = at.session_state[KEY]
    at.button(key="cancel").click().run()
    assert live.cancel_requested
    ended = wait_for_end(at)
    assert ended.status == "cancelled" and (ended.reason or "").startswith("cancelled by the user after ")
    with RunStore(bench_env) as store:
        assert 2 <= len(store.get_requests(ended.run_id)) < 800


def test_a_run_against_a_dead_server_ends_failed_with_the_reason(bench_env, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", f"127.0.0.1:{closed_port()}")
    at = started(config(requests=2))
    ended = wait_for_end(at, 60)
    assert ended.status == "failed" and ended.run_id is not None
    assert "not reachable" in (ended.reason or ""), ended.reason
    assert ended.sentence("The run").startswith("The run failed: ")
    with RunStore(bench_env) as store:
        assert store.get_run(ended.run_id).status == "failed"


def test_a_run_the_runner_refuses_does_not_start_and_says_why(bench_env):
    at = started(config(requests=0))
    (error,) = [e.value for e in at.error]
    assert error.startswith("The test run could not start: ValueError: "), error
    assert KEY not in at.session_state and "ended" not in at.session_state
    with RunStore(bench_env) as store:
        assert store.list_runs() == []


def test_without_a_server_no_run_starts_and_the_connection_error_is_given(bench_env, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", "ftp://127.0.0.1:21")
    at = started(config())
    (error,) = [e.value for e in at.error]
    assert error.startswith("The server URL 'ftp://127.0.0.1:21' is not usable:"), error
    assert KEY not in at.session_state
