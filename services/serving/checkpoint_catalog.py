"""Which checkpoint the embedded server serves, and how to describe it to the user.

Order: an explicit folder, then ``QWEN_CHECKPOINT``, then the demo detector bundled in ``models/``
(trained by this project, see its model card), then a tiny random-weight checkpoint built on demand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services.core import settings

BUNDLED_DEMO = settings.PROJECT_ROOT / "models" / "demo-detector"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    kind: str  # "demo detector", "tiny random weights", "external"
    description: str
    parameters: int | None


def resolve(checkpoint: str | Path | None = None) -> Path:
    if checkpoint:
        path = Path(checkpoint).expanduser().resolve()
    elif settings.checkpoint_override():
        path = settings.checkpoint_override()
    elif (BUNDLED_DEMO / "config.json").is_file():
        path = BUNDLED_DEMO
    else:
        from services.serving.checkpoint_builder import ensure_tiny_checkpoint

        path = ensure_tiny_checkpoint()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no config.json)")
    return path


def describe(path: Path) -> CheckpointInfo:
    """Say plainly what a checkpoint folder holds."""
    build_info = _read_json(path / "build_info.json")
    card = path / "MODEL_CARD.md"
    if build_info and build_info.get("trained_by"):
        return CheckpointInfo(path, "demo detector",
                              "a small Qwen2-VL-architecture detector trained by this project on synthetic labels "
                              "(a demo model, not the real fine-tune)", build_info.get("parameters"))
    if build_info:
        return CheckpointInfo(path, "tiny random weights",
                              "a tiny Qwen2-VL-architecture checkpoint with random weights: it runs the whole stack "
                              "but its boxes mean nothing", build_info.get("parameters"))
    config = _read_json(path / "config.json") or {}
    name = config.get("_name_or_path") or path.name
    return CheckpointInfo(path, "external", f"checkpoint folder {name}" + (" (model card present)" if card.exists() else ""),
                          None)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
