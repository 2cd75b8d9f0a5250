"""Tests of services.serving.repo_folder_checks: the repository's folders, model names, version
policies and the transaction policy.

Every test that breaks something copies the real repository into tmp_path (the ``repo`` fixture of
tests/serving/conftest.py), breaks it in one way, and asserts that the checker reports exactly
that mistake, with its path (helpers: tests/serving/repo_copies.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.serving.repo_checker import check_repository
from services.serving.repo_folder_checks import served_versions
from services.serving.repo_layout import ERROR, WARNING
from tests.serving.repo_copies import MODEL, edit_config, kinds


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
