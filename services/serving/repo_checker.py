"""Static checks of a Triton model repository served by the vLLM backend.

``check_repository(path)`` walks a model repository and returns a list of ``Finding``: every
mistake that makes Triton or vLLM refuse the repository, or silently serve less than it holds.
Each ``config.pbtxt`` is parsed with Triton's own ``ModelConfig`` protobuf as shipped in
``tritonclient``; each version's ``model.json`` (the vLLM engine arguments) is read as JSON.

Command: ``python -m services.serving.repo_checker [PATH] [--gpu-memory-gb GB]`` (PATH defaults to
``model_repository``) prints every finding with its path and fix, and exits 1 when any of them
is an error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
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
DEFAULT_REPOSITORY = "model_repository"

# vLLM's EngineArgs.gpu_memory_utilization when model.json sets none.
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# Engines sharing one GPU must leave room outside their shares for Triton's own process and
# each engine's CUDA context: vLLM refuses to start when free memory is below its share.
MAX_SHARED_UTILIZATION = 0.95
# The sum a fix suggests: this repository's 0.50 + 0.40, leaving margin below the limit.
SUGGESTED_SHARED_UTILIZATION = 0.90
# Qwen2-VL: 14 px patches merged 2x2, so one visual token per 28 x 28 pixels.
PIXELS_PER_VISUAL_TOKEN = 28 * 28
# The vLLM backend turns a boolean config.pbtxt parameter on only for this value (any case).
TRUE_PARAMETER = "true"
METRICS_PARAMETER = "REPORT_CUSTOM_METRICS"
GPU_DEVICE_IDS_PARAMETER = "GPU_DEVICE_IDS"

# vLLM quantization methods that quantize an unquantized checkpoint while loading it.
DYNAMIC_QUANTIZATION = frozenset({"fp8", "ptpc_fp8", "experts_int8", "tpu_int8", "rtn"})
# Methods that either read a pre-quantized checkpoint or quantize in flight for some models only.
MAYBE_DYNAMIC_QUANTIZATION = frozenset({"bitsandbytes"})
# Methods that read weights quantized beforehand (GPTQ, AWQ, ... checkpoints).
PREQUANTIZED_QUANTIZATION = frozenset(
    {
        "gptq", "gptq_marlin", "gptq_marlin_24", "gptq_bitblas", "awq", "awq_marlin",
        "awq_triton", "marlin", "bitblas", "squeezellm", "aqlm", "compressed-tensors",
        "gguf", "hqq", "qqq", "modelopt", "modelopt_fp4", "nvfp4", "fbgemm_fp8", "quark",
        "moe_wna16", "auto-round", "deepspeedfp", "mxfp4", "fp_quant",
    }
)
# Markers in a checkpoint's name that say its weights were quantized beforehand.
PREQUANTIZED_NAME = re.compile(
    r"gptq|awq|aqlm|squeezellm|marlin|gguf|bnb|int4|int8|4bit|8bit|w4a16|w8a8|w8a16|w4a8"
    r"|nvfp4|mxfp4|fp8|hqq|exl2|quantized|compressed",
    re.IGNORECASE,
)
# Files in a checkpoint folder that carry a quantization config outside config.json.
QUANT_CONFIG_FILES = ("quantize_config.json", "quant_config.json")
# "7b", "1.5B" in a model name: the parameter count in billions.
PARAMETER_COUNT_IN_NAME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)b(?![a-z])", re.IGNORECASE)
# Bytes per weight by vLLM dtype ("auto" keeps a 16-bit checkpoint's dtype).
DTYPE_BYTES = {
    "auto": 2, "bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4,
}
# Bytes per weight once vLLM quantized dynamically (a lower bound: some layers stay 16-bit).
DYNAMIC_QUANTIZATION_BYTES = {"fp8": 1, "ptpc_fp8": 1}
BYTES_PER_GB = 1e9

_KIND = model_config_pb2.ModelInstanceGroup.Kind
_ALL_GPUS = "all"


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
class _Version:
    """A version folder and its engine arguments (None when model.json is absent or unusable)."""

    number: int
    folder: Path
    engine_args: dict[str, Any] | None = None


@dataclass
class _Model:
    """A model folder, its parsed config (None when absent or unparseable) and its versions."""

    name: str
    folder: Path
    config: model_config_pb2.ModelConfig | None
    versions: dict[int, _Version]

    @property
    def is_vllm(self) -> bool:
        return self.config is not None and self.config.backend == VLLM_BACKEND


# --------------------------------------------------------------------------- helpers


def _rel(root: Path, path: Path) -> str:
    """``path`` relative to the repository root, in POSIX form ("." for the root)."""
    rel = path.relative_to(root).as_posix()
    return rel if rel else "."


def _error(path: str, message: str, fix: str, check: str) -> Finding:
    return Finding(ERROR, path, message, fix, check)


def _warning(path: str, message: str, fix: str, check: str) -> Finding:
    return Finding(WARNING, path, message, fix, check)


def _is_number(value: Any) -> bool:
    """True for JSON numbers (int or float), false for booleans."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _join_versions(versions: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(versions))


