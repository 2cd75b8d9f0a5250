"""The repository checker's checks of the folders and of each model's ``config.pbtxt``.

The repository itself (present, not empty, no hidden folders Triton would take for models), each
model folder (a config at model level only, version folders Triton loads, a name matching the
folder) and the policies its config sets: which versions the version policy serves
(``served_versions``) and the decoupled transaction policy the vLLM backend needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from services.serving.repo_layout import (
    CONFIG_FILE,
    ENGINE_ARGS_FILE,
    Finding,
    error_finding,
    join_versions,
    rel_path,
    warning_finding,
)


def check_root(root: Path) -> list[Finding]:
    """The repository must be an existing folder."""
    if not root.exists():
        return [error_finding(".", f"the model repository {root} does not exist",
                              "pass the folder given to tritonserver --model-repository", "repository")]
    if not root.is_dir():
        return [error_finding(".", f"the model repository {root} is not a folder",
                              "pass the folder given to tritonserver --model-repository", "repository")]
    return []


def check_not_empty(root: Path, model_dirs: Sequence[Path]) -> list[Finding]:
    """A repository without model folders serves nothing."""
    if model_dirs:
        return []
    return [error_finding(".", "the repository holds no model folder: Triton would serve nothing",
                          f"add a model folder, e.g. qwen/ with {CONFIG_FILE} and 1/{ENGINE_ARGS_FILE}",
                          "empty-repository")]


def check_hidden_folders(root: Path) -> list[Finding]:
    """Hidden folders (".cache", ".git", ...) anywhere in the repository.

    At the top level Triton polls them as models and fails to load them; deeper down Triton
    ignores them, but they are caches or clutter that do not belong in a model repository.
    """
    findings: list[Finding] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for child in sorted(folder.iterdir()):
            if not child.is_dir() or child.is_symlink():
                continue
            if not child.name.startswith("."):
                stack.append(child)
                continue
            rel = rel_path(root, child)
            fix = (f"remove {rel}/ from the repository; keep caches outside it "
                   "(e.g. HF_HOME=/root/.cache/huggingface outside the model repository)")
            if folder == root:
                findings.append(error_finding(
                    rel, f"hidden folder {rel}/ at the top of the repository: Triton polls "
                    "every top-level folder as a model and fails on this one", fix,
                    "hidden-folder"))
            else:
                findings.append(warning_finding(
                    rel, f"hidden folder {rel}/ inside the repository (a cache or tool "
                    "folder): it does not belong in a model repository", fix, "hidden-folder"))
    return findings


def check_config_in_version_folders(root: Path, model_dir: Path) -> list[Finding]:
    """A config.pbtxt belongs at the model level, never inside a version folder."""
    findings = []
    model_config = model_dir / CONFIG_FILE
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        misplaced = folder / CONFIG_FILE
        if not misplaced.exists():
            continue
        rel = rel_path(root, misplaced)
        target = rel_path(root, model_config)
        if model_config.exists():
            fix = f"delete {rel}; the model's only {CONFIG_FILE} is {target}"
        else:
            fix = f"move {rel} to {target}"
        findings.append(error_finding(
            rel, f"{rel} sits inside version folder {folder.name}: Triton reads "
            f"{CONFIG_FILE} only at the model level, one per model", fix, "config-in-version"))
    return findings


def check_ignored_version_folders(root: Path, model_dir: Path) -> list[Finding]:
    """Numeric folders starting with 0 ("0", "01") are not versions for Triton."""
    findings = []
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        if folder.name.startswith("0"):
            rel = rel_path(root, folder)
            findings.append(warning_finding(
                rel, f"folder {rel}/ is ignored by Triton: version numbers start at 1 and "
                "folder names starting with 0 are skipped",
                f"rename {rel}/ to a version number without leading zero, e.g. "
                f"{int(folder.name) or 1}", "ignored-version-folder"))
    return findings


def check_model_name(root: Path, model_dir: Path, config: model_config_pb2.ModelConfig
                     ) -> list[Finding]:
    """A name set in config.pbtxt must equal the folder name."""
    if not config.name or config.name == model_dir.name:
        return []
    rel = rel_path(root, model_dir / CONFIG_FILE)
    return [error_finding(
        rel, f"{rel} names the model \"{config.name}\" but its folder is "
        f"\"{model_dir.name}\": Triton refuses the mismatch",
        f"set name: \"{model_dir.name}\" in {rel}, or rename the folder", "model-name")]


def check_has_versions(root: Path, model_dir: Path, versions: dict[int, Path]
                       ) -> list[Finding]:
    """A model needs at least one version folder."""
    if versions:
        return []
    rel = rel_path(root, model_dir)
    return [error_finding(
        rel, f"model folder {rel}/ has no version folder (1/, 2/, ...): nothing to load",
        f"create {rel}/1/ holding {ENGINE_ARGS_FILE}", "no-versions")]


def served_versions(config: model_config_pb2.ModelConfig, available: Iterable[int]) -> set[int]:
    """The versions Triton loads under the config's version_policy (default: latest 1)."""
    ordered = sorted(available)
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if choice is None:
        return set(ordered[-1:])
    if choice == "all":
        return set(ordered)
    if choice == "latest":
        count = policy.latest.num_versions
        return set(ordered[-count:]) if count > 0 else set()
    return set(ordered) & set(policy.specific.versions)


