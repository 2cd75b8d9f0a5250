"""Tests of services.serving.repo_checker against the real model_repository/ and broken copies of it.

Every test that breaks something copies the real repository into tmp_path, breaks it in one
way, and asserts that the checker reports exactly that mistake, with its path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.serving.repo_checker import (
    ERROR,
    WARNING,
    Finding,
    check_repository,
    count_models_and_versions,
    served_versions,
)

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "model_repository"
MODEL = "qwen"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh copy of the real model repository."""
    copy = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, copy)
    return copy


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


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.serving.repo_checker", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- the real repository


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


# --------------------------------------------------------------------------- repository layout


def test_config_inside_version_folder(repo: Path) -> None:
    shutil.copy(repo / MODEL / "config.pbtxt", repo / MODEL / "1" / "config.pbtxt")
    findings = check_repository(repo)
    assert kinds(findings) == {("config-in-version", "qwen/1/config.pbtxt", ERROR)}
    assert "qwen/config.pbtxt" in findings[0].fix


def test_config_only_inside_version_folder_says_move(repo: Path) -> None:
    (repo / MODEL / "config.pbtxt").rename(repo / MODEL / "2" / "config.pbtxt")
    findings = check_repository(repo)
    assert ("config-in-version", "qwen/2/config.pbtxt", ERROR) in kinds(findings)
    assert ("missing-config", "qwen", ERROR) in kinds(findings)
    misplaced = next(f for f in findings if f.check == "config-in-version")
    assert misplaced.fix.startswith("move qwen/2/config.pbtxt to qwen/config.pbtxt")


def test_hidden_folder_at_top_level(repo: Path) -> None:
    (repo / ".cache" / "huggingface" / ".locks").mkdir(parents=True)
    findings = check_repository(repo)
    assert kinds(findings) == {("hidden-folder", ".cache", ERROR)}
    assert "polls" in findings[0].message


def test_hidden_folder_inside_a_version(repo: Path) -> None:
    (repo / MODEL / "1" / ".cache").mkdir()
    assert kinds(check_repository(repo)) == {("hidden-folder", "qwen/1/.cache", WARNING)}


def test_hidden_file_is_not_a_folder(repo: Path) -> None:
    (repo / ".DS_Store").write_text("")
    assert check_repository(repo) == []


def test_empty_repository(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert kinds(check_repository(empty)) == {("empty-repository", ".", ERROR)}


def test_missing_repository(tmp_path: Path) -> None:
    assert kinds(check_repository(tmp_path / "absent")) == {("repository", ".", ERROR)}


def test_model_folder_without_config(repo: Path) -> None:
    (repo / MODEL / "config.pbtxt").unlink()
    assert kinds(check_repository(repo)) == {("missing-config", "qwen", ERROR)}


def test_config_parse_error_carries_protobuf_message(repo: Path) -> None:
    path = repo / MODEL / "config.pbtxt"
    path.write_text(path.read_text() + "\nmax_batch_sise: 0\n")
    findings = check_repository(repo)
    assert kinds(findings) == {("config-parse", "qwen/config.pbtxt", ERROR)}
    assert 'has no field named "max_batch_sise"' in findings[0].message


def test_model_name_mismatch(repo: Path) -> None:
    edit_config(repo, lambda c: setattr(c, "name", "qwen2"))
    assert kinds(check_repository(repo)) == {("model-name", "qwen/config.pbtxt", ERROR)}


def test_model_without_version_folder(repo: Path) -> None:
    shutil.rmtree(repo / MODEL / "1")
    shutil.rmtree(repo / MODEL / "2")
    assert kinds(check_repository(repo)) == {("no-versions", "qwen", ERROR)}


def test_version_folder_with_leading_zero_is_ignored(repo: Path) -> None:
    shutil.copytree(repo / MODEL / "2", repo / MODEL / "03")
    assert kinds(check_repository(repo)) == {("ignored-version-folder", "qwen/03", WARNING)}


# --------------------------------------------------------------------------- version policy


@pytest.mark.parametrize(
    ("policy", "unserved"),
    [
        (None, "1"),
        ("latest { num_versions: 1 }", "1"),
        ("specific { versions: [2] }", "1"),
        ("specific { versions: [1] }", "2"),
    ],
)
def test_version_policy_that_drops_versions(repo: Path, policy: str | None, unserved: str
                                            ) -> None:
    def change(config: model_config_pb2.ModelConfig) -> None:
        config.ClearField("version_policy")
        if policy is not None:
            text_format.Parse(policy, config.version_policy)
    edit_config(repo, change)
    findings = check_repository(repo)
    assert kinds(findings) == {("version-policy", "qwen/config.pbtxt", ERROR)}
    assert f"version(s) {unserved} would silently not be served" in findings[0].message
    assert "all { }" in findings[0].fix


@pytest.mark.parametrize("policy", ["all { }", "latest { num_versions: 2 }",
                                    "specific { versions: [1, 2] }"])
def test_version_policy_that_serves_both(repo: Path, policy: str) -> None:
    def change(config: model_config_pb2.ModelConfig) -> None:
        config.ClearField("version_policy")
        text_format.Parse(policy, config.version_policy)
    edit_config(repo, change)
    assert check_repository(repo) == []


def test_specific_policy_naming_a_missing_version(repo: Path) -> None:
    def change(config: model_config_pb2.ModelConfig) -> None:
        config.ClearField("version_policy")
        config.version_policy.specific.versions.extend([1, 2, 3])
    edit_config(repo, change)
    findings = check_repository(repo)
    assert kinds(findings) == {("version-policy", "qwen/config.pbtxt", ERROR)}
    assert "version(s) 3" in findings[0].message


def test_served_versions_default_is_latest_one() -> None:
    assert served_versions(model_config_pb2.ModelConfig(), [1, 2, 10]) == {10}


# --------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("method", ["gptq", "awq", "gptq_marlin", "awq_marlin", "marlin",
                                    "squeezellm", "aqlm", "compressed-tensors"])
