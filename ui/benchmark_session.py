"""The Benchmark page's state in ``st.session_state``: its keys, starting its run, collecting its end.

The session's own run is a :class:`ui.run_lifecycle.LiveRun` under :data:`JOB`; once it has ended,
the run it recorded becomes the one shown (:data:`VIEW`), or, when it ended before it was
recorded, its status becomes the page's banner (:data:`OUTCOME`).
"""

from __future__ import annotations

import streamlit as st

from services.bench.memory_scope import memory_scope
from services.bench.runner import BenchmarkConfig
from services.bench.sampler import get_shared_sampler
from services.bench.sweep import SweepConfig
from ui import run_lifecycle
from ui.state import Connection

# session-state keys (this page only)
JOB = "bench_job"  # the session's own run: ui.run_lifecycle.LiveRun
VIEW = "bench_view_run"  # the run whose results are shown
OUTCOME = "bench_outcome"  # (banner kind, text) of the session's last finished run
START_ERROR = "bench_start_error"
CONFIRM = "bench_confirm_delete"  # run id waiting for a delete confirmation
NOTICE = "bench_notice"  # (banner kind, text) from a history action
PICK = "bench_history_pick"

STATUS_BANNER = {"completed": "success", "partial": "warning", "failed": "error", "cancelled": "info",
                 "running": "info"}


def collect_ended_run() -> None:
    """If the session's run has ended: show the run it recorded, or say how it ended."""
    ended = run_lifecycle.collect_ended(JOB)
    if ended is None:
        return
    ss = st.session_state
    if ended.run_id is not None:  # its results (status and reason first) are shown below the form
        ss[VIEW] = ended.run_id
        ss.pop(OUTCOME, None)
    else:  # it ended before it was recorded
        ss[OUTCOME] = (STATUS_BANNER.get(ended.status, "error"), ended.sentence("The run"))


def launch(config: BenchmarkConfig | SweepConfig, conn: Connection) -> bool:
    """Start the session's run; True when it is going, else the reason is the page's error."""
    if conn.target is not None:
        # started once per process (the live chart shows memory from before the start), on this
        # server's processes only
        get_shared_sampler(metrics_url=conn.target.metrics_url, version_keys={}, variant_servers=(),
                           **memory_scope(conn.target).sampler_config())  # the run adds its variants' servers
    problem = run_lifecycle.start_run(JOB, config, conn, "The benchmark could not start")
    if problem is not None:
        st.session_state[START_ERROR] = problem
        return False
    st.session_state.pop(OUTCOME, None)
    return True
