"""True GPU memory: the project's sampler against nvidia-smi and against torch's own counters.

    python scripts/gpu_memory_check.py --metrics-url http://127.0.0.1:8002/metrics \\
        [--http-url 127.0.0.1:8000] [--repository DIR] [--comparison-json report.json] [--pairs 5] \\
        [--json memory_check.json]

Run it on the machine of a running Triton serving ``qwen`` (the embedded one: its metrics URL, and
its model repository for the engine reports). It checks, and prints as a table:

1. **Device total, sampler vs nvidia-smi**: ``--pairs`` back-to-back pairs (order alternated) of the
   used memory of each GPU as ``services.bench.sampler.Sampler`` reads it (NVML) and as
   ``nvidia-smi --query-gpu=memory.used`` reports it; PASS when the largest relative difference is
   at most 1 %. NVML's v2 reading (allocated and driver-reserved memory apart) is recorded beside
   it: NVML's v1 ``used`` counts the memory the driver reserves, nvidia-smi's does not, and that
   alone can exceed 1 % (the explanation then says so).
2. **Per process, sampler vs nvidia-smi**: the sampler's per-process GPU memory against
   ``nvidia-smi --query-compute-apps=pid,used_memory`` (PASS within 1 % + 1 MiB, nvidia-smi
   counting in MiB).
3. **Attribution**: each Python-backend stub process mapped to its model version through its
   command line (``.../qwen/<version>/model.py``); tritonserver itself as ``server``; PASS when
   every version the server reports (or 1 and 2) has its process on the GPU.
4. **Per version, the dashboard against torch** (the same functions the Compare page uses:
   ``services.compare.memory.memory_side`` over the sampler's rows): the weights figure (the server's
   ``qwen_engine_weight_bytes{part="model"}`` gauge) against torch's allocated bytes after load
   (``engine_report.json`` -> ``torch_memory_after_load``, else the
   ``qwen_engine_torch_memory_bytes{kind="allocated"}`` gauge); the version's NVML process memory
   against torch's reserved bytes (the difference is the CUDA context, cuBLAS/NCCL handles and
   anything allocated outside torch's caching allocator); the dashboard's "rest" beside it.
   With ``--comparison-json`` (a ``services.compare.report`` JSON) the report's weights/peak/rest
   are put beside the same torch counters.

Every part that cannot be read is reported as such (``null`` and a note), never guessed. Exit status
0 when every check that could run passed, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIB = 2**20
GIB = 2**30
TOLERANCE = 0.01
TORCH_GAUGE = "qwen_engine_torch_memory_bytes"
TORCH_KINDS = ("allocated", "reserved", "max_allocated")


# --------------------------------------------------------------------------- readings


def nvidia_smi(args: Sequence[str], timeout: float = 15.0) -> list[list[str]]:
    """Rows of ``nvidia-smi ARGS --format=csv,noheader,nounits`` as lists of stripped fields."""
    out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"nvidia-smi {' '.join(args)} failed ({out.returncode}): {(out.stderr or out.stdout).strip()}")
    return [[f.strip() for f in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def mib_field(text: str) -> int | None:
    """nvidia-smi's MiB figure as bytes (None for ``[N/A]`` and the like)."""
    try:
        return int(float(text) * MIB)
    except ValueError:
        return None


def smi_device_used() -> dict[int, int]:
    return {int(r[0]): mib_field(r[1]) for r in nvidia_smi(["--query-gpu=index,memory.used"])}


def smi_device_info() -> list[dict[str, Any]]:
    rows = nvidia_smi(["--query-gpu=index,name,driver_version,memory.total,memory.used"])
    info = [{"index": int(r[0]), "name": r[1], "driver": r[2], "total_bytes": mib_field(r[3]),
             "used_bytes": mib_field(r[4])} for r in rows]
    try:  # memory.reserved is a newer query field: asked apart so that an old nvidia-smi breaks nothing
        reserved = {int(r[0]): mib_field(r[1]) for r in nvidia_smi(["--query-gpu=index,memory.reserved"])}
        for g in info:
            g["reserved_bytes"] = reserved.get(g["index"])
    except Exception as exc:
        for g in info:
            g["reserved_bytes"] = None
            g["reserved_note"] = str(exc)
    return info


