"""Static checks of a Triton model repository served by the vLLM backend.

``check_repository(path)`` walks a model repository and returns a list of ``Finding``: every
mistake that makes Triton or vLLM refuse the repository, or silently serve less than it holds.
Each ``config.pbtxt`` is parsed with Triton's own ``ModelConfig`` protobuf as shipped in
``tritonclient`` (repo_layout); each version's ``model.json`` (the vLLM engine arguments) is read
as JSON. The checks live by what they look at: repo_folder_checks (folders, config.pbtxt and its
policies), repo_engine_checks (model.json), repo_gpu_checks (GPU memory); this module runs them in
order and holds the command.

Command: ``qwen-check-repo [PATH] [--gpu-memory-gb GB]`` (or ``python -m
services.serving.repo_checker``; PATH defaults to ``model_repository``) prints every finding with
its path and fix, and exits 1 when any of them is an error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from services.serving.repo_engine_checks import (
    check_image_tokens,
    check_metrics,
    check_quantization,
    load_engine_args,
)
from services.serving.repo_folder_checks import (
    check_config_in_version_folders,
    check_has_versions,
    check_hidden_folders,
    check_ignored_version_folders,
    check_model_name,
    check_not_empty,
    check_root,
    check_transaction_policy,
    check_version_policy,
)
from services.serving.repo_gpu_checks import check_gpu_memory_sum, check_weights_fit
from services.serving.repo_layout import (
    ENGINE_ARGS_FILE,
    ERROR,
    Finding,
    RepoModel,
    RepoVersion,
    count_models_and_versions,
    find_model_dirs,
    find_version_dirs,
    load_config,
    rel_path,
)


DEFAULT_REPOSITORY = "model_repository"


def _load_model(root: Path, model_dir: Path) -> tuple[RepoModel, list[Finding]]:
    """Read one model folder and run the per-model and per-version checks."""
    findings = check_config_in_version_folders(root, model_dir)
    findings += check_ignored_version_folders(root, model_dir)
    config, config_findings = load_config(root, model_dir)
    findings += config_findings
    version_dirs = find_version_dirs(model_dir)
    findings += check_has_versions(root, model_dir, version_dirs)
    model = RepoModel(model_dir.name, model_dir, config,
                      {n: RepoVersion(n, p) for n, p in version_dirs.items()})
    if config is not None:
        findings += check_model_name(root, model_dir, config)
        findings += check_version_policy(root, model_dir, config, version_dirs)
        if model.is_vllm:
            findings += check_transaction_policy(root, model_dir, config)
    if config is not None and not model.is_vllm:
        return model, findings  # another backend: model.json means nothing to it
    for number in sorted(model.versions):
        version = model.versions[number]
        args, arg_findings = load_engine_args(root, version.folder, required=model.is_vllm)
        findings += arg_findings
        version.engine_args = args
        if args is not None:
            rel = rel_path(root, version.folder / ENGINE_ARGS_FILE)
            findings += check_quantization(rel, args)
            findings += check_image_tokens(rel, args)
    if model.is_vllm:
        findings += check_metrics(root, model)
    return model, findings


def check_repository(path: str | Path, gpu_memory_gb: float | None = None) -> list[Finding]:
    """Check a Triton model repository for the vLLM backend; return every finding.

    ``gpu_memory_gb`` (the GPU's total memory in GB, 1e9 bytes), when given, adds a warning
    for each version whose share of that memory is below a lower bound of its weights
    (estimated from the parameter count in the model's name).
    """
    root = Path(path)
    findings = check_root(root)
    if findings:
        return findings
    findings += check_hidden_folders(root)
    model_dirs = find_model_dirs(root)
    findings += check_not_empty(root, model_dirs)
    models = []
    for model_dir in model_dirs:
        model, model_findings = _load_model(root, model_dir)
        models.append(model)
        findings += model_findings
    findings += check_gpu_memory_sum(root, models)
    if gpu_memory_gb is not None:
        findings += check_weights_fit(root, models, gpu_memory_gb)
    return findings


def format_finding(finding: Finding) -> str:
    """Two lines: severity, path and message; then the fix."""
    head = f"{finding.severity.upper():7} {finding.path}: {finding.message}"
    return f"{head}\n        fix: {finding.fix}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the findings; exit status 1 when any is an error."""
    parser = argparse.ArgumentParser(
        prog="qwen-check-repo",
        description="Check a Triton model repository served by the vLLM backend.")
    parser.add_argument("path", nargs="?", default=DEFAULT_REPOSITORY,
                        help=f"the model repository (default: {DEFAULT_REPOSITORY})")
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="total memory of the GPU in GB: also check that each version's "
                        "share holds its weights")
    options = parser.parse_args(argv)
    findings = check_repository(options.path, options.gpu_memory_gb)
    for finding in findings:
        print(format_finding(finding))
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    models, versions = count_models_and_versions(options.path)
    if errors:
        print(f"FAILED: {errors} error(s), {warnings} warning(s) in {options.path} "
              f"({models} models, {versions} versions)")
        return 1
    suffix = f" ({warnings} warning(s))" if warnings else ""
    print(f"OK: {models} models, {versions} versions checked in {options.path}{suffix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