def _model_dirs(root: Path) -> list[Path]:
    """Top-level folders Triton treats as models (hidden ones are reported separately)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _version_dirs(model_dir: Path) -> dict[int, Path]:
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
    models = _model_dirs(root)
    return len(models), sum(len(_version_dirs(m)) for m in models)


# --------------------------------------------------------------------------- repository


def _check_root(root: Path) -> list[Finding]:
    """The repository must be an existing folder."""
    if not root.exists():
        return [_error(".", f"the model repository {root} does not exist",
                       "pass the folder given to tritonserver --model-repository", "repository")]
    if not root.is_dir():
        return [_error(".", f"the model repository {root} is not a folder",
                       "pass the folder given to tritonserver --model-repository", "repository")]
    return []


def _check_not_empty(root: Path, model_dirs: Sequence[Path]) -> list[Finding]:
    """A repository without model folders serves nothing."""
    if model_dirs:
        return []
    return [_error(".", "the repository holds no model folder: Triton would serve nothing",
                   f"add a model folder, e.g. qwen/ with {CONFIG_FILE} and 1/{ENGINE_ARGS_FILE}",
                   "empty-repository")]


def _check_hidden_folders(root: Path) -> list[Finding]:
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
            rel = _rel(root, child)
            fix = (f"remove {rel}/ from the repository; keep caches outside it "
                   "(e.g. HF_HOME=/root/.cache/huggingface outside the model repository)")
            if folder == root:
                findings.append(_error(
                    rel, f"hidden folder {rel}/ at the top of the repository: Triton polls "
                    "every top-level folder as a model and fails on this one", fix,
                    "hidden-folder"))
            else:
                findings.append(_warning(
                    rel, f"hidden folder {rel}/ inside the repository (a cache or tool "
                    "folder): it does not belong in a model repository", fix, "hidden-folder"))
    return findings


# --------------------------------------------------------------------------- model folder


def _check_config_in_version_folders(root: Path, model_dir: Path) -> list[Finding]:
    """A config.pbtxt belongs at the model level, never inside a version folder."""
    findings = []
    model_config = model_dir / CONFIG_FILE
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        misplaced = folder / CONFIG_FILE
        if not misplaced.exists():
            continue
        rel = _rel(root, misplaced)
        target = _rel(root, model_config)
        if model_config.exists():
            fix = f"delete {rel}; the model's only {CONFIG_FILE} is {target}"
        else:
            fix = f"move {rel} to {target}"
        findings.append(_error(
            rel, f"{rel} sits inside version folder {folder.name}: Triton reads "
            f"{CONFIG_FILE} only at the model level, one per model", fix, "config-in-version"))
    return findings


def _check_ignored_version_folders(root: Path, model_dir: Path) -> list[Finding]:
    """Numeric folders starting with 0 ("0", "01") are not versions for Triton."""
    findings = []
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        if folder.name.startswith("0"):
            rel = _rel(root, folder)
            findings.append(_warning(
                rel, f"folder {rel}/ is ignored by Triton: version numbers start at 1 and "
                "folder names starting with 0 are skipped",
                f"rename {rel}/ to a version number without leading zero, e.g. "
                f"{int(folder.name) or 1}", "ignored-version-folder"))
    return findings


def _load_config(
    root: Path, model_dir: Path
) -> tuple[model_config_pb2.ModelConfig | None, list[Finding]]:
    """Parse the model's config.pbtxt with Triton's ModelConfig protobuf."""
    path = model_dir / CONFIG_FILE
    rel_dir = _rel(root, model_dir)
    if not path.is_file():
        return None, [_error(
            rel_dir, f"model folder {rel_dir}/ has no {CONFIG_FILE}: Triton cannot load it",
            f"add {rel_dir}/{CONFIG_FILE} (backend \"vllm\", version_policy, instance_group), "
            f"or remove {rel_dir}/ if it is not a model", "missing-config")]
    rel = _rel(root, path)
    try:
        text = path.read_text(encoding="utf-8")
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        return None, [_error(
            rel, f"{rel} is not a valid Triton model configuration: {exc}",
            f"correct line {exc.GetLine()} of {rel} (protobuf text format of "
            "inference.ModelConfig)", "config-parse")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [_error(rel, f"{rel} cannot be read: {exc}",
                             f"make {rel} a readable UTF-8 text file", "config-parse")]
    return config, []


def _check_model_name(root: Path, model_dir: Path, config: model_config_pb2.ModelConfig
                      ) -> list[Finding]:
    """A name set in config.pbtxt must equal the folder name."""
    if not config.name or config.name == model_dir.name:
        return []
    rel = _rel(root, model_dir / CONFIG_FILE)
    return [_error(
        rel, f"{rel} names the model \"{config.name}\" but its folder is "
        f"\"{model_dir.name}\": Triton refuses the mismatch",
        f"set name: \"{model_dir.name}\" in {rel}, or rename the folder", "model-name")]


def _check_has_versions(root: Path, model_dir: Path, versions: dict[int, Path]
                        ) -> list[Finding]:
    """A model needs at least one version folder."""
    if versions:
        return []
    rel = _rel(root, model_dir)
    return [_error(
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
        listed = _join_versions(config.version_policy.specific.versions)
        return f"version_policy specific {{ versions: [{listed}] }}"
    return "version_policy all"


def _check_version_policy(root: Path, model_dir: Path, config: model_config_pb2.ModelConfig,
                          versions: dict[int, Path]) -> list[Finding]:
    """Every version folder must be served; a specific policy must name existing folders."""
    if not versions:
        return []
    rel = _rel(root, model_dir / CONFIG_FILE)
    name = model_dir.name
    findings = []
    all_fix = (f"add version_policy: {{ all {{ }} }} to {rel} (or specific {{ versions: "
               f"[{_join_versions(versions)}] }})")
    choice = (config.version_policy.WhichOneof("policy_choice")
              if config.HasField("version_policy") else None)
    if choice == "latest" and config.version_policy.latest.num_versions < 1:
        findings.append(_error(
            rel, f"{rel} sets latest {{ num_versions: "
            f"{config.version_policy.latest.num_versions} }}: no version would load",
            all_fix, "version-policy"))
        return findings
    if choice == "specific":
        missing = set(config.version_policy.specific.versions) - set(versions)
        if missing:
            findings.append(_error(
                rel, f"{rel} lists version(s) {_join_versions(missing)} in version_policy "
                f"specific, but {name}/ has no such folder: Triton fails to load them",
                f"create the folder(s) or list only existing versions "
                f"({_join_versions(versions)})", "version-policy"))
    unserved = set(versions) - served_versions(config, versions)
    if unserved:
        findings.append(_error(
            rel, f"{name} has version folders {_join_versions(versions)} but {rel} has "
            f"{_describe_policy(config)}: version(s) {_join_versions(unserved)} would silently "
            "not be served", all_fix, "version-policy"))
    return findings


def _check_transaction_policy(root: Path, model_dir: Path,
                              config: model_config_pb2.ModelConfig) -> list[Finding]:
    """The vLLM backend runs decoupled only; Triton batching must stay off."""
    rel = _rel(root, model_dir / CONFIG_FILE)
    findings = []
    if not config.HasField("model_transaction_policy"):
        findings.append(_warning(
            rel, f"{rel} sets no model_transaction_policy: the vLLM backend fills in "
            "decoupled: true itself, but only while Triton's config auto-complete is on",
            f"add model_transaction_policy {{ decoupled: true }} to {rel}",
            "transaction-policy"))
    elif not config.model_transaction_policy.decoupled:
        findings.append(_error(
            rel, f"{rel} sets model_transaction_policy decoupled to false: the vLLM backend "
            "requires a decoupled model and fails to load",
            f"set model_transaction_policy {{ decoupled: true }} in {rel}",
            "transaction-policy"))
    if config.max_batch_size != 0:
        findings.append(_warning(
            rel, f"{rel} sets max_batch_size {config.max_batch_size}: vLLM batches requests "
            "itself and the backend expects Triton's batching off",
            f"set max_batch_size: 0 in {rel}", "batching"))
    return findings


# --------------------------------------------------------------------------- model.json


def _load_engine_args(root: Path, version_dir: Path, required: bool
                      ) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Read a version's model.json; report it missing (when required), not JSON or not an object."""
    path = version_dir / ENGINE_ARGS_FILE
    rel = _rel(root, path)
    rel_dir = _rel(root, version_dir)
    if not path.is_file():
        if not required:
            return None, []
        model_level = version_dir.parent / ENGINE_ARGS_FILE
        fix = (f"move {_rel(root, model_level)} into {rel_dir}/ (the backend reads it from "
               "each version folder)" if model_level.is_file()
               else f"add {rel} with at least {{\"model\": \"<hub id or path>\"}}")
        return None, [_error(
            rel_dir, f"version folder {rel_dir}/ has no {ENGINE_ARGS_FILE}: the vLLM backend "
            "reads its engine arguments from it and fails to load this version", fix,
            "missing-model-json")]
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, [_error(
            rel, f"{rel} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            f"correct {rel}; JSON has no comments and no trailing commas", "model-json")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [_error(rel, f"{rel} cannot be read: {exc}",
                             f"make {rel} a readable UTF-8 JSON file", "model-json")]
    if not isinstance(args, dict):
        return None, [_error(
            rel, f"{rel} holds a JSON {type(args).__name__}, not an object of engine arguments",
            f"make {rel} a JSON object such as {{\"model\": \"...\", \"dtype\": \"bfloat16\"}}",
            "model-json")]
    return args, _check_engine_arg_types(rel, args)


