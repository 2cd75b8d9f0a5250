"""Lookups in a stored run's manifest and summary (nested mappings that may lack any key).

The manifest is what the benchmark recorded about the run (``services.bench.runner``): the target,
the GPUs NVML saw, the served model's config, and per version what it serves (``quantization``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping


def lookup(d: Any, *path: str) -> Any:
    """``d[path[0]][path[1]]...``, or None where a level is missing or not a mapping."""
    for p in path:
        if not isinstance(d, Mapping) or p not in d:
            return None
        d = d[p]
    return d


def version_entry(manifest: Mapping[str, Any], version: str) -> Mapping[str, Any]:
    """The manifest's record of what one version serves: ``manifest["quantization"][v]`` as
    ``services.bench.runner.served_quantization`` writes it (the ``qwen_engine_*`` gauges:
    ``precision``, ``mode``, ``weight_bytes`` by part; or the embedded engine's report:
    ``model_weight_bytes_after``, ``device``, ...), else empty."""
    entry = lookup(manifest, "quantization", str(version))
    return entry if isinstance(entry, Mapping) else {}


def first_number(*values: Any) -> float | None:
    """The first finite number among ``values`` (bools are not numbers), as a float."""
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def first_str(*values: Any) -> str | None:
    """The first non-empty string among ``values``."""
    for v in values:
        if isinstance(v, str) and v:
            return v
    return None


def manifest_gpus(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The GPUs the manifest lists (``manifest["gpu"]["gpus"]``, NVML on the benchmark's host)."""
    g = lookup(manifest, "gpu", "gpus")
    return [x for x in g if isinstance(x, Mapping)] if isinstance(g, list) else []


def server_backend(manifest: Mapping[str, Any]) -> str:
    """The Triton backend of the served model (``"vllm"``, ``"python"``), lower case, or ``""``."""
    return str(first_str(lookup(manifest, "model", "config", "backend"),
                         lookup(manifest, "model", "config", "platform")) or "").lower()
