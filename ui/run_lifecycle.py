"""A benchmark run started from a page and watched across reruns: start, progress, cancel, end.

The Benchmark page (a run of one or both versions) and the Compare page (a fresh paired run) both
start a run of ``services.bench.runner`` in a background thread and watch it here. The run's
:class:`LiveRun` lives in ``st.session_state`` under a key the page chooses (never in a module
global), so each browser session runs and watches its own run. While it goes,
:func:`live_fragment` redraws the page's progress about once a second without rerunning the page;
when the run has ended it reruns the whole page once, whose first step, :func:`collect_ended`,
takes the run out of the session, releases its store and says how it ended (:class:`RunEnd`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import streamlit as st

from services.bench.runner import BenchmarkConfig, BenchmarkHandle, BenchmarkProgress, start_benchmark
from services.bench.store import FINAL_STATUSES, RunStore
from services.bench.sweep import SweepConfig, start_sweep
from ui.state import Connection, with_variants
from ui.store import open_store

LIVE_REFRESH_S = 1.0  # the live fragment's period
FINISH_WAIT_S = 10.0  # how long collecting an ended run waits for its outcome


@dataclass
class LiveRun:
    """A session's running benchmark: its handle, its own store, and when it started."""

    handle: BenchmarkHandle
    store: RunStore  # given to the run; closed when it has ended
    t_start: float  # time.perf_counter() just before the start
    versions: tuple[str, ...]
    cancel_requested: bool = False
    run_id: int | None = None  # known once the run is recorded
    sweep: bool = False  # a sweep over load levels (services.bench.sweep)


@dataclass(frozen=True)
class RunEnd:
    """How a session's run ended. ``run_id`` is None when it ended before it was recorded."""

    status: str  # one of services.bench.store.FINAL_STATUSES
    reason: str | None
    run_id: int | None
    versions: tuple[str, ...]

    def sentence(self, subject: str) -> str:
        """E.g. ``"The run failed: <reason>"`` for the subject ``"The run"``."""
        return f"{subject} {self.status}" + (f": {self.reason}" if self.reason else "")


def current_run(key: str) -> LiveRun | None:
    """The session's run kept under ``key``, while it goes."""
    return st.session_state.get(key)


def start_run(key: str, config: BenchmarkConfig | SweepConfig, conn: Connection, failure: str) -> str | None:
    """Start a run of ``config`` on the session's server and keep it under ``key``.

    Returns None once it is going, else why it did not start (no server; ``failure`` followed by
    the exception when the runner refuses it): shown by the page, never raised into it.
    """
    if conn.target is None:
        return conn.error or "No server: see the sidebar."
    store = open_store()
    t_start = time.perf_counter()
    try:
        config = with_variants(config, conn)  # the sidebar's OpenAI variants, where chosen
        if isinstance(config, SweepConfig):
            handle = start_sweep(config, store=store, target=conn.target)
        else:
            handle = start_benchmark(config, store=store, target=conn.target)
    except Exception as exc:  # noqa: BLE001 - any failure to start is shown, never raised into the page
        store.close()
        return f"{failure}: {type(exc).__name__}: {exc}"
    st.session_state[key] = LiveRun(handle=handle, store=store, t_start=t_start, versions=tuple(config.versions),
                                    sweep=isinstance(config, SweepConfig))
    return None


def read_progress(live: LiveRun) -> BenchmarkProgress:
    """The run's progress; a handle that cannot tell counts as a failed run (shown, not raised)."""
    try:
        progress = live.handle.progress()
    except Exception as exc:  # noqa: BLE001 - the page shows it and ends the run's view
        return BenchmarkProgress(live.run_id, "failed", 0, 0, 0, f"The run's progress could not be read: {exc}")
    if progress.run_id is not None:
        live.run_id = progress.run_id
    return progress


def cancel_run(live: LiveRun) -> None:
    """Stop sending: requests in flight finish and are recorded; the run ends "cancelled"."""
    live.cancel_requested = True
    live.handle.cancel()


def _finish(key: str, live: LiveRun, progress: BenchmarkProgress) -> RunEnd:
    """Take the ended run out of the session, release its store, and say how it ended."""
    outcome, problem = None, None
    try:
        outcome = live.handle.wait(FINISH_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - shown with the run's status
        problem = f"{type(exc).__name__}: {exc}"
    st.session_state.pop(key, None)
    try:
        live.store.close()
    except Exception:  # noqa: BLE001 - closing the store of a run that is over cannot hurt the page
        pass
    # without an outcome (the run's thread has not handed it over in time), its last progress tells
    status = outcome.status if outcome is not None else progress.status
    reason = (outcome.reason if outcome is not None else None) or progress.reason or progress.last_error or problem
    ids = (outcome.run_id if outcome is not None else None, progress.run_id, live.run_id)
    return RunEnd(status, reason, next((i for i in ids if i is not None), None), live.versions)


def collect_ended(key: str) -> RunEnd | None:
    """If the session's run under ``key`` has ended: take it out of the session and say how it
    ended (see :class:`RunEnd`); None while it goes, or when there is none."""
    live = current_run(key)
    if live is None:
        return None
    progress = read_progress(live)
    if progress.status not in FINAL_STATUSES:
        return None
    return _finish(key, live, progress)


@st.fragment(run_every=LIVE_REFRESH_S)
def live_fragment(key: str, draw: Callable[[LiveRun, BenchmarkProgress], None]) -> None:
    """Redraw the run's progress with ``draw`` about once a second; once the run has ended,
    rerun the whole page (which collects it, see :func:`collect_ended`)."""
    live = current_run(key)
    if live is None:
        return
    progress = read_progress(live)
    if progress.status in FINAL_STATUSES:
        st.rerun()  # the whole page
    draw(live, progress)