def _check_engine_arg_types(rel: str, args: dict[str, Any]) -> list[Finding]:
    """Types and ranges of the engine arguments this checker and the backend rely on."""
    findings = []
    model = args.get("model")
    if "model" not in args:
        findings.append(_error(rel, f"{rel} has no \"model\": vLLM would load its built-in "
                               "default model instead of yours",
                               f"add \"model\": \"<hub id or local path>\" to {rel}", "model-json"))
    elif not isinstance(model, str) or not model.strip():
        findings.append(_error(rel, f"{rel}: \"model\" must be a non-empty string, not {model!r}",
                               f"set \"model\" in {rel} to a hub id or a local path",
                               "model-json"))
    if "gpu_memory_utilization" in args:
        value = args["gpu_memory_utilization"]
        if not _is_number(value) or not 0 < value <= 1:
            findings.append(_error(
                rel, f"{rel}: gpu_memory_utilization must be a number above 0 and at most 1 "
                f"(a fraction of the GPU's total memory), not {value!r}",
                f"set \"gpu_memory_utilization\" in {rel} to a fraction such as 0.45",
                "model-json"))
    if "max_model_len" in args and not _is_positive_int(args["max_model_len"]):
        findings.append(_error(
            rel, f"{rel}: max_model_len must be a positive integer (tokens), "
            f"not {args['max_model_len']!r}",
            f"set \"max_model_len\" in {rel} to an integer such as 4096", "model-json"))
    if "disable_log_stats" in args and not isinstance(args["disable_log_stats"], bool):
        findings.append(_error(
            rel, f"{rel}: disable_log_stats must be a JSON boolean, not "
            f"{args['disable_log_stats']!r} (a string such as \"false\" counts as true)",
            f"write \"disable_log_stats\": false in {rel}", "model-json"))
    if "quantization" in args and not (args["quantization"] is None
                                       or isinstance(args["quantization"], str)):
        findings.append(_error(
            rel, f"{rel}: quantization must be a string such as \"fp8\", "
            f"not {args['quantization']!r}",
            f"set \"quantization\": \"fp8\" in {rel}, or remove it", "model-json"))
    return findings