def test_prequantized_method_on_a_bf16_checkpoint(repo: Path, method: str) -> None:
    edit_args(repo, 2, set_args(quantization=method))
    findings = check_repository(repo)
    assert kinds(findings) == {("quantization", "qwen/2/model.json", ERROR)}
    assert f'"{method}"' in findings[0].message
    assert '"fp8"' in findings[0].fix


@pytest.mark.parametrize(("method", "model"), [
    ("gptq", "Qwen/Qwen2-VL-7B-Instruct-GPTQ-Int4"),
    ("awq", "Qwen/Qwen2-VL-7B-Instruct-AWQ"),
    ("gptq_marlin", "someone/qwen2-vl-7b-nutrition-gptq"),
])
def test_prequantized_method_on_a_prequantized_name(repo: Path, method: str, model: str
                                                    ) -> None:
    edit_args(repo, 2, set_args(quantization=method, model=model))
    assert check_repository(repo) == []


def test_prequantized_method_on_local_checkpoints(repo: Path, tmp_path: Path) -> None:
    quantized = tmp_path / "checkpoints" / "nutrition-q"
    plain = tmp_path / "checkpoints" / "nutrition"
    quantized.mkdir(parents=True)
    plain.mkdir()
    (quantized / "config.json").write_text(json.dumps(
        {"model_type": "qwen2_vl", "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    (plain / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    edit_args(repo, 2, set_args(quantization="gptq", model=str(quantized)))
    assert check_repository(repo) == []
    edit_args(repo, 2, set_args(model=str(plain)))
    assert kinds(check_repository(repo)) == {("quantization", "qwen/2/model.json", ERROR)}


def test_prequantized_method_on_an_absent_local_path_warns(repo: Path) -> None:
    edit_args(repo, 2, set_args(quantization="awq", model="/models/nutrition"))
    assert kinds(check_repository(repo)) == {("quantization", "qwen/2/model.json", WARNING)}


def test_bitsandbytes_warns(repo: Path) -> None:
    edit_args(repo, 2, set_args(quantization="bitsandbytes"))
    assert kinds(check_repository(repo)) == {("quantization", "qwen/2/model.json", WARNING)}


# --------------------------------------------------------------------------- GPU memory


@pytest.mark.parametrize(("bf16", "fp8"), [(0.6, 0.4), (0.55, 0.4), (0.5, 0.5), (0.9, 0.9)])
def test_utilizations_summing_to_095_or_more(repo: Path, bf16: float, fp8: float) -> None:
    edit_args(repo, 1, set_args(gpu_memory_utilization=bf16))
    edit_args(repo, 2, set_args(gpu_memory_utilization=fp8))
    findings = check_repository(repo)
    assert kinds(findings) == {("gpu-memory", "qwen", ERROR)}
    assert "GPU 0" in findings[0].message
    assert f"together {bf16 + fp8:.2f}" in findings[0].message
    assert "qwen/1/model.json" in findings[0].fix and "qwen/2/model.json" in findings[0].fix


def test_utilizations_just_below_the_limit(repo: Path) -> None:
    edit_args(repo, 1, set_args(gpu_memory_utilization=0.54))
    edit_args(repo, 2, set_args(gpu_memory_utilization=0.4))
    assert check_repository(repo) == []


def test_missing_utilization_counts_vllm_default(repo: Path) -> None:
    edit_args(repo, 2, drop_args("gpu_memory_utilization"))
    findings = check_repository(repo)
    assert kinds(findings) == {("gpu-memory", "qwen", ERROR)}
    assert "qwen/2 (0.90, vLLM's default" in findings[0].message
    assert "together 1.40" in findings[0].message


def test_two_instances_per_version_double_the_claim(repo: Path) -> None:
    edit_config(repo, lambda c: setattr(c.instance_group[0], "count", 2))
    edit_args(repo, 1, set_args(gpu_memory_utilization=0.25))
    edit_args(repo, 2, set_args(gpu_memory_utilization=0.25))
    findings = check_repository(repo)
    assert kinds(findings) == {("gpu-memory", "qwen", ERROR)}
    assert "together 1.00" in findings[0].message


def test_versions_on_unlisted_gpus_share_every_gpu(repo: Path) -> None:
    edit_config(repo, lambda c: c.ClearField("instance_group"))
    edit_args(repo, 1, set_args(gpu_memory_utilization=0.6))
    findings = check_repository(repo)
    assert kinds(findings) == {("gpu-memory", "qwen", ERROR)}
    assert "every GPU" in findings[0].message


def test_unserved_version_takes_no_memory(repo: Path) -> None:
    edit_config(repo, lambda c: c.ClearField("version_policy"))
    edit_args(repo, 1, set_args(gpu_memory_utilization=0.9))
    assert kinds(check_repository(repo)) == {("version-policy", "qwen/config.pbtxt", ERROR)}


def test_share_below_the_weights_with_gpu_memory(repo: Path) -> None:
    findings = check_repository(repo, gpu_memory_gb=24)
    assert kinds(findings) == {("weights-fit", "qwen/1/model.json", WARNING)}
    assert "7B parameters in bfloat16" in findings[0].message


# --------------------------------------------------------------------------- model.json


@pytest.mark.parametrize("text", [
    '{"model": "x", "dtype": "bfloat16",}',
    '{"model": "x"  // the fine-tune\n}',
    "",
])
def test_model_json_that_is_not_json(repo: Path, text: str) -> None:
    (repo / MODEL / "1" / "model.json").write_text(text)
    findings = check_repository(repo)
    assert kinds(findings) == {("model-json", "qwen/1/model.json", ERROR)}
    assert "not valid JSON" in findings[0].message


@pytest.mark.parametrize("value", [["model", "x"], "x", 3])
def test_model_json_that_is_not_an_object(repo: Path, value: Any) -> None:
    (repo / MODEL / "1" / "model.json").write_text(json.dumps(value))
    findings = check_repository(repo)
    assert kinds(findings) == {("model-json", "qwen/1/model.json", ERROR)}
    assert "not an object" in findings[0].message


def test_model_json_without_model(repo: Path) -> None:
    edit_args(repo, 1, drop_args("model"))
    findings = check_repository(repo)
    assert kinds(findings) == {("model-json", "qwen/1/model.json", ERROR)}
    assert 'no "model"' in findings[0].message


@pytest.mark.parametrize("value", ["0.5", 0, -0.2, 1.5, True, None])
def test_bad_gpu_memory_utilization(repo: Path, value: Any) -> None:
    edit_args(repo, 2, set_args(gpu_memory_utilization=value))
    findings = check_repository(repo)
    assert kinds(findings) == {("model-json", "qwen/2/model.json", ERROR)}
    assert "gpu_memory_utilization" in findings[0].message


@pytest.mark.parametrize("value", [0, -4096, 4096.0, "4096", True])
def test_bad_max_model_len(repo: Path, value: Any) -> None:
    edit_args(repo, 1, set_args(max_model_len=value))
    findings = check_repository(repo)
    assert kinds(findings) == {("model-json", "qwen/1/model.json", ERROR)}
    assert "max_model_len" in findings[0].message


def test_version_folder_without_model_json(repo: Path) -> None:
    (repo / MODEL / "1" / "model.json").unlink()
    findings = check_repository(repo)
    assert kinds(findings) == {("missing-model-json", "qwen/1", ERROR)}


def test_model_json_at_model_level_only(repo: Path) -> None:
    (repo / MODEL / "1" / "model.json").rename(repo / MODEL / "model.json")
    findings = check_repository(repo)
    assert kinds(findings) == {("missing-model-json", "qwen/1", ERROR)}
    assert findings[0].fix.startswith("move qwen/model.json into qwen/1/")


def test_other_backend_needs_no_model_json(repo: Path) -> None:
    (repo / MODEL / "1" / "model.json").unlink()
    (repo / MODEL / "2" / "model.json").unlink()
    edit_config(repo, lambda c: setattr(c, "backend", "python"))
    assert check_repository(repo) == []


def test_image_bound_above_max_model_len(repo: Path) -> None:
    edit_args(repo, 1, set_args(mm_processor_kwargs={"max_pixels": 12845056}))
    findings = check_repository(repo)
    assert kinds(findings) == {("image-tokens", "qwen/1/model.json", ERROR)}
    assert "16384 visual tokens" in findings[0].message


def test_image_model_without_max_pixels(repo: Path) -> None:
    edit_args(repo, 2, drop_args("mm_processor_kwargs"))
    assert kinds(check_repository(repo)) == {("image-tokens", "qwen/2/model.json", WARNING)}


# --------------------------------------------------------------------------- policies and metrics


def test_missing_transaction_policy_warns(repo: Path) -> None:
    edit_config(repo, lambda c: c.ClearField("model_transaction_policy"))
    assert kinds(check_repository(repo)) == {
        ("transaction-policy", "qwen/config.pbtxt", WARNING)}


def test_non_decoupled_transaction_policy_fails(repo: Path) -> None:
    edit_config(repo, lambda c: setattr(c.model_transaction_policy, "decoupled", False))
    assert kinds(check_repository(repo)) == {("transaction-policy", "qwen/config.pbtxt", ERROR)}


def test_triton_batching_warns(repo: Path) -> None:
    edit_config(repo, lambda c: setattr(c, "max_batch_size", 8))
    assert kinds(check_repository(repo)) == {("batching", "qwen/config.pbtxt", WARNING)}


def test_metrics_on_but_stats_disabled(repo: Path) -> None:
    edit_args(repo, 1, set_args(disable_log_stats=True))
    findings = check_repository(repo)
    assert kinds(findings) == {("metrics", "qwen/1/model.json", WARNING)}
    assert "will not reach the metrics port" in findings[0].message


def test_metrics_on_but_stats_left_to_default(repo: Path) -> None:
    edit_args(repo, 1, drop_args("disable_log_stats"))
    edit_args(repo, 2, drop_args("disable_log_stats"))
    assert kinds(check_repository(repo)) == {("metrics", "qwen/1/model.json", WARNING),
                                             ("metrics", "qwen/2/model.json", WARNING)}


def test_metrics_off_needs_no_stats(repo: Path) -> None:
    edit_config(repo, lambda c: c.parameters.pop("REPORT_CUSTOM_METRICS"))
    edit_args(repo, 1, set_args(disable_log_stats=True))
    assert check_repository(repo) == []


def test_metrics_parameter_the_backend_reads_as_off(repo: Path) -> None:
    edit_config(repo, lambda c: setattr(c.parameters["REPORT_CUSTOM_METRICS"],
                                        "string_value", "yes"))
    assert kinds(check_repository(repo)) == {("metrics", "qwen/config.pbtxt", WARNING)}


def test_stats_flag_as_string(repo: Path) -> None:
    edit_args(repo, 1, set_args(disable_log_stats="false"))
    findings = check_repository(repo)
    assert ("model-json", "qwen/1/model.json", ERROR) in kinds(findings)


# --------------------------------------------------------------------------- command


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
