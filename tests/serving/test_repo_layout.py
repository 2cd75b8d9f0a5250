"""Tests of services.serving.repo_layout: a model folder's config.pbtxt, missing or unparseable.

Every test that breaks something copies the real repository into tmp_path (the ``repo`` fixture of
tests/serving/conftest.py), breaks it in one way, and asserts that the checker reports exactly
that mistake, with its path (helpers: tests/serving/repo_copies.py).
"""

from __future__ import annotations

from pathlib import Path

from services.serving.repo_checker import check_repository
from services.serving.repo_layout import ERROR
from tests.serving.repo_copies import MODEL, kinds


def test_model_folder_without_config(repo: Path) -> None:
    (repo / MODEL / "config.pbtxt").unlink()
    assert kinds(check_repository(repo)) == {("missing-config", "qwen", ERROR)}


def test_config_parse_error_carries_protobuf_message(repo: Path) -> None:
    path = repo / MODEL / "config.pbtxt"
    path.write_text(path.read_text() + "\nmax_batch_sise: 0\n")
    findings = check_repository(repo)
    assert kinds(findings) == {("config-parse", "qwen/config.pbtxt", ERROR)}
    assert 'has no field named "max_batch_sise"' in findings[0].message