def _utilization(args: dict[str, Any]) -> tuple[float | None, bool]:
    """(gpu_memory_utilization, set explicitly); None when the value is invalid."""
    if "gpu_memory_utilization" not in args:
        return VLLM_DEFAULT_GPU_MEMORY_UTILIZATION, False
    value = args["gpu_memory_utilization"]
    if _is_number(value) and 0 < value <= 1:
        return float(value), True
    return None, True


def _local_checkpoint(model: str) -> Path | None:
    """The checkpoint folder when ``model`` is a local path that exists here."""
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).is_absolute()


def _folder_is_prequantized(folder: Path) -> bool:
    """A local checkpoint is pre-quantized when it carries a quantization config."""
    if any((folder / name).is_file() for name in QUANT_CONFIG_FILES):
        return True
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and "quantization_config" in config


def _is_prequantized(model: str) -> bool | None:
    """Whether the checkpoint holds quantized weights; None when it cannot be told here."""
    folder = _local_checkpoint(model)
    if folder is not None:
        return _folder_is_prequantized(folder) or bool(PREQUANTIZED_NAME.search(folder.name))
    if PREQUANTIZED_NAME.search(model):
        return True
    if _looks_like_path(model):
        return None  # a path inside the serving container, absent on this machine
    return False


def _check_quantization(rel: str, args: dict[str, Any]) -> list[Finding]:
    """A quantization method that reads pre-quantized weights needs a pre-quantized checkpoint."""
    method = args.get("quantization")
    model = args.get("model")
    if not isinstance(method, str) or not isinstance(model, str):
        return []
    key = method.strip().lower()
    if key in DYNAMIC_QUANTIZATION:
        return []
    if key in MAYBE_DYNAMIC_QUANTIZATION:
        return [_warning(
            rel, f"{rel} asks for \"{method}\": vLLM either loads a bitsandbytes checkpoint or "
            "quantizes in flight, which it supports for some architectures only",
            f"check that this vLLM version quantizes {model} in flight, or use "
            "\"quantization\": \"fp8\" (dynamic, on GPUs of compute capability 8.9+)",
            "quantization")]
    if key not in PREQUANTIZED_QUANTIZATION:
        return [_warning(
            rel, f"{rel} asks for quantization \"{method}\", a method this checker does not "
            "know: vLLM refuses names outside its registry",
            f"check the name against vLLM's quantization methods, e.g. \"fp8\"", "quantization")]
    prequantized = _is_prequantized(model)
    fix = (f"use \"quantization\": \"fp8\" in {rel} (vLLM quantizes the 16-bit weights while "
           f"loading), or point \"model\" at a checkpoint quantized with {method}")
    if prequantized is None:
        return [_warning(
            rel, f"{rel} asks for \"{method}\", which needs a checkpoint quantized beforehand; "
            f"the local path {model} is not here, so this cannot be verified", fix,
            "quantization")]
    if prequantized:
        return []
    return [_error(
        rel, f"{rel} asks for \"{method}\", which reads weights quantized beforehand, but "
        f"{model} does not look pre-quantized (no quantization marker in its name, no "
        f"quantization_config): vLLM fails at load (\"Cannot find the config file for "
        f"{method}\")", fix, "quantization")]


