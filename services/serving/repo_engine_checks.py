"""The repository checker's checks of each version's ``model.json``, the vLLM engine arguments.

``load_engine_args`` reads the file (missing, not JSON, not an object, argument types and ranges);
then the quantization method against the checkpoint it is given (a method that needs weights
quantized beforehand on a 16-bit checkpoint), the image token bound against ``max_model_len``, and
the custom metrics the config turns on against the stats the engine would log.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from services.serving.repo_layout import (
    CONFIG_FILE,
    ENGINE_ARGS_FILE,
    Finding,
    RepoModel,
    error_finding,
    is_number,
    is_positive_int,
    rel_path,
    warning_finding,
)


# Qwen2-VL: 14 px patches merged 2x2, so one visual token per 28 x 28 pixels.
PIXELS_PER_VISUAL_TOKEN = 28 * 28
# The vLLM backend turns a boolean config.pbtxt parameter on only for this value (any case).
TRUE_PARAMETER = "true"
METRICS_PARAMETER = "REPORT_CUSTOM_METRICS"
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


def load_engine_args(root: Path, version_dir: Path, required: bool
                     ) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Read a version's model.json; report it missing (when required), not JSON or not an object."""
    path = version_dir / ENGINE_ARGS_FILE
    rel = rel_path(root, path)
    rel_dir = rel_path(root, version_dir)
    if not path.is_file():
        if not required:
            return None, []
        model_level = version_dir.parent / ENGINE_ARGS_FILE
        fix = (f"move {rel_path(root, model_level)} into {rel_dir}/ (the backend reads it from "
               "each version folder)" if model_level.is_file()
               else f"add {rel} with at least {{\"model\": \"<hub id or path>\"}}")
        return None, [error_finding(
            rel_dir, f"version folder {rel_dir}/ has no {ENGINE_ARGS_FILE}: the vLLM backend "
            "reads its engine arguments from it and fails to load this version", fix,
            "missing-model-json")]
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, [error_finding(
            rel, f"{rel} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            f"correct {rel}; JSON has no comments and no trailing commas", "model-json")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [error_finding(rel, f"{rel} cannot be read: {exc}",
                                    f"make {rel} a readable UTF-8 JSON file", "model-json")]
    if not isinstance(args, dict):
        return None, [error_finding(
            rel, f"{rel} holds a JSON {type(args).__name__}, not an object of engine arguments",
            f"make {rel} a JSON object such as {{\"model\": \"...\", \"dtype\": \"bfloat16\"}}",
            "model-json")]
    return args, _check_engine_arg_types(rel, args)


def _check_engine_arg_types(rel: str, args: dict[str, Any]) -> list[Finding]:
    """Types and ranges of the engine arguments this checker and the backend rely on."""
    findings = []
    model = args.get("model")
    if "model" not in args:
        findings.append(error_finding(rel, f"{rel} has no \"model\": vLLM would load its built-in "
                                      "default model instead of yours",
                                      f"add \"model\": \"<hub id or local path>\" to {rel}", "model-json"))
    elif not isinstance(model, str) or not model.strip():
        findings.append(error_finding(rel, f"{rel}: \"model\" must be a non-empty string, not {model!r}",
                                      f"set \"model\" in {rel} to a hub id or a local path",
                                      "model-json"))
    if "gpu_memory_utilization" in args:
        value = args["gpu_memory_utilization"]
        if not is_number(value) or not 0 < value <= 1:
            findings.append(error_finding(
                rel, f"{rel}: gpu_memory_utilization must be a number above 0 and at most 1 "
                f"(a fraction of the GPU's total memory), not {value!r}",
                f"set \"gpu_memory_utilization\" in {rel} to a fraction such as 0.45",
                "model-json"))
    if "max_model_len" in args and not is_positive_int(args["max_model_len"]):
        findings.append(error_finding(
            rel, f"{rel}: max_model_len must be a positive integer (tokens), "
            f"not {args['max_model_len']!r}",
            f"set \"max_model_len\" in {rel} to an integer such as 4096", "model-json"))
    if "disable_log_stats" in args and not isinstance(args["disable_log_stats"], bool):
        findings.append(error_finding(
            rel, f"{rel}: disable_log_stats must be a JSON boolean, not "
            f"{args['disable_log_stats']!r} (a string such as \"false\" counts as true)",
            f"write \"disable_log_stats\": false in {rel}", "model-json"))
    if "quantization" in args and not (args["quantization"] is None
                                       or isinstance(args["quantization"], str)):
        findings.append(error_finding(
            rel, f"{rel}: quantization must be a string such as \"fp8\", "
            f"not {args['quantization']!r}",
            f"set \"quantization\": \"fp8\" in {rel}, or remove it", "model-json"))
    return findings


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


