"""Fixtures of the page tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def bench_env(triton_server, monkeypatch, tmp_path):
    """The test server's URL in ``QWEN_TRITON_URL`` (as a user would set it) and the test's own data
    folder (``QWEN_DATA_DIR``, returned): runs started from a page are recorded there."""
    monkeypatch.setenv("QWEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    monkeypatch.delenv("QWEN_TRITON_PROTOCOL", raising=False)
    return tmp_path
