"""The Python side of ``scripts/gpu_run.sh``'s stages. Each sub-command runs alone, on the GPU machine
or, for a dry run of everything but the GPU itself, on CPU (``--device cpu``).

    python scripts/gpu_stages.py envinfo  [--json env.json]                 # versions, GPU, driver
    python scripts/gpu_stages.py build7b  [--config configs/qwen2-vl-7b.json] [--out /tmp/qwen2-vl-7b]
    python scripts/gpu_stages.py smoke    [--checkpoint models/demo-detector] [--device cuda] --out DIR
    python scripts/gpu_stages.py headline --checkpoint /tmp/qwen2-vl-7b --out DIR [--deadline EPOCH_S]
    python scripts/gpu_stages.py merge-json --out decode.json 7b=a.json demo=b.json

``build7b``: a checkpoint of Qwen2-VL-7B's exact architecture with random weights and the project's
tokenizer, from the spec kept in ``configs/qwen2-vl-7b.json`` (``services.serving.checkpoint_builder``,
initialised on the GPU, about 16.6 GB of safetensors), written to a temporary folder and renamed
when complete; skipped when a complete one of the same spec is there. The parameter counts are
read back from the written safetensors headers and checked against the config's ``expected``.

``smoke``: the embedded Triton (``services.serving.embedded_triton``) on a checkpoint with versions 1 (bf16)
and 2 (fp8) loaded together, one HTTP and one gRPC request to each version on a generated label,
each version's engine report and the GPU processes as the sampler attributes them.

``headline``: the embedded Triton on the (7B) checkpoint, both versions, a generous ready timeout;
``scripts/gpu_memory_check.py`` after load; the benchmark command line (``services.bench.cli``,
in this process, against the same server: closed loop, concurrency 1, 64 measured requests after 4
warm-up per version, 16 generated 1024x1024 labels, 200 forced output tokens); the comparison
report (``services.compare.report``); the memory check again with the report's figures. With
``--deadline`` (epoch seconds), the benchmark is cancelled (Ctrl-C, as a person would: the run is
stored as cancelled with every request it made) early enough for the report to be written.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_7B = Path("/tmp/qwen2-vl-7b")
DEFAULT_CONFIG = ROOT / "configs" / "qwen2-vl-7b.json"
GB = 1e9
READY_FLOOR_S = 300.0  # the 7B's load with both versions' decode steps compiled (fp8: up to ~3 min) and margin


def say(msg: str) -> None:
    print(f"[gpu_stages] {msg}", flush=True)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- envinfo


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        for part in module.split(".")[1:]:
            mod = getattr(mod, part)
        return str(getattr(mod, "__version__", "?"))
    except Exception as exc:  # reported, never fatal: the point is to see what is there
        return f"unavailable ({type(exc).__name__}: {str(exc)[:200]})"


def env_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "hostname": socket.gethostname(), "cpus": os.cpu_count(),
        "packages": {m: _version(m) for m in ("torch", "transformers", "torchao", "numpy", "tritonclient", "plotly",
                                              "pandas", "PIL", "grpc", "google.protobuf", "safetensors",
                                              "tokenizers", "psutil", "pynvml", "pytest")},
    }
    try:
        import numpy

        info["numpy_file"] = numpy.__file__
    except Exception:
        pass
    try:
        from importlib.metadata import version

        info["packages"]["tritonclient"] = version("tritonclient")
        info["packages"]["nvidia-ml-py"] = version("nvidia-ml-py")
    except Exception:
        pass
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                              "total_memory_bytes": p.total_memory, "multiprocessors": p.multi_processor_count}
    except Exception as exc:
        info["cuda_available"] = f"unknown ({exc})"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
        first = out.stdout.strip().splitlines()[0].split(",") if out.returncode == 0 and out.stdout.strip() else []
        if len(first) >= 3:
            info["gpu_name"], info["driver"], info["gpu_memory"] = (f.strip() for f in first[:3])
    except Exception as exc:
        info["nvidia_smi"] = f"unavailable ({exc})"
    bundle = ROOT / "carry" / "gpu" / "MANIFEST.json"
    if bundle.is_file():
        try:
            parts = json.loads(bundle.read_text())["parts"]
            info["bundle"] = {"nvidia-pytriton": parts["tritonserver.tar.xz"].get("nvidia-pytriton"),
                              "triton_server": "2.51 (in nvidia-pytriton 0.7.0)",
                              "site_packages": parts["site312.tar.xz"].get("packages")}
        except Exception as exc:
            info["bundle"] = f"unreadable ({exc})"
    return info


def cmd_envinfo(args: argparse.Namespace) -> int:
    info = env_info()
    pk = info["packages"]
    say(f"python {info['python']} ({info['executable']})")
    for name, v in pk.items():
        say(f"  {name:16s} {v}")
    say(f"numpy from {info.get('numpy_file')}")
    say(f"cuda available: {info.get('cuda_available')}; torch CUDA {info.get('torch_cuda')}; device {info.get('device')}")
    say(f"nvidia-smi: {info.get('nvidia_smi')}")
    if args.json:
        write_json(Path(args.json), info)
    bad = [n for n in ("torch", "transformers", "torchao", "numpy", "tritonclient", "pandas", "pynvml")
           if str(pk.get(n, "")).startswith("unavailable")]
    if str(pk.get("numpy", "")).split(".")[0] not in ("1",):
        say(f"WARNING: numpy {pk.get('numpy')} is not 1.x: the Triton Python stub needs numpy<2")
    if bad:
        say(f"ERROR: cannot import {', '.join(bad)}")
        return 1
    return 0


# --------------------------------------------------------------------------- build7b


def load_spec(config: Path):
    from services.serving.checkpoint_builder import CheckpointSpec

    doc = json.loads(config.read_text())
    raw = dict(doc["spec"])
    raw["mrope_section"] = tuple(raw["mrope_section"])
    return CheckpointSpec(**raw), doc.get("expected", {})


def safetensors_counts(folder: Path) -> dict[str, int]:
    """Parameters (all, and the vision tower's) and bytes as written, from the safetensors headers."""
    import struct

    sizes = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
    total = vision = nbytes = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors in {folder}")
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for d in t["shape"]:
                numel *= d
            total += numel
            nbytes += numel * sizes.get(t["dtype"], 0)
            if "visual" in name.split("."):
                vision += numel
    return {"parameters": total, "vision_parameters": vision, "bytes": nbytes, "files": len(files)}


def cmd_build7b(args: argparse.Namespace) -> int:
    from services.serving.checkpoint_builder import PRESET_7B, build_checkpoint

    spec, expected = load_spec(Path(args.config))
    diff = {k: (v, getattr(PRESET_7B, k)) for k, v in asdict(spec).items()
            if k not in ("note", "seed") and v != getattr(PRESET_7B, k)}
    if diff and args.config == str(DEFAULT_CONFIG):
        say(f"WARNING: {args.config} differs from checkpoint_builder.PRESET_7B: {diff}")
    out = Path(args.out)
    report: dict[str, Any] = {"config": str(args.config), "out": str(out), "spec": asdict(spec),
                              "expected": expected}
    info_path = out / "build_info.json"
    if info_path.is_file():
        try:
            same = json.loads(info_path.read_text()).get("spec") == json.loads(json.dumps(asdict(spec)))
            counts = safetensors_counts(out)
        except Exception as exc:
            same, counts = False, None
            say(f"the checkpoint in {out} is unreadable ({exc}): rebuilding it")
        if same and counts:
            say(f"{out} already holds this checkpoint ({counts['parameters']:,} parameters): not rebuilt")
            report.update(skipped=True, **counts)
            write_json(Path(args.json), report) if args.json else None
            return check_counts(counts, expected)
        shutil.rmtree(out, ignore_errors=True)
    free = shutil.disk_usage(out.parent if out.parent.exists() else Path("/")).free
    need = int(expected.get("bf16_bytes", 0) * 1.05)
    say(f"free disk at {out.parent}: {free / GB:.1f} GB (need about {need / GB:.1f} GB)")
    if need and free < need:
        say(f"ERROR: not enough disk for the checkpoint at {out.parent}")
        return 1
    import torch

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        say("ERROR: --device cuda but torch sees no CUDA device")
        return 1
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    say(f"building {spec.note} on {device} into {tmp} ...")
    build_checkpoint(tmp, spec, device=device)
    seconds = time.perf_counter() - t0
    tmp.replace(out)
    counts = safetensors_counts(out)
    say(f"built {out} in {seconds:.1f} s: {counts['parameters']:,} parameters "
        f"({counts['vision_parameters'] / 1e6:.1f} M in the vision tower), {counts['bytes'] / GB:.2f} GB in "
        f"{counts['files']} safetensors file(s)")
    report.update(skipped=False, seconds=round(seconds, 1), device=device, **counts)
    if args.json:
        write_json(Path(args.json), report)
    if device == "cuda":
        torch.cuda.empty_cache()
    return check_counts(counts, expected)


def check_counts(counts: dict[str, int], expected: dict[str, int]) -> int:
    bad = [f"{k}: {counts[k]:,} written, {expected[k]:,} expected" for k in ("parameters", "vision_parameters")
           if k in expected and counts.get(k) != expected[k]]
    if bad:
        say("ERROR: the checkpoint does not have the expected shape: " + "; ".join(bad))
        return 1
    say("parameter counts as expected" if expected else "no expected counts in the config")
    return 0


# --------------------------------------------------------------------------- smoke


def expected_fp8_mode(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 9):
        return "fp8_dynamic_activation_weight"
    return "fp8_weight_only"


def label_b64(seed: int, size: int | None = None) -> tuple[str, Any]:
    from services.image_sets.generator import GeneratorConfig, generate_label

    sample = generate_label(seed, GeneratorConfig(size=(size, size)) if size else None)
    buf = io.BytesIO()
    sample.image.save(buf, "JPEG", quality=92)
    return base64.b64encode(buf.getvalue()).decode(), sample


def nvml_processes() -> list[dict[str, Any]]:
    from services.bench.sampler import Sampler

    s = Sampler(nvml=True, host_memory=False).sample_once()
    if "nvml" in s.source_errors:
        return [{"error": s.source_errors["nvml"]}]
    return [{"pid": p.pid, "name": p.name, "model": p.model, "version": p.version, "gpu_bytes": p.memory_bytes}
            for p in s.processes] + [{"gpu": g.index, "name": g.name, "used_bytes": g.memory_used_bytes,
                                      "total_bytes": g.memory_total_bytes} for g in s.gpus]


def cmd_smoke(args: argparse.Namespace) -> int:
    from services.core.boxes import match_boxes, parse_answer
    from services.serving.embedded_triton import start_embedded_triton
    from services.core.prompt import build_prompt
    from services.client.triton_client import TritonClient

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"checkpoint": args.checkpoint, "device": args.device, "requests": [], "problems": []}
    t0 = time.perf_counter()
    try:
        server = start_embedded_triton(args.checkpoint, device=args.device, ready_timeout=args.ready_timeout,
                                       ports={"http": None, "grpc": None, "metrics": None})
    except Exception as exc:
        result.update(ok=False, problems=[f"the server did not start: {type(exc).__name__}: {exc}"])
        write_json(out / "smoke.json", result)
        say(f"smoke: FAILED: {result['problems'][0]}")
        return 1
    try:
        result["ready_s"] = round(time.perf_counter() - t0, 1)
        say(f"server ready in {result['ready_s']} s: http {server.http_url} grpc {server.grpc_url} "
            f"metrics {server.metrics_url}")
        want = expected_fp8_mode(args.device)
        result["reports"] = {}
        for v in ("1", "2"):
            report = server.engine_report(v)
            result["reports"][v] = report
            say(f"v{v} engine report: {json.dumps(report)}")
            if report is None:
                result["problems"].append(f"v{v}: no engine report")
                continue
            if v == "2" and (report.get("mode") != want or not report.get("layers_quantized")
                             or report.get("layers_quantized") != report.get("decoder_linear_layers")):
                result["problems"].append(f"v2: mode {report.get('mode')} (expected {want}), "
                                          f"{report.get('layers_quantized')} of {report.get('decoder_linear_layers')} "
                                          "decoder linear layers quantized")
            if v == "1" and report.get("mode") != "none":
                result["problems"].append(f"v1: mode {report.get('mode')} (expected none)")
        image, sample = label_b64(7_000_123)
        for protocol, url, stream in (("http", server.http_url, False), ("grpc", server.grpc_url, True)):
            with TritonClient(url, protocol=protocol, timeout_s=args.timeout) as client:
                for v in ("1", "2"):
                    entry: dict[str, Any] = {"protocol": protocol, "version": v, "stream": stream}
                    try:
                        done = client.detect(image, build_prompt(), version=v, max_tokens=args.max_tokens,
                                             stream=stream)
                        parsed = parse_answer(done.text, sample.width, sample.height)
                        ious = [x for _, j, x in match_boxes(parsed.pixel_boxes, sample.boxes) if j is not None]
                        entry.update(ok=True, text=done.text[:300], output_tokens=done.num_output_tokens,
                                     input_tokens=done.num_input_tokens, latency_ms=round(done.latency_ms, 1),
                                     ttft_ms=None if done.ttft_ms is None else round(done.ttft_ms, 1),
                                     boxes=len(parsed.pixel_boxes), mean_iou=round(sum(ious) / len(ious), 3) if ious else None)
                    except Exception as exc:
                        entry.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                        result["problems"].append(f"{protocol} v{v}: {exc}")
                    say(f"{protocol} v{v}: {json.dumps(entry)}")
                    result["requests"].append(entry)
        result["gpu_processes"] = nvml_processes()
        for p in result["gpu_processes"]:
            say(f"GPU (sampler): {json.dumps(p)}")
    finally:
        server.stop()
    result["ok"] = not result["problems"]
    write_json(out / "smoke.json", result)
    say("smoke: " + ("OK" if result["ok"] else "PROBLEMS: " + "; ".join(result["problems"])))
    return 0 if result["ok"] else 1