def check_quantization(rel: str, args: dict[str, Any]) -> list[Finding]:
    """A quantization method that reads pre-quantized weights needs a pre-quantized checkpoint."""
    method = args.get("quantization")
    model = args.get("model")
    if not isinstance(method, str) or not isinstance(model, str):
        return []
    key = method.strip().lower()
    if key in DYNAMIC_QUANTIZATION:
        return []
    if key in MAYBE_DYNAMIC_QUANTIZATION:
        return [warning_finding(
            rel, f"{rel} asks for \"{method}\": vLLM either loads a bitsandbytes checkpoint or "
            "quantizes in flight, which it supports for some architectures only",
            f"check that this vLLM version quantizes {model} in flight, or use "
            "\"quantization\": \"fp8\" (dynamic, on GPUs of compute capability 8.9+)",
            "quantization")]
    if key not in PREQUANTIZED_QUANTIZATION:
        return [warning_finding(
            rel, f"{rel} asks for quantization \"{method}\", a method this checker does not "
            "know: vLLM refuses names outside its registry",
            f"check the name against vLLM's quantization methods, e.g. \"fp8\"", "quantization")]
    prequantized = _is_prequantized(model)
    fix = (f"use \"quantization\": \"fp8\" in {rel} (vLLM quantizes the 16-bit weights while "
           f"loading), or point \"model\" at a checkpoint quantized with {method}")
    if prequantized is None:
        return [warning_finding(
            rel, f"{rel} asks for \"{method}\", which needs a checkpoint quantized beforehand; "
            f"the local path {model} is not here, so this cannot be verified", fix,
            "quantization")]
    if prequantized:
        return []
    return [error_finding(
        rel, f"{rel} asks for \"{method}\", which reads weights quantized beforehand, but "
        f"{model} does not look pre-quantized (no quantization marker in its name, no "
        f"quantization_config): vLLM fails at load (\"Cannot find the config file for "
        f"{method}\")", fix, "quantization")]


def _images_per_prompt(args: dict[str, Any]) -> int:
    """Images allowed per prompt by limit_mm_per_prompt (vLLM's default is 1)."""
    limit = args.get("limit_mm_per_prompt")
    if isinstance(limit, dict) and is_positive_int(limit.get("image")):
        return int(limit["image"])
    if isinstance(limit, dict) and limit.get("image") == 0:
        return 0
    return 1


def check_image_tokens(rel: str, args: dict[str, Any]) -> list[Finding]:
    """The largest allowed image (Qwen2-VL: one token per 28x28 px) must fit in max_model_len."""
    max_len = args.get("max_model_len")
    images = _images_per_prompt(args)
    if not is_positive_int(max_len) or images == 0:
        return []
    kwargs = args.get("mm_processor_kwargs")
    max_pixels = kwargs.get("max_pixels") if isinstance(kwargs, dict) else None
    if max_pixels is None:
        if "limit_mm_per_prompt" not in args:
            return []  # not declared as an image model: nothing to say
        return [warning_finding(
            rel, f"{rel} allows images but sets no mm_processor_kwargs.max_pixels: the image "
            "processor's own default bound applies, and a full-size photo can then need more "
            f"visual tokens than max_model_len {max_len} and be refused",
            f"add \"mm_processor_kwargs\": {{\"max_pixels\": "
            f"{_suggest_max_pixels(max_len, images)}}} to {rel}", "image-tokens")]
    if not is_positive_int(max_pixels):
        return [error_finding(rel, f"{rel}: mm_processor_kwargs.max_pixels must be a positive integer, "
                              f"not {max_pixels!r}",
                              f"set it to {_suggest_max_pixels(max_len, images)}", "model-json")]
    tokens = max_pixels // PIXELS_PER_VISUAL_TOKEN * images
    if tokens < max_len:
        return []
    return [error_finding(
        rel, f"{rel}: max_pixels {max_pixels} allows {tokens} visual tokens per prompt "
        f"({images} image(s), one token per 28x28 px), not less than max_model_len {max_len}: "
        "a large image leaves no room for the prompt and the answer",
        f"lower max_pixels to {_suggest_max_pixels(max_len, images)} or raise max_model_len",
        "image-tokens")]


def _suggest_max_pixels(max_len: int, images: int) -> int:
    """A max_pixels that leaves a third of max_model_len for text, in whole 28x28 tokens."""
    tokens = max(1, (max_len * 2 // 3) // max(images, 1))
    return tokens * PIXELS_PER_VISUAL_TOKEN


def check_metrics(root: Path, model: RepoModel) -> list[Finding]:
    """REPORT_CUSTOM_METRICS on needs disable_log_stats false in every model.json."""
    assert model.config is not None
    rel_config = rel_path(root, model.folder / CONFIG_FILE)
    params = model.config.parameters
    if METRICS_PARAMETER not in params:
        return []
    value = params[METRICS_PARAMETER].string_value
    if value.strip().lower() != TRUE_PARAMETER:
        if value.strip().lower() == "false":
            return []
        return [warning_finding(
            rel_config, f"{rel_config} sets {METRICS_PARAMETER} to \"{value}\": the vLLM "
            f"backend turns metrics on only for \"{TRUE_PARAMETER}\", so they stay off",
            f"set string_value: \"{TRUE_PARAMETER}\" in {rel_config}", "metrics")]
    findings = []
    for number in sorted(model.versions):
        args = model.versions[number].engine_args
        if args is None:
            continue
        rel = rel_path(root, model.versions[number].folder / ENGINE_ARGS_FILE)
        stats = args.get("disable_log_stats")
        if stats is True:
            findings.append(warning_finding(
                rel, f"{rel} sets disable_log_stats true while {rel_config} turns "
                f"{METRICS_PARAMETER} on: vLLM metrics of version {number} will not reach "
                "the metrics port", f"set \"disable_log_stats\": false in {rel}", "metrics"))
        elif "disable_log_stats" not in args:
            findings.append(warning_finding(
                rel, f"{rel} does not set disable_log_stats while {rel_config} turns "
                f"{METRICS_PARAMETER} on: version {number} exports vLLM metrics only if "
                "stats logging is on, and that is left to the vLLM version's default",
                f"add \"disable_log_stats\": false to {rel}", "metrics"))
    return findings
