"""The manifest of a run on variants (``services.client.variants``): what each variant is and whether it answered.

:func:`variants_manifest` is the preflight of a run on variants: the Triton manifest of the run's
main server as before (:func:`services.bench.manifest.collect_manifest`, on the versions of the
variants it serves; its per-version entries re-keyed to the variants' keys), plus, for every
variant, what it is (kind, url, model, version, label) and whether it answered: its server's
readiness and whether it serves the model (the client's ``is_model_ready``). A variant that does
not answer ends the run before its first request, with its reason.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

from services.bench.manifest import MANIFEST_SCHEMA, client_versions, collect_manifest, gpu_info, target_dict
from services.client.errors import TritonClientError
from services.client.variants import Variant, VariantClients, is_default_set, remote_version

if TYPE_CHECKING:
    from services.bench.runner import BenchmarkConfig


def _rekey(entries: Any, keys: dict[str, str]) -> Any:
    """A per-version mapping re-keyed by the variants' keys (entries of other versions dropped)."""
    if not isinstance(entries, dict):
        return entries
    return {key: entries[version] for version, key in keys.items() if version in entries}


def _preflight(variant: Variant, client: Any) -> tuple[dict[str, Any], str | None]:
    """Whether a variant's server answers and serves its model (and version)."""
    entry: dict[str, Any] = {}
    try:
        info = client.server_info()
        entry["server"] = {"name": getattr(info, "name", ""), "version": getattr(info, "version", ""),
                           "live": getattr(info, "live", None), "ready": getattr(info, "ready", None)}
        if variant.kind == "triton":
            ready, reason = bool(client.is_model_ready(remote_version(variant))), ""
        else:  # one entry: the model, READY when the server lists it, else why not (what it serves)
            state = client.versions()[0]
            ready, reason = bool(state.ready), state.reason
    except TritonClientError as exc:  # the OpenAI client's errors share the base class
        entry["error"] = str(exc)
        return entry, f"variant {variant.label}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any client's own failure: the run cannot start
        entry["error"] = f"{type(exc).__name__}: {exc}"
        return entry, f"variant {variant.label}: {entry['error']}"
    entry["model_ready"] = ready
    if not ready:
        what = f"version {variant.version} of model '{variant.model}'" if variant.kind == "triton" \
            else f"model '{variant.model}'"
        return entry, (f"variant {variant.label}: {what} is not served ready at {variant.url or 'the run server'}"
                       + (f": {reason}" if reason else ""))
    return entry, None


def _kv_room(manifest: dict[str, Any], entry: dict[str, Any], variant: Variant, metrics_url: str | None) -> None:
    """An OpenAI variant's KV-cache room from its server's ``/metrics`` (``vllm:cache_config_info``), where
    capacity reads a Triton engine's ``qwen_engine_kv_cache_tokens``: ``manifest["quantization"][key]``;
    the variant's entry keeps it as ``kv_cache`` (or why it is unknown)."""
    from services.client.openai_metrics import MetricsUnreadable, read_vllm_metrics

    try:
        facts: dict[str, Any] = read_vllm_metrics(metrics_url or variant.url, timeout_s=5.0,
                                                  model_name=variant.model).cache_facts()
    except MetricsUnreadable as exc:
        entry["kv_cache"] = {"error": str(exc)}
        return
    entry["kv_cache"] = facts
    if not isinstance(manifest.get("quantization"), dict):
        manifest["quantization"] = {}
    manifest["quantization"][variant.key] = {**manifest["quantization"].get(variant.key, {}), **facts}


def variants_manifest(clients: VariantClients, admin: Any, config: "BenchmarkConfig",
                      ) -> tuple[dict[str, Any], str | None]:
    """The run's manifest and its preflight error (see the module docstring). ``admin``: a client of the
    primary variant's server with the preflight's short timeout."""
    primary = clients.primary
    target = clients.targets[primary.key]
    variants = list(clients.variants.values())
    if primary.kind == "triton":
        same = [v for v in variants if v.kind == "triton" and clients.targets[v.key] == target
                and v.model == primary.model]
        keys = {v.version: v.key for v in same}
        manifest, error = collect_manifest(admin, target, dataclasses.replace(config, versions=tuple(keys)))
        if not is_default_set(variants) and any(k != v for v, k in keys.items()):
            for name in ("quantization",):
                manifest[name] = _rekey(manifest.get(name), keys)
            if isinstance(manifest.get("labels"), dict):
                manifest["labels"]["versions"] = _rekey(manifest["labels"].get("versions"), keys)
    else:
        same, error = [], None
        manifest = {"schema": MANIFEST_SCHEMA, "target": target_dict(target), "protocol": "http",
                    "url": primary.url, "gpu": gpu_info(), "client": client_versions(),
                    "seeds": {"arrivals": config.seed if config.load == "open" else None,
                              "sampling": config.seed if config.temperature > 0 else None,
                              "image_set": config.image_set.seed if config.image_set.kind == "generated" else None}}
    described = []
    for v in variants:
        entry = {**v.describe(), "target": target_dict(clients.targets[v.key])}
        if v not in same:
            check, problem = _preflight(v, clients.client(v.key))
            entry["preflight"] = check
            error = error or problem
            if v.kind == "openai" and problem is None:
                _kv_room(manifest, entry, v, clients.targets[v.key].metrics_url)
        described.append(entry)
    manifest["variants"] = described
    return manifest, error
