"""The repository checker's GPU memory checks.

The engines placed on one GPU (by ``instance_group``, ``GPU_DEVICE_IDS`` and the served versions)
must claim less than ``MAX_SHARED_UTILIZATION`` of it together; with the GPU's size given, each
version's share must hold a lower bound of its weights, estimated from the parameter count in the
model's name.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2

from services.serving.repo_folder_checks import served_versions
from services.serving.repo_layout import (
    ENGINE_ARGS_FILE,
    Finding,
    RepoModel,
    error_finding,
    is_number,
    rel_path,
    warning_finding,
)


# vLLM's EngineArgs.gpu_memory_utilization when model.json sets none.
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# Engines sharing one GPU must leave room outside their shares for Triton's own process and
# each engine's CUDA context: vLLM refuses to start when free memory is below its share.
MAX_SHARED_UTILIZATION = 0.95
# The sum a fix suggests: this repository's 0.50 + 0.40, leaving margin below the limit.
SUGGESTED_SHARED_UTILIZATION = 0.90
GPU_DEVICE_IDS_PARAMETER = "GPU_DEVICE_IDS"
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


def _utilization(args: dict[str, Any]) -> tuple[float | None, bool]:
    """(gpu_memory_utilization, set explicitly); None when the value is invalid."""
    if "gpu_memory_utilization" not in args:
        return VLLM_DEFAULT_GPU_MEMORY_UTILIZATION, False
    value = args["gpu_memory_utilization"]
    if is_number(value) and 0 < value <= 1:
        return float(value), True
    return None, True


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


def _engines_by_gpu(root: Path, models: Sequence[RepoModel]) -> dict[str, list[_Engine]]:
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
            rel = rel_path(root, version.folder / ENGINE_ARGS_FILE)
            for gpu, instances in placement.items():
                by_gpu[gpu].append(_Engine(model.name, number, rel, utilization, explicit,
                                           instances))
    return dict(by_gpu)


def _describe_engine(engine: _Engine) -> str:
    share = f"{engine.utilization:.2f}" + ("" if engine.explicit else
                                           ", vLLM's default: model.json sets none")
    times = f" x {engine.instances} instances" if engine.instances > 1 else ""
    return f"{engine.model}/{engine.version} ({share}{times})"


def check_gpu_memory_sum(root: Path, models: Sequence[RepoModel]) -> list[Finding]:
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
        findings.append(error_finding(
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


def check_weights_fit(root: Path, models: Sequence[RepoModel], gpu_memory_gb: float
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
            rel = rel_path(root, model.versions[number].folder / ENGINE_ARGS_FILE)
            needed = math.ceil(weights / total_bytes * 100) / 100
            findings.append(warning_finding(
                rel, f"{rel}: the share {utilization:.2f} x {gpu_memory_gb:g} GB = "
                f"{share / BYTES_PER_GB:.1f} GB is below the weights alone (at least "
                f"{weights / BYTES_PER_GB:.1f} GB for {basis}): no room for activations and "
                "KV cache", f"raise gpu_memory_utilization in {rel} well above {needed:.2f}",
                "weights-fit"))
    return findings
