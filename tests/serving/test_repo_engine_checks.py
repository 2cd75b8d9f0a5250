"""Tests of services.serving.repo_engine_checks: each version's model.json (types, quantization,
image tokens) and the custom metrics it must let through.

Every test that breaks something copies the real repository into tmp_path (the ``repo`` fixture of
tests/serving/conftest.py), breaks it in one way, and asserts that the checker reports exactly
that mistake, with its path (helpers: tests/serving/repo_copies.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.serving.repo_checker import check_repository
from services.serving.repo_layout import ERROR, WARNING
from tests.serving.repo_copies import MODEL, drop_args, edit_args, edit_config, kinds, set_args


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
