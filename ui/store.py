"""The run store as the pages open it: one per script run or callback, in the configured data folder."""

from __future__ import annotations

from services.bench.store import RunStore, default_data_dir


def open_store() -> RunStore:
    """A store for one script run or one callback (closed by the caller, so that no SQLite
    connection outlives the thread that opened it)."""
    return RunStore(default_data_dir())
