"""Helpers of the repository checker's tests: the real model_repository/ and ways to break a copy of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.serving.repo_layout import Finding

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MODEL = "qwen"


def kinds(findings: list[Finding]) -> set[tuple[str, str, str]]:
    """(check, path, severity) of each finding: what a test compares exactly."""
    return {(f.check, f.path, f.severity) for f in findings}


def read_config(repo: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repo / MODEL / "config.pbtxt").read_text(),
                             model_config_pb2.ModelConfig())


def edit_config(repo: Path, change: Callable[[model_config_pb2.ModelConfig], None]) -> None:
    """Parse qwen/config.pbtxt, apply ``change``, write it back."""
    config = read_config(repo)
    change(config)
    (repo / MODEL / "config.pbtxt").write_text(text_format.MessageToString(config))


def read_args(repo: Path, version: int) -> dict[str, Any]:
    return json.loads((repo / MODEL / str(version) / "model.json").read_text())


def edit_args(repo: Path, version: int, change: Callable[[dict[str, Any]], None]) -> None:
    """Load qwen/<version>/model.json, apply ``change``, write it back."""
    args = read_args(repo, version)
    change(args)
    (repo / MODEL / str(version) / "model.json").write_text(json.dumps(args, indent=2))


def set_args(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda args: args.update(values)


def drop_args(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(args: dict[str, Any]) -> None:
        for key in keys:
            args.pop(key, None)
    return change
