"""load_stalled_s: when every version's engine reported ready and Triton still has not finished loading.

Unit tests on engine_report.json files as the vLLM model writes them; the stall itself (a Triton
Python-backend launcher waiting on a stub that does not exit) cannot be caused on purpose.
"""
from __future__ import annotations

import json
import os
import time

from services.serving.embedded_triton import load_stalled_s


def _report(repo, version: str, **fields) -> None:
    d = repo / "qwen" / version
    d.mkdir(parents=True, exist_ok=True)
    (d / "engine_report.json").write_text(json.dumps(fields))


def test_no_stall_while_a_version_is_loading_failed_or_reports_no_readiness(tmp_path):
    repo = tmp_path / "model_repository"
    (repo / "qwen" / "1").mkdir(parents=True)
    (repo / "qwen" / "2").mkdir(parents=True)
    assert load_stalled_s(repo) is None  # nothing written yet
    _report(repo, "1", ready=True)
    assert load_stalled_s(repo) is None  # version 2 still loading
    _report(repo, "2", ready=False, error="boom")
    assert load_stalled_s(repo) is None  # a failed version: the normal timeout and its reason
    _report(repo, "2", engine="transformers")
    assert load_stalled_s(repo) is None  # the transformers model states no readiness


def test_the_stall_counts_from_the_last_ready_report(tmp_path):
    repo = tmp_path / "model_repository"
    _report(repo, "1", ready=True)
    _report(repo, "2", ready=True)
    old = time.time() - 300
    os.utime(repo / "qwen" / "1" / "engine_report.json", (old, old))
    os.utime(repo / "qwen" / "2" / "engine_report.json", (old + 100, old + 100))
    assert 195 < load_stalled_s(repo) < 210
