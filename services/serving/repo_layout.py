"""What the repository checker reads and reports: a ``Finding``, the folders Triton sees in a model
repository, and each model's ``config.pbtxt`` parsed with Triton's own ``ModelConfig`` protobuf (as
shipped in ``tritonclient``).

``RepoModel`` / ``RepoVersion`` hold a model folder as the checks see it: its parsed config and
each version folder with its engine arguments (``model.json``, read in repo_engine_checks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2


ERROR = "error"
WARNING = "warning"
CONFIG_FILE = "config.pbtxt"
ENGINE_ARGS_FILE = "model.json"  # the file the vLLM backend reads from each version folder
VLLM_BACKEND = "vllm"


@dataclass(frozen=True)
class Finding:
    """One problem in a model repository.

    ``path`` is relative to the repository root ("." for the root itself); ``check`` names the
    rule that found it (for example "hidden-folder"), so callers can filter findings.
    """

    severity: str  # "error" | "warning"
    path: str
    message: str
    fix: str
    check: str = ""


@dataclass
class RepoVersion:
    """A version folder and its engine arguments (None when model.json is absent or unusable)."""

    number: int
    folder: Path
    engine_args: dict[str, Any] | None = None


@dataclass
class RepoModel:
    """A model folder, its parsed config (None when absent or unparseable) and its versions."""

    name: str
    folder: Path
    config: model_config_pb2.ModelConfig | None
    versions: dict[int, RepoVersion]

    @property
    def is_vllm(self) -> bool:
        return self.config is not None and self.config.backend == VLLM_BACKEND


def rel_path(root: Path, path: Path) -> str:
    """``path`` relative to the repository root, in POSIX form ("." for the root)."""
    rel = path.relative_to(root).as_posix()
    return rel if rel else "."


def error_finding(path: str, message: str, fix: str, check: str) -> Finding:
    return Finding(ERROR, path, message, fix, check)


def warning_finding(path: str, message: str, fix: str, check: str) -> Finding:
    return Finding(WARNING, path, message, fix, check)


def is_number(value: Any) -> bool:
    """True for JSON numbers (int or float), false for booleans."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def join_versions(versions: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(versions))


def find_model_dirs(root: Path) -> list[Path]:
    """Top-level folders Triton treats as models (hidden ones are reported separately)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_version_dirs(model_dir: Path) -> dict[int, Path]:
    """Version folders Triton loads: numeric names not starting with 0."""
    return {
        int(p.name): p
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")
    }


def count_models_and_versions(path: str | Path) -> tuple[int, int]:
    """Number of model folders and of version folders Triton would see in the repository."""
    root = Path(path)
    if not root.is_dir():
        return 0, 0
    models = find_model_dirs(root)
    return len(models), sum(len(find_version_dirs(m)) for m in models)


def load_config(
    root: Path, model_dir: Path
) -> tuple[model_config_pb2.ModelConfig | None, list[Finding]]:
    """Parse the model's config.pbtxt with Triton's ModelConfig protobuf."""
    path = model_dir / CONFIG_FILE
    rel_dir = rel_path(root, model_dir)
    if not path.is_file():
        return None, [error_finding(
            rel_dir, f"model folder {rel_dir}/ has no {CONFIG_FILE}: Triton cannot load it",
            f"add {rel_dir}/{CONFIG_FILE} (backend \"vllm\", version_policy, instance_group), "
            f"or remove {rel_dir}/ if it is not a model", "missing-config")]
    rel = rel_path(root, path)
    try:
        text = path.read_text(encoding="utf-8")
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        return None, [error_finding(
            rel, f"{rel} is not a valid Triton model configuration: {exc}",
            f"correct line {exc.GetLine()} of {rel} (protobuf text format of "
            "inference.ModelConfig)", "config-parse")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [error_finding(rel, f"{rel} cannot be read: {exc}",
                                    f"make {rel} a readable UTF-8 text file", "config-parse")]
    return config, []
