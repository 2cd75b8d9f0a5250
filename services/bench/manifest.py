"""The benchmark manifest: what a run ran against, stored beside its config in the run's row.

:func:`collect_manifest` is the run's preflight: the server's metadata, the model's versions and
their states (a version not READY ends the run before its first request), the model config as
served, quantization as served (:func:`served_quantization`: the metrics port's ``qwen_engine_*``
gauges, else the embedded server's engine report), the versions' precision labels and whether the
server confirms them (:func:`services.bench.version_labels.check_labels`), the GPUs (:func:`gpu_info`, NVML), the client
libraries and this project's git commit (:func:`client_versions`), and the seeds of the run. Each
part that cannot be read says so under ``"error"`` instead of failing the whole manifest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from services.bench.triton_metrics import metrics_opener, parse_metrics, parse_series_key, read_metrics_text
from services.bench.version_labels import check_labels
from services.client.errors import TritonClientError
from services.client.triton_client import TritonClient
from services.core import settings

if TYPE_CHECKING:  # server_target imports the checkpoint catalog: only where a target is resolved
    from services.bench.runner import BenchmarkConfig
    from services.client.server_target import ServerTarget

MANIFEST_SCHEMA = "qwen-bench-manifest/1"


def _git_commit() -> dict[str, Any] | None:
    root = settings.PROJECT_ROOT
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def client_versions() -> dict[str, Any]:
    """Python, the client libraries and this project's git commit."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "tritonclient": version("tritonclient"), "requests": version("requests"),
            "numpy": version("numpy"), "grpcio": version("grpcio"), "git": _git_commit(),
            "host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count()}


def gpu_info() -> dict[str, Any] | str:
    """GPU names, memory and the driver version through NVML, or ``"none"``."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no GPU
        return "none"
    try:
        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"index": i, "name": text(pynvml.nvmlDeviceGetName(h)),
                         "uuid": text(pynvml.nvmlDeviceGetUUID(h)),
                         "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total)})
        info = {"driver": text(pynvml.nvmlSystemGetDriverVersion()), "gpus": gpus}
        try:
            info["cuda_driver"] = int(pynvml.nvmlSystemGetCudaDriverVersion())
        except Exception:
            pass
        return info if gpus else "none"
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def quantization_from_metrics(metrics_text: str, model: str = settings.MODEL_NAME) -> dict[str, dict[str, Any]]:
    """Per version, what the ``qwen_engine_*`` gauges of the metrics port say the engine applied:
    ``{"precision", "mode", "weight_bytes": {part: bytes}, "quantized_layers"}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_metrics(metrics_text).items():
        name, labels = parse_series_key(key)
        if not name.startswith("qwen_engine_") or labels.get("model", model) != model or "version" not in labels:
            continue
        entry = out.setdefault(labels["version"], {"weight_bytes": {}})
        for label in ("precision", "mode", "engine"):
            if label in labels:
                entry[label] = labels[label]
        if name == "qwen_engine_weight_bytes":
            entry["weight_bytes"][labels.get("part", "total")] = int(value)
        elif name == "qwen_engine_quantized_layers":
            entry["quantized_layers"] = int(value)
        else:
            entry[name[len("qwen_engine_"):]] = value
    return out


def served_engine(target: "ServerTarget", quantization: dict[str, Any]) -> dict[str, Any]:
    """Which engine serves the run: ``QWEN_ENGINE`` for the embedded server, what each version's
    gauges say (``engine`` label: the vLLM model's), and what each version serves
    (``settings.version_precisions``: version 2 of vLLM on the CPU is the int8 W8A8 stand-in)."""
    per_version = {v: q.get("engine") for v, q in quantization.items() if isinstance(q, dict) and "engine" in q}
    return {"setting": settings.engine() if target.embedded else None, "versions": per_version,
            "precisions": settings.version_precisions()}


def served_quantization(target: "ServerTarget", versions: Sequence[str],
                        model: str = settings.MODEL_NAME) -> dict[str, Any]:
    """Quantization as served, per version: the metrics port's ``qwen_engine_*`` gauges when present,
    else the embedded server's engine report (``<repository>/<model>/<v>/engine_report.json``, what
    ``EmbeddedTriton.engine_report`` reads), else ``"unknown"``. Each entry says its ``source``."""
    from_metrics: dict[str, dict[str, Any]] = {}
    metrics_error = None
    if target.metrics_url:
        try:
            text = read_metrics_text(metrics_opener(), target.metrics_url, timeout_s=3.0)
            from_metrics = quantization_from_metrics(text, model)
        except Exception as exc:
            metrics_error = f"{type(exc).__name__}: {exc}"
    out: dict[str, Any] = {}
    for v in versions:
        if v in from_metrics:
            out[v] = {"source": "metrics", **from_metrics[v]}
            continue
        _, report = _version_files(target, model, v)
        out[v] = {"source": "engine_report", **report} if report is not None else "unknown"
    if metrics_error:
        out["metrics_error"] = metrics_error
    return out


def target_dict(target: "ServerTarget") -> dict[str, Any]:
    """The server target as JSON-ready data (paths as text)."""
    checkpoint = None
    if target.checkpoint is not None:
        checkpoint = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(target.checkpoint).items()}
    return {"label": target.label, "http_url": target.http_url, "grpc_url": target.grpc_url,
            "metrics_url": target.metrics_url, "protocol": target.protocol, "embedded": target.embedded,
            "server_pid": target.server_pid, "repository": None if target.repository is None else str(target.repository),
            "checkpoint": checkpoint}


