"""What each version is called (bf16, fp8), where the name comes from, and whether it is checked.

The dashboard calls version 1 "bf16" and version 2 "fp8" (``services.core.versions``). That is a
name, not a fact: :func:`check_labels` says, per version,

- ``label``: the precision it is called, and ``label_source``: the embedded server's own model
  repository (the ``model.json`` it generated), else the local ``model_repository/`` when it
  matches the served model (same backend, same versions; its ``qwen/<v>/model.json``
  ``quantization``, else its ``dtype``), else the ``QWEN_VERSION_LABELS`` setting (``1=bf16,2=fp8``),
  else the dashboard's default names;
- ``served``: the precision the server states it serves (its ``qwen_engine_*`` gauges or the
  embedded engine's report, recorded under the manifest's ``quantization``), None where the server
  does not say (a stock vLLM server);
- ``status``: ``"verified"`` (label and served precision agree), ``"mismatch"`` or
  ``"unverified"`` (the server does not say).

``flags``: sentences for what is wrong. Where the weight bytes of both are known, a version
labelled fp8 whose weights are not smaller than those of a version labelled bf16 is flagged,
whatever the labels' source. :func:`label_caveats` gives the Compare verdict's caveats from a run's
manifest.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from services.core import settings
from services.core.versions import VERSION_LABELS

LABELS_ENV = "QWEN_VERSION_LABELS"
LOCAL_REPOSITORY = settings.PROJECT_ROOT / "model_repository"
_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32"}


def precision_of_engine_args(args: Mapping[str, Any]) -> str:
    """The precision a ``model.json`` asks for: its ``quantization`` (``fp8``, ``fp8_per_tensor``:
    fp8), else its ``dtype``."""
    quant = args.get("quantization")
    if quant:
        q = str(quant).lower()
        return "fp8" if q.startswith("fp8") else q
    return _DTYPES.get(str(args.get("dtype", "")).lower(), str(args.get("dtype") or "unknown"))


def labels_setting() -> dict[str, str]:
    """``QWEN_VERSION_LABELS`` (``1=bf16,2=fp8``) as ``{version: label}``; empty when unset."""
    out = {}
    for part in os.environ.get(LABELS_ENV, "").split(","):
        if "=" in part:
            v, label = (x.strip() for x in part.split("=", 1))
            if v and label:
                out[v] = label.lower()
    return out


def _repository_labels(root: Path, model: str, versions: Sequence[str]) -> dict[str, str]:
    out = {}
    for v in versions:
        try:
            args = json.loads((root / model / v / "model.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(args, dict):
            out[v] = precision_of_engine_args(args)
    return out


def local_repository_match(root: Path, model: str, manifest: Mapping[str, Any]) -> str | None:
    """Why the local repository describes the served model (None when it does not): the same
    backend in ``config.pbtxt`` and the same version folders as the server's repository index."""
    try:
        config = (root / model / "config.pbtxt").read_text()
    except OSError:
        return None
    found = re.search(r'^\s*backend\s*:\s*"([^"]+)"', config, re.M)
    served = (manifest.get("model") or {}).get("config")
    backend = served.get("backend") if isinstance(served, Mapping) else None
    local_versions = {p.name for p in (root / model).iterdir() if p.is_dir() and p.name.isdigit()}
    served_versions = {str(e.get("version")) for e in (manifest.get("model") or {}).get("versions", [])
                       if isinstance(e, Mapping)}
    if not found or backend != found.group(1) or not served_versions or local_versions != served_versions:
        return None
    return f"{root} (backend {backend}, versions {', '.join(sorted(local_versions))} as served)"


def _served(quantization: Any) -> tuple[str | None, str]:
    if isinstance(quantization, Mapping) and quantization.get("precision"):
        return str(quantization["precision"]).lower(), f"the server's {quantization.get('source', 'report')}"
    return None, "the server does not say"


def _weights(quantization: Any) -> int | None:
    if not isinstance(quantization, Mapping):
        return None
    w = quantization.get("weight_bytes")
    value = w.get("model") if isinstance(w, Mapping) else None
    value = value if value is not None else quantization.get("model_weight_bytes_after")
    return int(value) if isinstance(value, (int, float)) else None


def _labels(target: Any, versions: Sequence[str], manifest: Mapping[str, Any], model: str,
            local_repository: Path) -> tuple[dict[str, str], str]:
    """``({version: label}, where the labels come from)``."""
    if target.embedded and target.repository is not None:
        labels = _repository_labels(Path(target.repository), model, versions)
        if labels:
            return labels, "the embedded server's model repository"
    basis = local_repository_match(local_repository, model, manifest)
    if basis is not None:
        labels = _repository_labels(local_repository, model, versions)
        if labels:
            return labels, f"the local model repository {basis}"
    setting = labels_setting()
    if setting:
        return setting, f"the {LABELS_ENV} setting"
    return dict(VERSION_LABELS), "the dashboard's default names"


def check_labels(target: Any, versions: Sequence[str], manifest: Mapping[str, Any],
                 model: str = settings.MODEL_NAME, local_repository: Path = LOCAL_REPOSITORY) -> dict[str, Any]:
    """The manifest's ``labels`` entry (see the module docstring)."""
    labels, source = _labels(target, versions, manifest, model, local_repository)
    quantization = manifest.get("quantization") or {}
    out: dict[str, Any] = {"source": source, "versions": {}, "flags": []}
    for v in versions:
        label = labels.get(v) or VERSION_LABELS.get(v)
        served, served_source = _served(quantization.get(v))
        status = "unverified" if served is None or label is None else "verified" if served == label else "mismatch"
        out["versions"][v] = {"label": label, "served": served, "served_source": served_source, "status": status,
                              "weight_bytes": _weights(quantization.get(v))}
        if status == "mismatch":
            out["flags"].append(f"Version {v} is labelled {label} ({source}) but the server states it serves {served}.")
    entries = out["versions"]
    for v8, e8 in entries.items():
        for v16, e16 in entries.items():
            if e8["label"] == "fp8" and e16["label"] == "bf16" and None not in (e8["weight_bytes"], e16["weight_bytes"]) \
                    and e8["weight_bytes"] >= e16["weight_bytes"]:
                out["flags"].append(f"Version {v8} is labelled fp8 but its weights ({e8['weight_bytes']:,} bytes) are "
                                    f"not smaller than those of version {v16}, labelled bf16 ({e16['weight_bytes']:,} "
                                    "bytes): it does not serve fp8 weights.")
    return out


def label_caveats(manifest: Mapping[str, Any], versions: Sequence[str]) -> list[str]:
    """The Compare verdict's caveats about the versions' names, from a run's manifest."""
    entry = manifest.get("labels")
    if not isinstance(entry, Mapping):
        return []
    caveats = list(entry.get("flags") or [])
    unverified = [v for v in versions if (entry.get("versions") or {}).get(v, {}).get("status") == "unverified"]
    if unverified:
        caveats.append(f"The precision of version(s) {', '.join(unverified)} is a label from {entry.get('source')}, "
                       "not stated by the server: unverified.")
    return caveats
