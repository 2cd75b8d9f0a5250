"""Fixtures of the serving tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serving.repo_copies import REPOSITORY


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh copy of the real model repository."""
    copy = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, copy)
    return copy
