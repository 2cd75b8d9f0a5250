"""Fixtures of the services.compare tests."""

from __future__ import annotations

import pytest

from services.bench.store import RunStore


@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path) as s:
        yield s
