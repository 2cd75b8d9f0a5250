"""Tests of services.serving.repo_gpu_checks: the GPU memory shares of the engines on each GPU and,
with the GPU's size given, whether each share holds its weights.

Every test that breaks something copies the real repository into tmp_path (the ``repo`` fixture of
tests/serving/conftest.py), breaks it in one way, and asserts that the checker reports exactly
that mistake, with its path (helpers: tests/serving/repo_copies.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.serving.repo_checker import check_repository
from services.serving.repo_layout import ERROR, WARNING
from tests.serving.repo_copies import drop_args, edit_args, edit_config, kinds, set_args


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