def _describe_policy(config: model_config_pb2.ModelConfig) -> str:
    """The version_policy in words, for messages."""
    if not config.HasField("version_policy"):
        return "no version_policy, so Triton's default latest { num_versions: 1 }"
    choice = config.version_policy.WhichOneof("policy_choice")
    if choice == "latest":
        count = config.version_policy.latest.num_versions
        return f"version_policy latest {{ num_versions: {count} }}"
    if choice == "specific":
        listed = join_versions(config.version_policy.specific.versions)
        return f"version_policy specific {{ versions: [{listed}] }}"
    return "version_policy all"


def check_version_policy(root: Path, model_dir: Path, config: model_config_pb2.ModelConfig,
                         versions: dict[int, Path]) -> list[Finding]:
    """Every version folder must be served; a specific policy must name existing folders."""
    if not versions:
        return []
    rel = rel_path(root, model_dir / CONFIG_FILE)
    name = model_dir.name
    findings = []
    all_fix = (f"add version_policy: {{ all {{ }} }} to {rel} (or specific {{ versions: "
               f"[{join_versions(versions)}] }})")
    choice = (config.version_policy.WhichOneof("policy_choice")
              if config.HasField("version_policy") else None)
    if choice == "latest" and config.version_policy.latest.num_versions < 1:
        findings.append(error_finding(
            rel, f"{rel} sets latest {{ num_versions: "
            f"{config.version_policy.latest.num_versions} }}: no version would load",
            all_fix, "version-policy"))
        return findings
    if choice == "specific":
        missing = set(config.version_policy.specific.versions) - set(versions)
        if missing:
            findings.append(error_finding(
                rel, f"{rel} lists version(s) {join_versions(missing)} in version_policy "
                f"specific, but {name}/ has no such folder: Triton fails to load them",
                f"create the folder(s) or list only existing versions "
                f"({join_versions(versions)})", "version-policy"))
    unserved = set(versions) - served_versions(config, versions)
    if unserved:
        findings.append(error_finding(
            rel, f"{name} has version folders {join_versions(versions)} but {rel} has "
            f"{_describe_policy(config)}: version(s) {join_versions(unserved)} would silently "
            "not be served", all_fix, "version-policy"))
    return findings


def check_transaction_policy(root: Path, model_dir: Path,
                             config: model_config_pb2.ModelConfig) -> list[Finding]:
    """The vLLM backend runs decoupled only; Triton batching must stay off."""
    rel = rel_path(root, model_dir / CONFIG_FILE)
    findings = []
    if not config.HasField("model_transaction_policy"):
        findings.append(warning_finding(
            rel, f"{rel} sets no model_transaction_policy: the vLLM backend fills in "
            "decoupled: true itself, but only while Triton's config auto-complete is on",
            f"add model_transaction_policy {{ decoupled: true }} to {rel}",
            "transaction-policy"))
    elif not config.model_transaction_policy.decoupled:
        findings.append(error_finding(
            rel, f"{rel} sets model_transaction_policy decoupled to false: the vLLM backend "
            "requires a decoupled model and fails to load",
            f"set model_transaction_policy {{ decoupled: true }} in {rel}",
            "transaction-policy"))
    if config.max_batch_size != 0:
        findings.append(warning_finding(
            rel, f"{rel} sets max_batch_size {config.max_batch_size}: vLLM batches requests "
            "itself and the backend expects Triton's batching off",
            f"set max_batch_size: 0 in {rel}", "batching"))
    return findings