# --------------------------------------------------------------------------- headline


def bench_argv(args: argparse.Namespace, data_dir: Path, exports: Path) -> list[str]:
    """The benchmark command line of the headline figures (``python -m services.bench.cli`` arguments)."""
    argv = ["--versions", "1", "2", "--requests", str(args.requests), "--warmup", str(args.warmup),
            "--load", "closed", "--concurrency", str(args.concurrency), "--images", "generated",
            "--count", str(args.count), "--image-seed", str(args.image_seed), "--max-tokens", str(args.max_tokens),
            "--ignore-eos", "--timeout", str(args.request_timeout), "--data-dir", str(data_dir),
            "--out", str(exports), "--no-progress", "--json"]
    if args.image_size:
        argv[argv.index("--count"):argv.index("--count")] = ["--image-size", str(args.image_size)]
    return argv


def run_logged(cmd: list[str], timeout: float | None) -> int:
    """Run a command with its output passed through; its exit status (124 when it ran out of time)."""
    say("$ " + " ".join(cmd))
    try:
        return subprocess.run(cmd, timeout=timeout, cwd=ROOT).returncode
    except subprocess.TimeoutExpired:
        say(f"ran out of its {timeout:.0f} s")
        return 124


class Headline:
    """The headline stage's folders, deadline and what it records (``headline.json``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.data_dir, self.exports, self.report_dir = self.out / "db", self.out / "bench", self.out / "report"
        self.deadline = args.deadline or (time.time() + 24 * 3600)
        self.steps: dict[str, Any] = {}
        self.commands: dict[str, str] = {}
        self.status: dict[str, Any] = {"steps": self.steps, "commands": self.commands,
                                       "checkpoint": args.checkpoint, "device": args.device}

    def left(self) -> float:
        return self.deadline - time.time()

    def ready_timeout(self) -> float:
        """Loading the 7B includes torch.compile of each version's decode step inside its stub (~45 s
        for bf16, up to ~3 min for fp8, the versions loading side by side): the server gets everything
        but the report's reserve and a short benchmark, and at least READY_FLOOR_S where the deadline
        allows it."""
        args, left = self.args, self.left
        ready_timeout = max(60.0, min(args.ready_timeout,
                                      max(left() - args.reserve_s - 30, min(READY_FLOOR_S, left() - 20))))
        if ready_timeout < READY_FLOOR_S:
            say(f"WARNING: only {ready_timeout:.0f} s for the server to be ready; loading the 7B with compiled decode "
                f"steps can take {READY_FLOOR_S:.0f} s")
        return ready_timeout

    def bench(self) -> None:
        """The benchmark CLI in this process; with a deadline, a timer interrupts it in time to leave
        ``--reserve-s`` for the report. Records the run the store holds last in ``status["run"]``."""
        from services.bench.cli import main as bench_main
        from services.bench.store import RunStore

        args, steps = self.args, self.steps
        argv = bench_argv(args, self.data_dir, self.exports)
        self.commands["bench"] = "python -m services.bench.cli --checkpoint " + args.checkpoint + " " + " ".join(argv)
        bench_budget = self.left() - args.reserve_s
        say(f"benchmark: {bench_budget:.0f} s before it is cancelled to leave {args.reserve_s:.0f} s for the report")
        timer = None
        if args.deadline:
            timer = threading.Timer(max(1.0, bench_budget), lambda: os.kill(os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
        t0 = time.perf_counter()
        try:
            steps["bench_rc"] = bench_main(argv)
        except KeyboardInterrupt:  # the deadline came before the benchmark's own Ctrl-C handling
            steps["bench_rc"] = 130
            say("the benchmark was interrupted before it could store a run")
        finally:
            if timer:
                timer.cancel()
        steps["bench_s"] = round(time.perf_counter() - t0, 1)
        with RunStore(self.data_dir) as store:
            runs = store.list_runs(limit=1)
            run = runs[0] if runs else None
            self.status["run"] = None if run is None else {"id": run.id, "status": run.status, "reason": run.reason}
        say(f"benchmark exit {steps['bench_rc']} in {steps['bench_s']} s; run {self.status['run']}")

    def report(self, run_id: int, mem_cmd: list[str]) -> None:
        """The comparison report of run ``run_id``, then the memory check again with its figures."""
        py, left = sys.executable, self.left
        rep_cmd = [py, "-m", "services.compare.report", "--run", str(run_id), "--data-dir", str(self.data_dir),
                   "--out", str(self.report_dir), "--gallery", str(self.args.gallery)]
        self.commands["comparison_report"] = " ".join(["python", *rep_cmd[1:]])
        self.steps["report_rc"] = run_logged(rep_cmd, timeout=max(30.0, left() - 40))
        report_json = self.report_dir / f"comparison_run{run_id}_v1_v2.json"
        extra = ["--comparison-json", str(report_json)] if report_json.is_file() else []
        self.steps["memory_after_bench_rc"] = run_logged([*mem_cmd, *extra, "--json",
                                                          str(self.out / "memory_after_bench.json")],
                                                         timeout=max(20.0, min(120.0, left() - 15)))


def cmd_headline(args: argparse.Namespace) -> int:
    from services.serving import embedded_triton

    h = Headline(args)
    out, steps, status, commands = h.out, h.steps, h.status, h.commands
    py = sys.executable
    ready_timeout = h.ready_timeout()
    say(f"starting the embedded Triton on {args.checkpoint} ({args.device}), ready timeout {ready_timeout:.0f} s; "
        f"{h.left():.0f} s left before the deadline")
    t0 = time.perf_counter()
    try:
        server = embedded_triton.shared_server(checkpoint=args.checkpoint, device=args.device,
                                               ready_timeout=ready_timeout)
    except Exception as exc:
        status["error"] = f"the server did not start: {type(exc).__name__}: {exc}"
        write_json(out / "headline.json", status)
        say(f"headline: FAILED: {status['error']}")
        return 1
    steps["server_ready_s"] = round(time.perf_counter() - t0, 1)
    say(f"ready in {steps['server_ready_s']} s: http {server.http_url} grpc {server.grpc_url} metrics {server.metrics_url}")
    status["reports"] = {v: server.engine_report(v) for v in ("1", "2")}
    for v, r in status["reports"].items():
        say(f"v{v} engine report: {json.dumps(r)}")
    try:
        mem_cmd = [py, "scripts/gpu_memory_check.py", "--metrics-url", server.metrics_url, "--http-url",
                   server.http_url, "--repository", str(server.repository), "--server-pid", str(server.pid)]
        commands["memory_check"] = " ".join(["python", *mem_cmd[1:]])
        steps["memory_after_load_rc"] = run_logged([*mem_cmd, "--json", str(out / "memory_after_load.json")],
                                                   timeout=max(30.0, min(180.0, h.left() - 60)))
        h.bench()
        if status["run"] is not None:
            h.report(status["run"]["id"], mem_cmd)
    finally:
        server.stop()
        write_json(out / "headline.json", status)
    ok = (status.get("run") or {}).get("status") == "completed" and steps.get("report_rc") == 0
    say("headline: " + ("OK" if ok else f"INCOMPLETE: {json.dumps(steps)}"))
    return 0 if ok else 1


# --------------------------------------------------------------------------- merge-json


def cmd_merge_json(args: argparse.Namespace) -> int:
    merged: dict[str, Any] = {}
    for item in args.items:
        name, _, path = item.partition("=")
        p = Path(path)
        merged[name] = json.loads(p.read_text()) if p.is_file() else {"missing": str(p)}
    write_json(Path(args.out), merged)
    say(f"wrote {args.out} ({', '.join(merged)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("envinfo")
    e.add_argument("--json")
    b = sub.add_parser("build7b")
    b.add_argument("--config", default=str(DEFAULT_CONFIG))
    b.add_argument("--out", default=str(DEFAULT_7B))
    b.add_argument("--device", default="cuda")
    b.add_argument("--json")
    s = sub.add_parser("smoke")
    s.add_argument("--checkpoint", default=str(ROOT / "models" / "demo-detector"))
    s.add_argument("--device", default="cuda")
    s.add_argument("--out", required=True)
    s.add_argument("--ready-timeout", type=float, default=300.0)
    s.add_argument("--max-tokens", type=int, default=64)
    s.add_argument("--timeout", type=float, default=120.0)
    h = sub.add_parser("headline")
    h.add_argument("--checkpoint", default=str(DEFAULT_7B))
    h.add_argument("--device", default="cuda")
    h.add_argument("--out", required=True)
    h.add_argument("--deadline", type=float, default=None, help="epoch seconds by which everything must be done")
    h.add_argument("--reserve-s", type=float, default=100.0, help="seconds kept after the benchmark for the report")
    h.add_argument("--ready-timeout", type=float, default=900.0)
    h.add_argument("--requests", type=int, default=64)
    h.add_argument("--warmup", type=int, default=4)
    h.add_argument("--concurrency", type=int, default=1)
    h.add_argument("--count", type=int, default=16)
    h.add_argument("--image-seed", type=int, default=0)
    h.add_argument("--image-size", type=int, default=1024, help="generated labels of SIZE x SIZE pixels (0: mixed)")
    h.add_argument("--max-tokens", type=int, default=200)
    h.add_argument("--request-timeout", type=float, default=300.0)
    h.add_argument("--gallery", type=int, default=4)
    m = sub.add_parser("merge-json")
    m.add_argument("--out", required=True)
    m.add_argument("items", nargs="+", metavar="NAME=PATH")
    args = p.parse_args(argv)
    return {"envinfo": cmd_envinfo, "build7b": cmd_build7b, "smoke": cmd_smoke, "headline": cmd_headline,
            "merge-json": cmd_merge_json}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