def _images_per_prompt(args: dict[str, Any]) -> int:
    """Images allowed per prompt by limit_mm_per_prompt (vLLM's default is 1)."""
    limit = args.get("limit_mm_per_prompt")
    if isinstance(limit, dict) and _is_positive_int(limit.get("image")):
        return int(limit["image"])
    if isinstance(limit, dict) and limit.get("image") == 0:
        return 0
    return 1


def _check_image_tokens(rel: str, args: dict[str, Any]) -> list[Finding]:
    """The largest allowed image (Qwen2-VL: one token per 28x28 px) must fit in max_model_len."""
    max_len = args.get("max_model_len")
    images = _images_per_prompt(args)
    if not _is_positive_int(max_len) or images == 0:
        return []
    kwargs = args.get("mm_processor_kwargs")
    max_pixels = kwargs.get("max_pixels") if isinstance(kwargs, dict) else None
    if max_pixels is None:
        if "limit_mm_per_prompt" not in args:
            return []  # not declared as an image model: nothing to say
        return [_warning(
            rel, f"{rel} allows images but sets no mm_processor_kwargs.max_pixels: the image "
            "processor's own default bound applies, and a full-size photo can then need more "
            f"visual tokens than max_model_len {max_len} and be refused",
            f"add \"mm_processor_kwargs\": {{\"max_pixels\": "
            f"{_suggest_max_pixels(max_len, images)}}} to {rel}", "image-tokens")]
    if not _is_positive_int(max_pixels):
        return [_error(rel, f"{rel}: mm_processor_kwargs.max_pixels must be a positive integer, "
                       f"not {max_pixels!r}",
                       f"set it to {_suggest_max_pixels(max_len, images)}", "model-json")]
    tokens = max_pixels // PIXELS_PER_VISUAL_TOKEN * images
    if tokens < max_len:
        return []
    return [_error(
        rel, f"{rel}: max_pixels {max_pixels} allows {tokens} visual tokens per prompt "
        f"({images} image(s), one token per 28x28 px), not less than max_model_len {max_len}: "
        "a large image leaves no room for the prompt and the answer",
        f"lower max_pixels to {_suggest_max_pixels(max_len, images)} or raise max_model_len",
        "image-tokens")]