def collect_manifest(client: TritonClient, target: "ServerTarget",
                     config: "BenchmarkConfig") -> tuple[dict[str, Any], str | None]:
    """What the run runs against (see the module docstring), and the preflight error if the run
    cannot start (server unreachable, a version not READY). Each part that cannot be read says so
    under ``"error"`` instead of failing the whole manifest."""
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "target": target_dict(target),
        "protocol": client.protocol,
        "url": client.url,
    }
    error = None
    try:
        info = client.server_info()
        manifest["server"] = {"name": info.name, "version": info.version, "extensions": info.extensions,
                              "live": info.live, "ready": info.ready}
    except TritonClientError as exc:
        manifest["server"] = {"error": str(exc)}
        error = str(exc)
    if error is None:
        try:
            states = client.versions()
            manifest["model"] = {"name": client.model,
                                 "versions": [dataclasses.asdict(s) for s in states]}
            by_version = {s.version: s for s in states}
            for v in config.versions:
                state = by_version.get(v)
                if state is None:
                    known = ", ".join(sorted(by_version)) or "none"
                    error = (f"version {v} of model '{client.model}' is not in the server's repository "
                             f"(versions there: {known})")
                elif not state.ready:
                    error = (f"version {v} of model '{client.model}' is not ready on the server (state "
                             f"{state.state}{': ' + state.reason if state.reason else ''})")
                if error:
                    break
        except TritonClientError as exc:
            manifest["model"] = {"name": client.model, "error": str(exc)}
            error = str(exc)
        try:
            manifest.setdefault("model", {"name": client.model})["config"] = client.model_config()
        except TritonClientError as exc:
            manifest.setdefault("model", {"name": client.model})["config"] = {"error": str(exc)}
        manifest["quantization"] = served_quantization(target, config.versions, client.model)
        manifest["labels"] = check_labels(target, config.versions, manifest, client.model)
    else:
        manifest["quantization"] = {v: "unknown" for v in config.versions}
    manifest["engine"] = served_engine(target, manifest["quantization"])
    manifest["gpu"] = gpu_info()
    manifest["client"] = client_versions()
    manifest["seeds"] = {"arrivals": config.seed if config.load == "open" else None,
                         "sampling": config.seed if config.temperature > 0 else None,
                         "image_set": config.image_set.seed if config.image_set.kind == "generated" else None}
    return manifest, error


def address_error_manifest(target: "ServerTarget", error: str) -> dict[str, Any]:
    """The manifest of a run whose server address the client refuses: the target, the error and
    the client side (nothing could be asked of the server)."""
    return {"schema": MANIFEST_SCHEMA, "target": target_dict(target), "server": {"error": error},
            "client": client_versions()}


def _version_files(target: "ServerTarget", model: str, version: str) -> tuple[dict | None, dict | None]:
    """The embedded server's ``model.json`` and ``engine_report.json`` of a version (None: unknown)."""
    out: list[dict | None] = []
    for name in ("model.json", "engine_report.json"):
        data = None
        if target.embedded and target.repository is not None:
            try:
                data = json.loads((Path(target.repository) / model / version / name).read_text())
            except (OSError, json.JSONDecodeError):
                data = None
        out.append(data if isinstance(data, dict) else None)
    return out[0], out[1]


def prefix_caching(target: "ServerTarget", versions: Sequence[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """The engine's prefix / image caching per version, where known: ``{"enabled": bool | None,
    "source": ...}``. From what the engine configured (the embedded vLLM engine's report:
    ``enable_prefix_caching`` of its ``cache_config``); else the version's ``model.json``
    (``enable_prefix_caching``); else vLLM's default (on, in the V1 engine) where the backend or
    engine is vLLM; else off for the embedded transformers engine, which keeps nothing between
    requests; else unknown."""
    model = str((manifest.get("model") or {}).get("name") or settings.MODEL_NAME)
    config = (manifest.get("model") or {}).get("config")
    backend = config.get("backend") if isinstance(config, dict) else None
    out: dict[str, Any] = {}
    for v in versions:
        args, report = _version_files(target, model, v)
        engine = (report or {}).get("engine")
        if engine == "vllm" and isinstance((report or {}).get("enable_prefix_caching"), bool):
            out[v] = {"enabled": report["enable_prefix_caching"],
                      "source": "the engine's report (vLLM's cache_config.enable_prefix_caching)"}
        elif args is not None and "enable_prefix_caching" in args:
            out[v] = {"enabled": bool(args["enable_prefix_caching"]), "source": "model.json enable_prefix_caching"}
        elif backend == "vllm" or engine == "vllm":
            out[v] = {"enabled": True, "source": "vLLM's default (the V1 engine caches prefixes and images "
                                                 "unless enable_prefix_caching is false)"}
        elif report is not None and engine in (None, "transformers"):
            out[v] = {"enabled": False, "source": "the embedded transformers engine keeps no cache between requests"}
        else:
            out[v] = {"enabled": None, "source": "unknown: the server does not say"}
    return out