def smi_processes() -> dict[int, int | None]:
    """``{pid: used bytes}`` of the compute processes nvidia-smi lists (all GPUs summed)."""
    out: dict[int, int | None] = {}
    for r in nvidia_smi(["--query-compute-apps=pid,used_memory"]):
        try:
            pid = int(r[0])
        except ValueError:
            continue
        used = mib_field(r[1]) if len(r) > 1 else None
        out[pid] = (out.get(pid) or 0) + used if used is not None else out.get(pid)
    return out


def nvml_v2() -> dict[int, dict[str, int]]:
    """NVML's v2 memory reading per GPU (used = allocated, reserved apart), where the library has it."""
    import pynvml

    pynvml.nvmlInit()
    try:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            m = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            out[i] = {"used": int(m.used), "reserved": int(m.reserved), "total": int(m.total), "free": int(m.free)}
        return out
    finally:
        pynvml.nvmlShutdown()


# --------------------------------------------------------------------------- pure analysis (tested on CPU)


def rel_diff(a: float | None, b: float | None) -> float | None:
    """|a - b| / b (None when either is unknown or b is 0)."""
    if a is None or b is None or b == 0:
        return None
    return abs(a - b) / b


def own_pids(pids: Iterable[int], repository: str | None, server_pid: int | None) -> set[int]:
    """The pids among ``pids`` that belong to this server: its own, its children, and processes whose
    command line names its model repository. Without ``repository`` and ``server_pid``: all of them."""
    pids = set(pids)
    if not repository and not server_pid:
        return pids
    import psutil

    mine = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if pid == server_pid or (server_pid and server_pid in [a.pid for a in proc.parents()]) or (
                    repository and str(repository) in " ".join(proc.cmdline())):
                mine.add(pid)
        except (psutil.Error, OSError):
            continue
    return mine


