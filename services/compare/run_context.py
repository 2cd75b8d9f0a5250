"""What a comparison's numbers were measured on, in words: model and checkpoint, hardware, server and
engine, quantization as served, and the workload, from each run's manifest and config.

So that "fp8 24% slower" read alone cannot pass for a claim about another model or machine. Every
field comes from what the run recorded (:mod:`services.bench.manifest`, the run's config); what it
did not record is "unknown", with why where that is known. When the two sides come from two runs
that differ in a field, the field names both.
"""

from __future__ import annotations

from typing import Any, Mapping

from services.compare.comparison import Comparison
from services.compare.manifest_fields import first_number, first_str, lookup, manifest_gpus, server_backend, version_entry
from services.core.units import format_bytes
from services.core.versions import version_label

UNKNOWN = "unknown"


def _params(n: Any) -> str:
    n = first_number(n)
    if n is None:
        return ""
    return f"{n / 1e9:.1f} B parameters" if n >= 1e9 else f"{n / 1e6:.1f} M parameters"


def model_and_checkpoint(manifest: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    model = first_str(lookup(manifest, "model", "name"), config.get("model")) or UNKNOWN
    ck = lookup(manifest, "target", "checkpoint")
    if isinstance(ck, Mapping) and ck.get("path"):
        extra = ", ".join(x for x in (str(ck.get("kind") or ""), _params(ck.get("parameters"))) if x)
        return f"model '{model}' serving the checkpoint {ck['path']}" + (f" ({extra})" if extra else "")
    if lookup(manifest, "target", "embedded") is False:
        return f"model '{model}'; checkpoint unknown (an external server: which checkpoint it serves is not recorded)"
    return f"model '{model}'; checkpoint unknown (not recorded)"


def hardware(manifest: Mapping[str, Any]) -> str:
    gpus = manifest_gpus(manifest)
    host = lookup(manifest, "client", "host")
    cpus = lookup(manifest, "client", "cpus")
    where = f"benchmark host {host}" + (f" ({cpus} CPUs)" if cpus else "") if host else "the benchmark host"
    if gpus:
        names = ", ".join(f"{g.get('name') or 'GPU'}" + (f" ({format_bytes(g['memory_total_bytes'])})"
                                                         if g.get("memory_total_bytes") else "") for g in gpus)
        driver = lookup(manifest, "gpu", "driver")
        return f"{names}" + (f", driver {driver}" if driver else "") + f" on the {where}"
    devices = sorted({str(version_entry(manifest, v).get("device")) for v in (manifest.get("quantization") or {})
                      if version_entry(manifest, v).get("device")})
    if manifest.get("gpu") == "none":
        text = f"no GPU on the {where} (NVML found none)"
        if not lookup(manifest, "target", "embedded"):
            text += "; the server's own host is not recorded unless it is this one"
        return text + (f"; the engine ran on: {', '.join(devices)}" if devices else "")
    if devices:
        return f"the engine ran on: {', '.join(devices)}; GPUs of the {where} not recorded"
    return f"{UNKNOWN} (no GPU reading was recorded)"


def server_and_engine(manifest: Mapping[str, Any]) -> str:
    name, version = lookup(manifest, "server", "name"), lookup(manifest, "server", "version")
    server = f"{name or 'server'} {version}".strip() if (name or version) else f"server {UNKNOWN}"
    if name == "triton":
        server = f"Triton Inference Server {version or '(version unknown)'}"
    where = lookup(manifest, "target", "label") or first_str(manifest.get("url")) or ""
    backend = server_backend(manifest)
    engines = sorted({str(version_entry(manifest, v).get("engine")) for v in (manifest.get("quantization") or {})
                      if version_entry(manifest, v).get("engine")})
    if engines:
        engine = ", ".join(engines)
    elif backend == "vllm":
        engine = "vLLM (Triton's vLLM backend)"
    elif backend:
        engine = f"{backend} backend; engine {UNKNOWN} (not recorded)"
    else:
        engine = UNKNOWN
    return f"{server}" + (f" ({where})" if where else "") + f"; engine: {engine}"


def quantization(manifest: Mapping[str, Any], version: str) -> str:
    entry = version_entry(manifest, version)
    if not entry:
        return f"{version_label(version)}: {UNKNOWN} (not recorded)"
    precision = first_str(entry.get("precision"), entry.get("dtype"))
    mode = first_str(entry.get("mode"))
    parts = [precision or UNKNOWN]
    if mode and mode != "none":
        parts.append(f"mode {mode}")
    layers = first_number(entry.get("quantized_layers"))
    if layers:
        parts.append(f"{layers:.0f} layers quantized")
    weights = first_number(lookup(entry, "weight_bytes", "model"), entry.get("model_weight_bytes_after"))
    if weights is not None:
        parts.append(f"weights {format_bytes(weights)}")
    source = {"metrics": "the server's qwen_engine_* gauges", "engine_report": "the engine's report"}.get(
        str(entry.get("source")), "")
    return f"{version_label(version)}: {', '.join(parts)}" + (f" (from {source})" if source else "")


def workload(config: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    images = manifest.get("image_set") if isinstance(manifest.get("image_set"), Mapping) else config.get("image_set")
    images = images if isinstance(images, Mapping) else {}
    kind = images.get("kind")
    if kind == "generated":
        what = f"{images.get('count', '?')} generated label images (seed {images.get('seed')})"
    elif kind == "folder":
        what = f"{images.get('count', '?')} images from {images.get('folder')}"
    elif kind:
        what = f"{images.get('count', '?')} {kind} images"
    else:
        what = f"images {UNKNOWN}"
    if images.get("max_side"):
        what += f", longest side {images['max_side']} px"
    parts = [what]
    if config.get("requests") is not None:
        parts.append(f"{config['requests']} measured requests per version after {config.get('warmup', 0)} warm-up")
    load = config.get("load")
    if load == "closed":
        parts.append(f"closed loop, concurrency {config.get('concurrency')}")
    elif load == "open":
        parts.append(f"open loop, Poisson arrivals at {config.get('rate')} requests/s")
    else:
        parts.append(f"load {UNKNOWN}")
    parts.append(f"max {config['max_tokens']} tokens" if config.get("max_tokens") is not None else f"max tokens {UNKNOWN}")
    if config.get("temperature") is not None:
        parts.append(f"temperature {config['temperature']:g}")
    if config.get("stream") is not None:
        parts.append("streaming" if config["stream"] else "not streaming")
    return "; ".join(parts)


def _per_run(c: Comparison, describe: Any) -> str:
    """One text when every run gives the same, else each side's."""
    runs = {r["id"]: r for r in c.runs}
    texts = {side.run_id: describe(runs.get(side.run_id, {})) for side in (c.a, c.b)}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{side.label} (run {side.run_id}): {texts[side.run_id]}" for side in (c.a, c.b))


def _manifest(run: Mapping[str, Any]) -> Mapping[str, Any]:
    m = run.get("manifest")
    return m if isinstance(m, Mapping) else {}


def _config(run: Mapping[str, Any]) -> Mapping[str, Any]:
    m = run.get("config")
    return m if isinstance(m, Mapping) else {}


KIND_NAMES = {"triton": "Triton", "openai": "OpenAI-compatible server"}


def variant_text(manifest: Mapping[str, Any], key: str) -> str | None:
    """``bf16-vllm: OpenAI-compatible server at http://127.0.0.1:8000, model 'demo-detector-bf16'`` (or
    ``bf16: embedded Triton at 127.0.0.1:8000, model 'qwen', version 1`` on the run's own server) for
    a variant the run's manifest names (``manifest["variants"]``); None for a run that recorded none."""
    entries = manifest.get("variants")
    entry = next((v for v in entries if isinstance(v, Mapping) and v.get("key") == key), None) \
        if isinstance(entries, list) else None
    if entry is None:
        return None
    kind = KIND_NAMES.get(str(entry.get("kind")), str(entry.get("kind") or UNKNOWN))
    url, target = first_str(entry.get("url")), first_str(lookup(entry, "target", "label"))
    # the run's own Triton has no URL of its own: its target's label says where ("embedded Triton at ...")
    where = f"{kind} at {url}" if url else target or f"{kind} (the run's server)"
    what = f"model '{entry.get('model') or UNKNOWN}'"
    if entry.get("kind") == "triton" and entry.get("version"):
        what += f", version {entry['version']}"
    return f"{entry.get('label') or key}: {where}, {what}"


def variants_row(c: Comparison) -> tuple[str, str] | None:
    """("Variants", each side's variant in words) when the runs recorded variants, else None."""
    runs = {r["id"]: r for r in c.runs}
    texts = [variant_text(_manifest(runs.get(s.run_id, {})), s.version) for s in (c.a, c.b)]
    if not any(texts):
        return None
    return ("Variants", "; ".join(t or f"{s.label}: {UNKNOWN} (not recorded)" for t, s in zip(texts, (c.a, c.b))))


def context_rows(c: Comparison) -> list[tuple[str, str]]:
    """(what, in words) for the variants (label, kind, URL, model; where recorded), model and
    checkpoint, hardware, server and engine, quantization as served (each side), and workload."""
    runs = {r["id"]: r for r in c.runs}
    quant = "; ".join(quantization(_manifest(runs.get(s.run_id, {})), s.version) for s in (c.a, c.b))
    variants = variants_row(c)
    return ([variants] if variants else []) + [
        ("Model and checkpoint", _per_run(c, lambda r: model_and_checkpoint(_manifest(r), _config(r)))),
        ("Hardware", _per_run(c, lambda r: hardware(_manifest(r)))),
        ("Server and engine", _per_run(c, lambda r: server_and_engine(_manifest(r)))),
        ("Quantization as served", quant),
        ("Workload", _per_run(c, lambda r: workload(_config(r), _manifest(r)))),
    ]
