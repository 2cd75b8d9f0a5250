"""Tests of services.serving.repo_checker: the real model_repository/ passes every check, and the
command (its output and exit status) on the real repository and broken copies of it.

Every test that breaks something copies the real repository into tmp_path (the ``repo`` fixture of
tests/serving/conftest.py), breaks it in one way, and asserts that the checker reports exactly
that mistake, with its path (helpers: tests/serving/repo_copies.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from services.serving.repo_checker import check_repository
from services.serving.repo_layout import count_models_and_versions
from tests.serving.repo_copies import MODEL, REPOSITORY, edit_args, read_args, read_config, set_args

ROOT = Path(__file__).resolve().parents[2]


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.serving.repo_checker", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_real_repository_is_clean() -> None:
    assert check_repository(REPOSITORY) == []


def test_real_repository_fits_a_48_gb_gpu() -> None:
    assert check_repository(REPOSITORY, gpu_memory_gb=48) == []


def test_real_repository_contents() -> None:
    config = read_config(REPOSITORY)
    assert config.name == MODEL
    assert config.backend == "vllm"
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert len(config.instance_group) == 1
    group = config.instance_group[0]
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert group.count == 1 and list(group.gpus) == [0]
    assert config.parameters["REPORT_CUSTOM_METRICS"].string_value == "true"
    bf16, fp8 = read_args(REPOSITORY, 1), read_args(REPOSITORY, 2)
    assert bf16["model"] == fp8["model"] == "kulsoom-abdullah/qwen2-7b-nutrition-labels-detection"
    assert bf16["dtype"] == "bfloat16" and "quantization" not in bf16
    assert fp8["quantization"] == "fp8"
    for args in (bf16, fp8):
        assert args["max_model_len"] == 4096
        assert args["disable_log_stats"] is False
        assert args["limit_mm_per_prompt"] == {"image": 1}
        assert args["mm_processor_kwargs"]["max_pixels"] // (28 * 28) < args["max_model_len"]
    assert bf16["gpu_memory_utilization"] + fp8["gpu_memory_utilization"] < 0.95
    assert bf16["gpu_memory_utilization"] > fp8["gpu_memory_utilization"]
    assert not any(p.name.startswith(".") for p in REPOSITORY.rglob("*"))
    assert not list(REPOSITORY.glob("*/[0-9]*/config.pbtxt"))
    assert count_models_and_versions(REPOSITORY) == (1, 2)


def test_command_on_the_real_repository() -> None:
    result = run_command()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 1 models, 2 versions checked" in result.stdout


def test_command_exits_1_on_an_error(repo: Path) -> None:
    (repo / ".cache").mkdir()
    result = run_command(str(repo))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ERROR   .cache: hidden folder .cache/" in result.stdout
    assert "fix: remove .cache/" in result.stdout
    assert "OK:" not in result.stdout


def test_command_exits_0_on_warnings_only(repo: Path) -> None:
    edit_args(repo, 1, set_args(disable_log_stats=True))
    result = run_command(str(repo))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING qwen/1/model.json" in result.stdout
    assert "OK: 1 models, 2 versions checked" in result.stdout


def test_command_with_gpu_memory(repo: Path) -> None:
    result = run_command(str(repo), "--gpu-memory-gb", "24")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING qwen/1/model.json" in result.stdout


def test_command_on_a_missing_path(tmp_path: Path) -> None:
    result = run_command(str(tmp_path / "absent"))
    assert result.returncode == 1
    assert "does not exist" in result.stdout
