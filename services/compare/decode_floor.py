"""Decode against the floor: measured time per output token beside the memory-bandwidth limit.

The memory-bandwidth floor of one decode step is the weight bytes read per step divided by
the GPU's memory bandwidth (:data:`GPU_BANDWIDTHS`, or a bandwidth measured and recorded in the
manifest). The fraction floor / measured TPOT says how close the serving stack gets to the
hardware. On a CPU-only run the floor does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit
from typing import Any, Mapping, Sequence

import numpy as np

from services.compare.manifest_fields import first_number, first_str, lookup, manifest_gpus, version_entry


@dataclass(frozen=True)
class GpuBandwidth:
    """Memory bandwidth of a GPU model: the datasheet value, and one measured where known."""

    match: str  # lower-case substring of the NVML name
    name: str
    datasheet_bytes_per_s: float
    measured_bytes_per_s: float | None = None
    measured_note: str | None = None


# Most specific first: "a100" contains "a10", "l40s" contains "l4", "h100 pcie" contains "h100".
GPU_BANDWIDTHS: tuple[GpuBandwidth, ...] = (
    GpuBandwidth("h100 nvl", "H100 NVL", 3.9e12),
    GpuBandwidth("h100 pcie", "H100 PCIe", 2.0e12),
    GpuBandwidth("h100", "H100 SXM 80GB", 3.35e12, 3.0e12,
                 "measured here: device-to-device copy (docs/gpu-notes.md)"),
    GpuBandwidth("h200", "H200", 4.8e12),
    GpuBandwidth("h20", "H20", 4.0e12),
    GpuBandwidth("a100-sxm4-80gb", "A100 SXM 80GB", 2.039e12),
    GpuBandwidth("a100 80gb pcie", "A100 PCIe 80GB", 1.935e12),
    GpuBandwidth("a100", "A100 40GB", 1.555e12),
    GpuBandwidth("l40s", "L40S", 0.864e12),
    GpuBandwidth("l40", "L40", 0.864e12),
    GpuBandwidth("l4", "L4", 0.300e12),
    GpuBandwidth("a10g", "A10G", 0.600e12),
    GpuBandwidth("a10", "A10", 0.600e12),
    GpuBandwidth("rtx 4090", "GeForce RTX 4090", 1.008e12),
    GpuBandwidth("t4", "T4", 0.320e12),
)


def known_gpu(name: str | None) -> GpuBandwidth | None:
    """The table entry of a GPU by its NVML name (``"NVIDIA H100 80GB HBM3"``), or None."""
    if not name:
        return None
    low = name.lower()
    return next((g for g in GPU_BANDWIDTHS if g.match in low), None)


@dataclass
class DecodeFloor:
    """Measured time per output token beside the memory-bandwidth floor of one decode step.

    ``fraction`` = ``floor_ms / measured_tpot_ms`` (1.0 would be the hardware's limit).
    ``lower_floor_ms``: the floor from the decoder's linear layers alone (bytes certainly read at
    every step); ``floor_ms`` counts all weight bytes (the vision tower too, which decode does
    not read: an upper estimate of the bytes read).
    """

    applicable: bool | None  # None: unknown
    reason: str
    gpu_name: str | None
    bandwidth_bytes_per_s: float | None
    bandwidth_source: str
    datasheet_bytes_per_s: float | None
    weight_bytes: int | None
    floor_ms: float | None
    lower_floor_ms: float | None
    measured_tpot_ms: float | None  # median over successful requests
    fraction: float | None
    lower_fraction: float | None


def run_gpu(manifest: Mapping[str, Any], version: str) -> tuple[str | None, bool | None]:
    """(GPU name, whether the version ran on a GPU), from the run manifest.

    The manifest's GPUs are NVML's view of the benchmark's own host: they are the server's GPUs
    for the embedded server, or an external one at a loopback address or this host's name (same
    host), and say nothing about another host's. CPU-only: the engine reported device ``cpu``, or
    the server's host is the benchmark's and has no GPU. Unknown (None): a server on a host whose
    GPU the manifest cannot see.
    """
    device = str(version_entry(manifest, version).get("device") or "").lower()
    embedded = bool(lookup(manifest, "target", "embedded")) or _server_on_this_host(manifest)
    name = first_str(*(g.get("name") for g in manifest_gpus(manifest)))
    if device.startswith("cpu"):
        return None, False
    if embedded:
        return (name, True) if name else (None, False if manifest.get("gpu") == "none" else None)
    if device.startswith("cuda"):
        return name, True
    return None, None


def _server_on_this_host(manifest: Mapping[str, Any]) -> bool:
    """Whether the run's server listened on the benchmark's own host (loopback, or the host's name)."""
    url = first_str(lookup(manifest, "target", "http_url"), manifest.get("url")) or ""
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or (bool(host) and host == lookup(manifest, "client", "host"))


def decode_floor(tpot_values: Sequence[float], weights: int | None, decoder_linear: int | None,
                 gpu_name: str | None, has_gpu: bool | None,
                 measured_bandwidth: float | None = None) -> DecodeFloor:
    """The floor and the fraction of it the measured TPOT reaches (see :class:`DecodeFloor`)."""
    tpot = float(np.median(tpot_values)) if len(tpot_values) else None
    entry = known_gpu(gpu_name)
    base = dict(gpu_name=gpu_name, weight_bytes=weights, measured_tpot_ms=tpot,
                datasheet_bytes_per_s=entry.datasheet_bytes_per_s if entry else None)
    none = dict(floor_ms=None, lower_floor_ms=None, fraction=None, lower_fraction=None)
    if has_gpu is False:
        return DecodeFloor(False, "not applicable: a CPU-only run (no GPU memory bandwidth to compare "
                                  "with)", bandwidth_bytes_per_s=None, bandwidth_source="none", **base, **none)
    if measured_bandwidth:
        bw, src = float(measured_bandwidth), "measured and recorded in the run manifest"
    elif entry and entry.measured_bytes_per_s:
        bw, src = entry.measured_bytes_per_s, f"{entry.name}: {entry.measured_note}"
    elif entry:
        bw, src = entry.datasheet_bytes_per_s, f"{entry.name} datasheet"
    else:
        bw, src = None, "unknown"
    missing = []
    if bw is None:
        missing.append("the GPU's bandwidth" + (f" ({gpu_name} is not in the table)" if gpu_name else
                                                " (the GPU was not recorded)"))
    if weights is None:
        missing.append("the weight bytes")
    if missing:
        return DecodeFloor(None, "unknown: " + " and ".join(missing) + " not known",
                           bandwidth_bytes_per_s=bw, bandwidth_source=src, **base, **none)
    floor = weights / bw * 1e3  # type: ignore[operator]
    lower = decoder_linear / bw * 1e3 if decoder_linear else None  # type: ignore[operator]
    reason = "measured TPOT vs weight bytes / bandwidth"
    if tpot is None:
        reason = "no measured TPOT (no request with a TTFT and 2 or more output tokens)"
    return DecodeFloor(True, reason, bandwidth_bytes_per_s=bw, bandwidth_source=src, floor_ms=floor,
                       lower_floor_ms=lower,
                       fraction=floor / tpot if tpot else None,
                       lower_fraction=lower / tpot if (tpot and lower) else None, **base)


def measured_bandwidth(manifest: Mapping[str, Any]) -> float | None:
    """A memory bandwidth measured on the run's GPU and recorded in the manifest, if any."""
    return first_number(lookup(manifest, "gpu", "measured_bandwidth_bytes_per_s"),
                        *(g.get("measured_bandwidth_bytes_per_s") for g in manifest_gpus(manifest)))


def run_decode_floor(manifest: Mapping[str, Any], version: str, tpot_values: Sequence[float],
                     weights: int | None, decoder_linear: int | None) -> DecodeFloor:
    """:func:`decode_floor` of one version of a run: its GPU and any measured bandwidth from the manifest."""
    gpu_name, has_gpu = run_gpu(manifest, version)
    return decode_floor(tpot_values, weights, decoder_linear, gpu_name, has_gpu, measured_bandwidth(manifest))