def device_check(pairs: Sequence[Mapping[str, Any]], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Sampler vs nvidia-smi over the pairs: the largest relative difference and why, if it is large.

    Each pair: ``gpu``, ``sampler_used``, ``smi_used`` and optionally ``nvml_v2_used`` /
    ``nvml_v2_reserved`` (bytes)."""
    diffs = [d for d in (rel_diff(p.get("sampler_used"), p.get("smi_used")) for p in pairs) if d is not None]
    v2 = [d for d in (rel_diff(p.get("nvml_v2_used"), p.get("smi_used")) for p in pairs) if d is not None]
    worst = max(diffs) if diffs else None
    result: dict[str, Any] = {
        "pairs": list(pairs), "max_rel_diff": worst, "max_rel_diff_nvml_v2": max(v2) if v2 else None,
        "tolerance": tolerance, "pass": None if worst is None else worst <= tolerance, "explanation": None,
    }
    if worst is not None and worst > tolerance:
        gaps = [p["sampler_used"] - p["smi_used"] for p in pairs
                if p.get("sampler_used") is not None and p.get("smi_used") is not None]
        reserved = [p.get("nvml_v2_reserved") for p in pairs if p.get("nvml_v2_reserved") is not None]
        text = (f"the sampler reads {sum(gaps) / len(gaps) / MIB:+.0f} MiB against nvidia-smi on average")
        if reserved:
            r = sum(reserved) / len(reserved)
            text += (f"; NVML reports {r / MIB:.0f} MiB reserved by the driver, which NVML's v1 'used' (the "
                     "sampler's reading) counts and nvidia-smi's memory.used does not")
            if v2 and max(v2) <= tolerance:
                text += (f"; NVML's v2 'used' agrees with nvidia-smi within {max(v2) * 100:.2f} %: reading "
                         "nvmlDeviceGetMemoryInfo(handle, version=nvmlMemory_v2) in services/bench/sampler.py "
                         "would make the sampler agree")
        result["explanation"] = text
    return result


def process_check(sampler: Mapping[int, Mapping[str, Any]], smi: Mapping[int, int | None],
                  tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Per-process GPU memory, sampler vs nvidia-smi, matched by pid."""
    rows = []
    ok = True
    for pid in sorted(set(sampler) | set(smi)):
        s = sampler.get(pid, {})
        a, b = s.get("memory_bytes"), smi.get(pid)
        row = {"pid": pid, "name": s.get("name"), "model": s.get("model"), "version": s.get("version"),
               "sampler_bytes": a, "smi_bytes": b, "diff_bytes": None if a is None or b is None else a - b,
               "pass": None}
        if a is None or b is None:
            row["pass"] = False
            row["note"] = "seen by nvidia-smi only" if a is None else "seen by the sampler only"
        else:
            row["pass"] = abs(a - b) <= tolerance * b + MIB
        ok = ok and bool(row["pass"])
        rows.append(row)
    return {"processes": rows, "pass": ok if rows else None}


def attribution_check(sampler: Mapping[int, Mapping[str, Any]], versions: Iterable[str],
                      model: str = "qwen") -> dict[str, Any]:
    """Which GPU processes serve which version (from the stubs' command lines)."""
    by: dict[str, list[int]] = {}
    for pid, s in sorted(sampler.items()):
        if s.get("model") == model and s.get("version") is not None:
            key = str(s["version"])
        elif s.get("model") == "server":
            key = "server"
        else:
            key = "unattributed"
        by.setdefault(key, []).append(pid)
    missing = [v for v in versions if v not in by]
    return {"by_version": by, "missing_versions": missing, "pass": not missing}


def torch_from_metrics(metrics: Mapping[str, float], version: str) -> dict[str, int | None]:
    """torch's counters of a version from the ``qwen_engine_torch_memory_bytes{version,kind}`` gauges."""
    from services.bench.triton_metrics import parse_series_key

    out: dict[str, int | None] = {k: None for k in TORCH_KINDS}
    for key, value in metrics.items():
        name, labels = parse_series_key(key)
        if name == TORCH_GAUGE and str(labels.get("version")) == str(version) and labels.get("kind") in out:
            out[labels["kind"]] = int(value)
    return out


def torch_from_report(report: Mapping[str, Any] | None) -> dict[str, int | None]:
    """torch's counters after load as the engine report records them (``torch_memory_after_load``)."""
    entry = (report or {}).get("torch_memory_after_load")
    out: dict[str, int | None] = {k: None for k in TORCH_KINDS}
    if isinstance(entry, Mapping):
        for k in TORCH_KINDS:
            for name in (k, f"{k}_bytes", f"memory_{k}"):
                v = entry.get(name)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[k] = int(v)
                    break
    return out


def version_check(version: str, dashboard: Mapping[str, Any], nvml_bytes: int | None,
                  torch_load: Mapping[str, int | None], torch_now: Mapping[str, int | None]) -> dict[str, Any]:
    """The dashboard's figures of one version against torch's counters.

    * weights vs allocated after load: the weights are part of what torch allocated, so PASS when
      weights <= allocated (+0.1 %); the excess is torch's other allocations at load (buffers, a
      static KV cache, graph pools).
    * NVML process memory vs torch reserved: PASS when NVML >= reserved (the process holds at least
      what torch's allocator reserved); the difference is the CUDA context and memory allocated
      outside torch's allocator.
    """
    weights = dashboard.get("weights_bytes")
    allocated = torch_load.get("allocated") if torch_load.get("allocated") is not None else torch_now.get("allocated")
    alloc_src = "engine report (after load)" if torch_load.get("allocated") is not None else (
        "gauge (after the last request)" if torch_now.get("allocated") is not None else None)
    reserved = torch_now.get("reserved") if torch_now.get("reserved") is not None else torch_load.get("reserved")
    w: dict[str, Any] = {"weights_bytes": weights, "torch_allocated_bytes": allocated, "allocated_source": alloc_src,
                         "excess_bytes": None, "pass": None}
    if weights is not None and allocated is not None:
        w["excess_bytes"] = allocated - weights
        w["pass"] = weights <= allocated * 1.001
    r: dict[str, Any] = {"nvml_process_bytes": nvml_bytes, "torch_reserved_bytes": reserved,
                         "outside_torch_bytes": None, "pass": None}
    if nvml_bytes is not None and reserved is not None:
        r["outside_torch_bytes"] = nvml_bytes - reserved
        r["pass"] = nvml_bytes >= reserved
    return {"version": version, "dashboard": dict(dashboard), "torch_after_load": dict(torch_load),
            "torch_now": dict(torch_now), "weights_vs_allocated": w, "process_vs_reserved": r}


def report_versions(comparison: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The memory figures of a ``services.compare.report`` JSON, by version."""
    out: dict[str, dict[str, Any]] = {}
    mem = (comparison or {}).get("memory") or {}
    for side in ("a", "b"):
        v = ((comparison or {}).get(side) or {}).get("version")
        m = mem.get(side) or {}
        if v is not None:
            out[str(v)] = {k: m.get(k) for k in ("source", "baseline_bytes", "peak_bytes", "weights_bytes",
                                                  "weights_source", "kv_room_bytes", "rest_bytes", "rest_note")}
    return out


def checks_of(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every check with its verdict (True, False, or None when it could not run) and a one-line detail."""
    out = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        out.append({"name": name, "pass": ok, "detail": detail})

    dev = result.get("device") or {}
    worst = dev.get("max_rel_diff")
    add("device used: sampler vs nvidia-smi (<= 1 %)", dev.get("pass"),
        "n/a: " + str(dev.get("error")) if worst is None else
        f"max relative difference {worst * 100:.2f} % over {len(dev.get('pairs') or [])} pairs"
        + (f" ({dev['explanation']})" if dev.get("explanation") else ""))
    proc = result.get("processes") or {}
    add("per-process: sampler vs nvidia-smi --query-compute-apps", proc.get("pass"),
        "n/a: " + str(proc.get("error")) if proc.get("pass") is None else
        f"{len(proc.get('processes') or [])} process(es)")
    att = result.get("attribution") or {}
    add("attribution of GPU processes to versions", att.get("pass"),
        "n/a: " + str(att.get("error")) if att.get("pass") is None else
        ", ".join(f"{k}: {v}" for k, v in (att.get("by_version") or {}).items())
        + (f"; missing {att['missing_versions']}" if att.get("missing_versions") else ""))
    for v, vc in sorted((result.get("versions") or {}).items()):
        w, r = vc["weights_vs_allocated"], vc["process_vs_reserved"]
        add(f"v{v}: dashboard weights within torch allocated after load", w["pass"],
            "n/a: weights or torch allocated unknown" if w["pass"] is None else
            f"weights {w['weights_bytes'] / GIB:.3f} GiB, allocated {w['torch_allocated_bytes'] / GIB:.3f} GiB "
            f"({w['allocated_source']}), excess {w['excess_bytes'] / MIB:+.0f} MiB")
        add(f"v{v}: NVML process memory >= torch reserved", r["pass"],
            "n/a: NVML process memory or torch reserved unknown" if r["pass"] is None else
            f"NVML {r['nvml_process_bytes'] / GIB:.3f} GiB, reserved {r['torch_reserved_bytes'] / GIB:.3f} GiB, "
            f"outside torch {r['outside_torch_bytes'] / MIB:+.0f} MiB")
    return out


# --------------------------------------------------------------------------- the run


def read_device_pairs(sampler: Any, count: int, notes: list[str]) -> tuple[list, list[dict[str, Any]], str | None]:
    """``count`` readings of each GPU's used memory by the sampler and by nvidia-smi, back to back,
    alternating which reads first. Returns (the sampler's samples, the pairs, the error that stopped
    the readings or None); notes what NVML v2 could not read."""
    samples = []
    pairs = []
    device_error = None
    for i in range(count):
        smi: dict[int, int] = {}
        smi_error = None

        def read_smi() -> None:
            nonlocal smi, smi_error
            try:
                smi = smi_device_used()
            except Exception as exc:
                smi_error = f"nvidia-smi: {type(exc).__name__}: {exc}"

        if i % 2 == 1:
            read_smi()
        s = sampler.sample_once()  # never raises: a failing source is in s.source_errors
        if i % 2 == 0:
            read_smi()
        samples.append(s)
        if "nvml" in s.source_errors or smi_error:
            device_error = "; ".join(e for e in (
                f"the sampler's NVML source failed: {s.source_errors['nvml']}" if "nvml" in s.source_errors else None,
                smi_error) if e)
            break
        try:
            v2 = nvml_v2()
        except Exception as exc:
            v2 = {}
            if i == 0:
                notes.append(f"NVML v2 memory reading unavailable: {type(exc).__name__}: {exc}")
        for g in s.gpus:
            pairs.append({"gpu": g.index, "order": "sampler first" if i % 2 == 0 else "nvidia-smi first",
                          "sampler_used": g.memory_used_bytes, "smi_used": smi.get(g.index),
                          "nvml_v2_used": (v2.get(g.index) or {}).get("used"),
                          "nvml_v2_reserved": (v2.get(g.index) or {}).get("reserved")})
        time.sleep(0.2)
    return samples, pairs, device_error


def check_processes(args: argparse.Namespace, result: dict[str, Any], last: Any) -> dict[int, dict[str, Any]]:
    """Per process: the sampler's reading ``last`` against nvidia-smi's, read right after; sets
    ``result["processes"]`` and ``result["other_pids"]`` and returns this server's GPU processes."""
    procs: dict[int, dict[str, Any]] = {}
    try:
        smi_p = smi_processes()
    except Exception as exc:
        smi_p = None
        result["processes"] = {"processes": [], "pass": None, "error": f"nvidia-smi: {type(exc).__name__}: {exc}"}
    mine = own_pids([p.pid for p in last.processes if p.kind == "gpu"], args.repository, args.server_pid)
    others = sorted({p.pid for p in last.processes if p.kind == "gpu"} - mine)
    if others:
        result["notes"].append(f"GPU processes of other servers or programs left out of the per-version figures: "
                               f"{others}")
    result["other_pids"] = others
    for p in last.processes:
        if p.kind == "gpu" and p.pid in mine:
            e = procs.setdefault(p.pid, {"pid": p.pid, "name": p.name, "model": p.model, "version": p.version,
                                         "memory_bytes": 0})
            e["memory_bytes"] += p.memory_bytes
    if "nvml" in last.source_errors:
        result["processes"] = {"processes": [], "pass": None,
                               "error": f"the sampler's NVML source failed: {last.source_errors['nvml']}"}
    elif smi_p is not None:
        result["processes"] = process_check(procs, {k: v for k, v in smi_p.items() if k not in others})
    return procs


def served_versions(http_url: str | None, notes: list[str]) -> list[str]:
    """The versions the server serves and reports ready (1 and 2 when it cannot be asked)."""
    versions = ["1", "2"]
    if http_url:
        try:
            from services.client.triton_client import TritonClient

            with TritonClient(http_url, protocol="http", timeout_s=10) as client:
                states = client.versions()
            versions = sorted(s.version for s in states if s.ready) or versions
        except Exception as exc:
            notes.append(f"could not list the server's versions ({exc}); assuming 1 and 2")
    return versions


def check_versions(args: argparse.Namespace, result: dict[str, Any], samples: list,
                   procs: Mapping[int, Mapping[str, Any]], versions: Sequence[str]) -> None:
    """The dashboard's figures (weights from the gauge, peak/rest from the NVML rows) against torch's
    counters, per version; sets ``result["versions"]``."""
    import pandas as pd

    from services.bench.sample_series import sample_rows
    from services.bench.store import SAMPLE_COLUMNS
    from services.compare.memory import memory_side
    from services.core import settings

    others = result["other_pids"]
    rows = [r for s in samples for r in sample_rows(s) if r.pid is None or r.pid not in others]
    frame = pd.DataFrame([{c: getattr(r, c) for c in SAMPLE_COLUMNS} for r in rows], columns=SAMPLE_COLUMNS)
    metrics = samples[-1].metrics if samples else {}
    comparison = json.loads(Path(args.comparison_json).read_text()) if args.comparison_json else None
    from_report = report_versions(comparison)
    result["versions"] = {}
    for v in versions:
        side = memory_side(frame, {"quantization": {}}, v, model=settings.MODEL_NAME)
        dashboard = {"source": side.source, "weights_bytes": side.weights_bytes,
                     "weights_source": side.weights_source, "peak_bytes": side.peak_bytes,
                     "rest_bytes": side.rest_bytes, "rest_note": side.rest_note, "kv_note": side.kv_note}
        report = None
        if args.repository:
            path = Path(args.repository) / settings.MODEL_NAME / v / "engine_report.json"
            try:
                report = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                result["notes"].append(f"no engine report for v{v}: {exc}")
        nvml_bytes = sum(p["memory_bytes"] for p in procs.values()
                         if p.get("model") == settings.MODEL_NAME and str(p.get("version")) == v) or None
        vc = version_check(v, dashboard, nvml_bytes, torch_from_report(report), torch_from_metrics(metrics, v))
        if report is not None:
            vc["engine_report"] = report
        if v in from_report:
            vc["comparison_report"] = from_report[v]
        result["versions"][v] = vc
    if not any(torch_from_metrics(metrics, v)["allocated"] is not None for v in versions):
        result["notes"].append(f"the server exports no {TORCH_GAUGE} gauge: torch's counters are read from the "
                               "engine reports only")


def collect(args: argparse.Namespace) -> dict[str, Any]:
    from services.bench.sampler import Sampler

    result: dict[str, Any] = {"made_by": "scripts/gpu_memory_check.py", "time": time.time(),
                              "metrics_url": args.metrics_url, "http_url": args.http_url,
                              "repository": args.repository, "notes": []}
    try:
        result["gpus"] = smi_device_info()
    except Exception as exc:
        result["gpus"] = []
        result["notes"].append(f"nvidia-smi --query-gpu failed: {exc}")

    sampler = Sampler(nvml=True, host_memory=False, metrics_url=args.metrics_url, metrics_timeout_s=3.0)
    samples, pairs, device_error = read_device_pairs(sampler, args.pairs, result["notes"])
    result["device"] = device_check(pairs)
    if device_error:
        result["device"]["error"] = device_error
    if samples and "triton_metrics" in samples[-1].source_errors:
        result["notes"].append(f"metrics not read: {samples[-1].source_errors['triton_metrics']}")

    last = sampler.sample_once()
    samples.append(last)
    procs = check_processes(args, result, last)
    versions = served_versions(args.http_url, result["notes"])
    result["served_versions"] = versions
    result["attribution"] = attribution_check(procs, versions) if procs else {
        "by_version": {}, "missing_versions": versions, "pass": None,
        "error": result["processes"].get("error") or "no GPU process seen"}
    check_versions(args, result, samples, procs, versions)
    sampler.stop()
    result["checks"] = checks_of(result)
    verdicts = [c["pass"] for c in result["checks"] if c["pass"] is not None]
    result["pass"] = bool(verdicts) and all(verdicts)
    return result


def _gib(v: Any) -> str:
    return "-" if v is None else f"{v / GIB:8.3f}"


def print_result(r: Mapping[str, Any]) -> None:
    for g in r.get("gpus") or []:
        print(f"GPU {g['index']}: {g['name']}, driver {g['driver']}, total {_gib(g['total_bytes'])} GiB, "
              f"used {_gib(g['used_bytes'])} GiB, reserved {_gib(g.get('reserved_bytes'))} GiB (nvidia-smi)")
    print("\ndevice used (GiB)      sampler  nvidia-smi   NVML v2   reserved   rel.diff")
    for p in (r.get("device") or {}).get("pairs") or []:
        d = rel_diff(p["sampler_used"], p["smi_used"])
        print(f"  gpu {p['gpu']} {p['order']:17s} {_gib(p['sampler_used'])} {_gib(p['smi_used'])}   "
              f"{_gib(p['nvml_v2_used'])}  {_gib(p['nvml_v2_reserved'])}   {'-' if d is None else f'{d * 100:6.2f} %'}")
    print("\nprocess              pid   version   sampler GiB   nvidia-smi GiB   diff MiB")
    for p in (r.get("processes") or {}).get("processes") or []:
        diff = "-" if p["diff_bytes"] is None else f"{p['diff_bytes'] / MIB:+.1f}"
        who = p["version"] if p.get("version") else (p.get("model") or "?")
        print(f"  {str(p.get('name') or '?')[:16]:16s} {p['pid']:7d}   {str(who):7s}   {_gib(p['sampler_bytes'])}"
              f"      {_gib(p['smi_bytes'])}      {diff}")
    print("\nversion  weights(dash)  torch alloc@load  excess MiB | NVML proc  torch reserved  outside MiB | "
          "dash peak  dash rest")
    for v, vc in sorted((r.get("versions") or {}).items()):
        w, q, d = vc["weights_vs_allocated"], vc["process_vs_reserved"], vc["dashboard"]
        ex = "-" if w["excess_bytes"] is None else f"{w['excess_bytes'] / MIB:+.0f}"
        out = "-" if q["outside_torch_bytes"] is None else f"{q['outside_torch_bytes'] / MIB:+.0f}"
        print(f"  v{v}     {_gib(w['weights_bytes'])}       {_gib(w['torch_allocated_bytes'])}      {ex:>8s} | "
              f"{_gib(q['nvml_process_bytes'])}  {_gib(q['torch_reserved_bytes'])}      {out:>8s} | "
              f"{_gib(d['peak_bytes'])}  {_gib(d['rest_bytes'])}")
        if vc.get("comparison_report"):
            c = vc["comparison_report"]
            print(f"         report: weights {_gib(c.get('weights_bytes'))} GiB, peak {_gib(c.get('peak_bytes'))} GiB, "
                  f"rest {_gib(c.get('rest_bytes'))} GiB ({c.get('source')})")
    print()
    for c in r.get("checks") or []:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[c["pass"]]
        print(f"{mark}  {c['name']}: {c['detail']}")
    for n in r.get("notes") or []:
        print(f"note: {n}")
    print(f"\nmemory check: {'PASS' if r.get('pass') else 'FAIL'}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics-url", required=True, help="the server's Prometheus URL (http://host:8002/metrics)")
    p.add_argument("--http-url", help="the server's HTTP host:port (to list the versions it serves)")
    p.add_argument("--repository", help="the embedded server's model repository (for engine_report.json; "
                                        "processes naming it are this server's)")
    p.add_argument("--server-pid", type=int, help="the tritonserver pid (it and its children are this server's)")
    p.add_argument("--comparison-json", help="a services.compare.report JSON to check as well")
    p.add_argument("--pairs", type=int, default=5, help="back-to-back sampler / nvidia-smi pairs")
    p.add_argument("--json", help="write the whole result here")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error("--pairs must be >= 1")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    result = collect(args)
    print_result(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"written: {args.json}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