def _suggest_max_pixels(max_len: int, images: int) -> int:
    """A max_pixels that leaves a third of max_model_len for text, in whole 28x28 tokens."""
    tokens = max(1, (max_len * 2 // 3) // max(images, 1))
    return tokens * PIXELS_PER_VISUAL_TOKEN


def _check_metrics(root: Path, model: _Model) -> list[Finding]:
    """REPORT_CUSTOM_METRICS on needs disable_log_stats false in every model.json."""
    assert model.config is not None
    rel_config = _rel(root, model.folder / CONFIG_FILE)
    params = model.config.parameters
    if METRICS_PARAMETER not in params:
        return []
    value = params[METRICS_PARAMETER].string_value
    if value.strip().lower() != TRUE_PARAMETER:
        if value.strip().lower() == "false":
            return []
        return [_warning(
            rel_config, f"{rel_config} sets {METRICS_PARAMETER} to \"{value}\": the vLLM "
            f"backend turns metrics on only for \"{TRUE_PARAMETER}\", so they stay off",
            f"set string_value: \"{TRUE_PARAMETER}\" in {rel_config}", "metrics")]
    findings = []
    for number in sorted(model.versions):
        args = model.versions[number].engine_args
        if args is None:
            continue
        rel = _rel(root, model.versions[number].folder / ENGINE_ARGS_FILE)
        stats = args.get("disable_log_stats")
        if stats is True:
            findings.append(_warning(
                rel, f"{rel} sets disable_log_stats true while {rel_config} turns "
                f"{METRICS_PARAMETER} on: vLLM metrics of version {number} will not reach "
                "the metrics port", f"set \"disable_log_stats\": false in {rel}", "metrics"))
        elif "disable_log_stats" not in args:
            findings.append(_warning(
                rel, f"{rel} does not set disable_log_stats while {rel_config} turns "
                f"{METRICS_PARAMETER} on: version {number} exports vLLM metrics only if "
                "stats logging is on, and that is left to the vLLM version's default",
                f"add \"disable_log_stats\": false to {rel}", "metrics"))
    return findings


# --------------------------------------------------------------------------- GPU memory


def _gpu_device_ids(config: model_config_pb2.ModelConfig) -> list[str]:
    """GPU ids of the backend's GPU_DEVICE_IDS parameter (used with KIND_MODEL)."""
    if GPU_DEVICE_IDS_PARAMETER not in config.parameters:
        return []
    raw = config.parameters[GPU_DEVICE_IDS_PARAMETER].string_value
    return [part.strip() for part in raw.split(",") if part.strip()]


def _gpu_placement(config: model_config_pb2.ModelConfig) -> dict[str, int]:
    """GPU id -> engines each version runs there ("all" = one per visible GPU).

    Without instance_group Triton places one GPU instance on every visible GPU. KIND_MODEL
    leaves placement to vLLM: GPU_DEVICE_IDS when set, else the first visible GPU (0).
    Every instance is its own vLLM engine with its own gpu_memory_utilization share.
    """
    if not config.instance_group:
        return {_ALL_GPUS: 1}
    placement: dict[str, int] = defaultdict(int)
    for group in config.instance_group:
        count = group.count if group.count > 0 else 1
        if group.kind == _KIND.KIND_CPU:
            continue
        if group.kind == _KIND.KIND_MODEL:
            gpus = _gpu_device_ids(config) or ["0"]
        else:
            gpus = [str(g) for g in group.gpus] or [_ALL_GPUS]
        for gpu in gpus:
            placement[gpu] += count
    return dict(placement)


@dataclass(frozen=True)
class _Engine:
    """One vLLM engine's claim on a GPU."""

    model: str
    version: int
    model_json: str
    utilization: float
    explicit: bool
    instances: int


def _engines_by_gpu(root: Path, models: Sequence[_Model]) -> dict[str, list[_Engine]]:
    """The served vLLM engines of every model, grouped by the GPU they take memory on."""
    by_gpu: dict[str, list[_Engine]] = defaultdict(list)
    for model in models:
        if not model.is_vllm or model.config is None:
            continue
        placement = _gpu_placement(model.config)
        for number in sorted(served_versions(model.config, model.versions)):
            version = model.versions[number]
            if version.engine_args is None:
                continue
            utilization, explicit = _utilization(version.engine_args)
            if utilization is None:
                continue
            rel = _rel(root, version.folder / ENGINE_ARGS_FILE)
            for gpu, instances in placement.items():
                by_gpu[gpu].append(_Engine(model.name, number, rel, utilization, explicit,
                                           instances))
    return dict(by_gpu)


def _describe_engine(engine: _Engine) -> str:
    share = f"{engine.utilization:.2f}" + ("" if engine.explicit else
                                           ", vLLM's default: model.json sets none")
    times = f" x {engine.instances} instances" if engine.instances > 1 else ""
    return f"{engine.model}/{engine.version} ({share}{times})"


def _check_gpu_memory_sum(root: Path, models: Sequence[_Model]) -> list[Finding]:
    """Engines sharing one GPU must ask for less than MAX_SHARED_UTILIZATION of it together."""
    by_gpu = _engines_by_gpu(root, models)
    everywhere = by_gpu.get(_ALL_GPUS, [])
    gpus = sorted(g for g in by_gpu if g != _ALL_GPUS) or ([_ALL_GPUS] if everywhere else [])
    findings = []
    for gpu in gpus:
        engines = (by_gpu[gpu] if gpu != _ALL_GPUS else []) + everywhere
        if sum(e.instances for e in engines) < 2:
            continue
        total = round(sum(e.utilization * e.instances for e in engines), 6)
        if total < MAX_SHARED_UTILIZATION:
            continue
        owners = {e.model for e in engines}
        path = next(iter(owners)) if len(owners) == 1 else "."
        where = "every GPU" if gpu == _ALL_GPUS else f"GPU {gpu}"
        each = math.floor(SUGGESTED_SHARED_UTILIZATION / sum(e.instances for e in engines)
                          * 100) / 100
        files = ", ".join(sorted({e.model_json for e in engines}))
        findings.append(_error(
            path, f"{where} is shared by " + ", ".join(_describe_engine(e) for e in engines)
            + f": together {total:.2f} of its memory, not below {MAX_SHARED_UTILIZATION}. Each "
            "vLLM engine takes its share of the GPU's total memory at start, so the last one "
            "to start fails for lack of free memory",
            f"set gpu_memory_utilization in {files} so that they sum to less than "
            f"{MAX_SHARED_UTILIZATION} (e.g. {each:.2f} each, or more for the bf16 version and "
            "less for fp8)", "gpu-memory"))
    return findings


def _estimated_weight_bytes(args: dict[str, Any]) -> tuple[float, str] | None:
    """A lower bound of the weights' size from the parameter count in the model's name."""
    model = args.get("model")
    if not isinstance(model, str):
        return None
    match = PARAMETER_COUNT_IN_NAME.search(Path(model).name)
    if match is None:
        return None
    params = float(match.group(1)) * 1e9
    method = args.get("quantization")
    dtype = args.get("dtype", "auto")
    if isinstance(method, str) and method:
        per_param = DYNAMIC_QUANTIZATION_BYTES.get(method.lower())
        label = method
    else:
        per_param = DTYPE_BYTES.get(dtype) if isinstance(dtype, str) else None
        label = str(dtype)
    if per_param is None:
        return None
    return params * per_param, f"{match.group(1)}B parameters in {label}"


def _check_weights_fit(root: Path, models: Sequence[_Model], gpu_memory_gb: float
                       ) -> list[Finding]:
    """Each engine's share of a gpu_memory_gb GPU must hold at least its weights."""
    findings = []
    total_bytes = gpu_memory_gb * BYTES_PER_GB
    for model in models:
        if not model.is_vllm or model.config is None:
            continue
        for number in sorted(served_versions(model.config, model.versions)):
            args = model.versions[number].engine_args
            if args is None:
                continue
            utilization, _ = _utilization(args)
            estimate = _estimated_weight_bytes(args)
            if utilization is None or estimate is None:
                continue
            weights, basis = estimate
            share = utilization * total_bytes
            if share >= weights:
                continue
            rel = _rel(root, model.versions[number].folder / ENGINE_ARGS_FILE)
            needed = math.ceil(weights / total_bytes * 100) / 100
            findings.append(_warning(
                rel, f"{rel}: the share {utilization:.2f} x {gpu_memory_gb:g} GB = "
                f"{share / BYTES_PER_GB:.1f} GB is below the weights alone (at least "
                f"{weights / BYTES_PER_GB:.1f} GB for {basis}): no room for activations and "
                "KV cache", f"raise gpu_memory_utilization in {rel} well above {needed:.2f}",
                "weights-fit"))
    return findings


# --------------------------------------------------------------------------- entry points


def _load_model(root: Path, model_dir: Path) -> tuple[_Model, list[Finding]]:
    """Read one model folder and run the per-model and per-version checks."""
    findings = _check_config_in_version_folders(root, model_dir)
    findings += _check_ignored_version_folders(root, model_dir)
    config, config_findings = _load_config(root, model_dir)
    findings += config_findings
    version_dirs = _version_dirs(model_dir)
    findings += _check_has_versions(root, model_dir, version_dirs)
    model = _Model(model_dir.name, model_dir, config,
                   {n: _Version(n, p) for n, p in version_dirs.items()})
    if config is not None:
        findings += _check_model_name(root, model_dir, config)
        findings += _check_version_policy(root, model_dir, config, version_dirs)
        if model.is_vllm:
            findings += _check_transaction_policy(root, model_dir, config)
    if config is not None and not model.is_vllm:
        return model, findings  # another backend: model.json means nothing to it
    for number in sorted(model.versions):
        version = model.versions[number]
        args, arg_findings = _load_engine_args(root, version.folder, required=model.is_vllm)
        findings += arg_findings
        version.engine_args = args
        if args is not None:
            rel = _rel(root, version.folder / ENGINE_ARGS_FILE)
            findings += _check_quantization(rel, args)
            findings += _check_image_tokens(rel, args)
    if model.is_vllm:
        findings += _check_metrics(root, model)
    return model, findings


def check_repository(path: str | Path, gpu_memory_gb: float | None = None) -> list[Finding]:
    """Check a Triton model repository for the vLLM backend; return every finding.

    ``gpu_memory_gb`` (the GPU's total memory in GB, 1e9 bytes), when given, adds a warning
    for each version whose share of that memory is below a lower bound of its weights
    (estimated from the parameter count in the model's name).
    """
    root = Path(path)
    findings = _check_root(root)
    if findings:
        return findings
    findings += _check_hidden_folders(root)
    model_dirs = _model_dirs(root)
    findings += _check_not_empty(root, model_dirs)
    models = []
    for model_dir in model_dirs:
        model, model_findings = _load_model(root, model_dir)
        models.append(model)
        findings += model_findings
    findings += _check_gpu_memory_sum(root, models)
    if gpu_memory_gb is not None:
        findings += _check_weights_fit(root, models, gpu_memory_gb)
    return findings


def format_finding(finding: Finding) -> str:
    """Two lines: severity, path and message; then the fix."""
    head = f"{finding.severity.upper():7} {finding.path}: {finding.message}"
    return f"{head}\n        fix: {finding.fix}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the findings; exit status 1 when any is an error."""
    parser = argparse.ArgumentParser(
        prog="python -m services.serving.repo_checker",
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
