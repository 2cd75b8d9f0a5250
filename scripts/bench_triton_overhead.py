"""What Triton costs on top of the engine: a 1-token request through the local Triton server against the
same call into the engine in-process, side by side in one run; and the fp8/bf16 ratio of the decoder's
weight bytes as the server reports them.

    .venv/bin/python scripts/bench_triton_overhead.py [--requests 200] [--checkpoint DIR] [--threads 1] [--device cuda]

Both sides do the same work on the same checkpoint and CPU: the label image as the dashboard sends it
(JPEG via ``services.images``, base64), the default prompt, ``max_tokens`` 1 at temperature 0, one
token. In-process: base64-decode and open the image (``decode_image``), parse the same
``sampling_parameters`` JSON as the client sends, ``Engine.generate`` with the cumulative
log-probability only if the client's request asks the server for it. Through Triton: the whole ``TritonClient.detect`` call, timed
around it (building and serializing the body included), over HTTP ``generate`` and over the gRPC stream.

Calls are interleaved in rounds (engine, HTTP, gRPC, with the order rotated every round), so drift hits
every path alike. The overhead of a transport is the median of its per-round differences (Triton round
trip - in-process call in the same round), with a 95 % bootstrap confidence interval over rounds.
Target: 2 ms or less at the median.

Threads: the client, the in-process engine and the server's two model processes share this machine's
cores. With torch's default (one OpenMP thread per core in every process), the idle processes' spinning
OpenMP workers take the cores from the busy one and the timings swing by hundreds of ms. So both sides
run torch with the same thread count, ``--threads`` (default 1): ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` are set before torch is imported, and the server's model processes inherit them.

Where the time goes: the server's model writes per-request timestamps (``QWEN_TRITON_TRACE``, see
``services.triton_backend_model``) on the same monotonic clock as the client's, so the script splits
each Triton round trip into client, transport in, hand-off (execute() to the start of serving), reading the
inputs, image decode and engine (the in-process work), cancellation checks, response back to the client,
and client parsing (``--no-trace`` turns this off).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MS = 2.0
PARAMS = {"max_tokens": 1, "temperature": 0}
ENGINE = "in-process engine"
TRANSPORTS = {"Triton HTTP generate": "http", "Triton gRPC stream": "grpc"}


def label_image() -> bytes:
    """A generated label photo, encoded as the dashboard sends it (services.images: JPEG, <= 1024 px)."""
    from services.images import load_image
    from services.label_generator import generate_label

    sample = generate_label(seed=424242)
    buf = io.BytesIO()
    sample.image.save(buf, "PNG")
    return load_image(buf.getvalue()).data


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def bootstrap_median_ci(values: list[float], reps: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median (rounds resampled with replacement)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, len(data), size=(reps, len(data)))], axis=1)
    lo, hi = np.percentile(medians, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def read_traces(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def breakdown(calls: list[dict], traces: list[dict]) -> dict[str, float]:
    """Median of each segment of the Triton round trips, from the client's and the model's stamps.

    A call is matched with the server trace whose ``execute`` stamp falls inside it (the calls run one
    at a time). Segments (ms): client = building and serializing the request; transport in = request
    sent -> the model's execute() (client library, network, Triton's frontend and core, the Python
    backend's copy into shared memory and message to the model process); hand-off = execute() -> the
    request's serving begins; inputs = reading the tensors and parameters; image decode and engine = the work the
    in-process call also does; cancel checks = the engine asking Triton whether the request was
    cancelled (one message to the server per check); response = engine done -> the response received
    by the client (building it, the Python backend's send, Triton, the network); client parse =
    response received -> detect() returned. Also ``page faults``: the serving thread's minor page
    faults per request (a count, not ms).
    """
    segments: dict[str, list[float]] = {}
    for call in calls:
        trace = next((t for t in traces if call["t0"] <= t["execute"] <= call["t1"]), None)
        if trace is None or "generated" not in trace:
            continue
        decode = trace.get("image_decode_ns", 0)
        engine = trace["generated"] - trace["inputs"]
        cancel = trace.get("cancel_check_ns", 0)
        parts = {
            "client": call["send_ns"] - call["t0"],
            "transport in": trace["execute"] - call["send_ns"],
            "hand-off": trace["picked"] - trace["execute"],
            "inputs": trace["inputs"] - trace["picked"] - decode,
            "image decode": decode,
            "engine": engine - cancel,
            "cancel checks": cancel,
            "response": call["recv_ns"] - trace["generated"],
            "client parse": call["t1"] - call["recv_ns"],
        }
        for name, ns in parts.items():
            segments.setdefault(name, []).append(ns / 1e6)
        segments.setdefault("page faults", []).append(trace.get("minor_faults", 0))
    return {name: statistics.median(values) for name, values in segments.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed rounds (one request per path each)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--checkpoint", help="default: the embedded default (demo detector or tiny)")
    parser.add_argument("--version", default="1", choices=["1", "2"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the in-process engine and of the server's model processes")
    parser.add_argument("--no-trace", action="store_true", help="no per-request server timestamps")
    parser.add_argument("--device", help="engine device of both sides (cpu, cuda); default: cuda where present")
    args = parser.parse_args(argv)

    # Before torch is imported anywhere; the server's model processes inherit the environment.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench-triton-overhead-"))
    trace_path = workdir / "trace.jsonl"
    if args.no_trace:
        os.environ.pop("QWEN_TRITON_TRACE", None)
    else:
        os.environ["QWEN_TRITON_TRACE"] = str(trace_path)

    import torch
    from prometheus_client.parser import text_string_to_metric_families

    from services.embedded_triton import resolve_checkpoint, start_embedded_triton
    from services.engine import Engine, SamplingParams, decode_image
    from services.prompt import build_prompt
    from services.triton_client import TritonClient

    torch.set_num_threads(args.threads)
    checkpoint = resolve_checkpoint(args.checkpoint)
    image_jpeg = label_image()
    image_b64 = base64.b64encode(image_jpeg).decode()
    prompt = build_prompt()
    load_before = load_average()

    server = start_embedded_triton(checkpoint, workdir=workdir / "server", device=args.device,
                                   ports={"http": None, "grpc": None, "metrics": None})
    http = grpc = None
    calls: dict[str, list[dict]] = {name: [] for name in (ENGINE, *TRANSPORTS)}
    try:
        precision = "fp8" if args.version == "2" else "bf16"
        engine = Engine(checkpoint, precision, device=args.device)
        http = TritonClient(server.http_url, protocol="http")
        grpc = TritonClient(server.grpc_url, protocol="grpc")
        clients = {"http": http, "grpc": grpc}
        # The in-process call does what the server's model does with the client's request: the same
        # sampling_parameters JSON, and the cumulative log-probability only if the request asks for it.
        body = http.request_body(image_b64, prompt, **PARAMS)
        params_json = body["sampling_parameters"]
        with_logprobs = bool(body.get("return_cumulative_logprob"))

        def in_process() -> dict:
            t0 = time.perf_counter_ns()
            result = engine.generate(prompt, [decode_image(image_b64)], SamplingParams.from_json(params_json),
                                     with_logprobs=with_logprobs)
            t1 = time.perf_counter_ns()
            assert result.num_output_tokens == 1
            return {"t0": t0, "t1": t1}

        def through(protocol: str) -> dict:
            t0 = time.perf_counter_ns()
            done = clients[protocol].detect(image_b64, prompt, version=args.version, **PARAMS)
            t1 = time.perf_counter_ns()
            assert done.num_output_tokens == 1
            return {"t0": t0, "t1": t1, "send_ns": done.send_ns, "recv_ns": done.recv_ns}

        paths = {ENGINE: in_process, **{name: (lambda p=p: through(p)) for name, p in TRANSPORTS.items()}}
        for _ in range(args.warmup):
            for fn in paths.values():
                fn()
        names = list(paths)
        for i in range(args.requests):
            for name in names[i % 3:] + names[: i % 3]:  # rotate so no path always runs first
                calls[name].append(paths[name]())

        metrics = http_metrics(server.metrics_url)
        weights = {}
        for family in text_string_to_metric_families(metrics):
            if family.name == "qwen_engine_weight_bytes":
                for s in family.samples:
                    weights[(s.labels["version"], s.labels["part"])] = (s.value, s.labels["mode"])
    finally:
        for client in (http, grpc):
            if client is not None:
                client.close()  # open gRPC streams would hold the server's shutdown
        server.stop()
    load_after = load_average()
    traces = read_traces(trace_path)
    shutil.rmtree(workdir, ignore_errors=True)

    times = {name: [(c["t1"] - c["t0"]) / 1e6 for c in cs] for name, cs in calls.items()}
    base = times[ENGINE]
    print(f"checkpoint: {checkpoint}  version {args.version}  device: {engine.device}  rounds: {args.requests}  "
          f"torch threads per process: {args.threads}  image: {len(image_jpeg)} B JPEG, {len(image_b64)} B base64")
    print(f"load average (1/5/15 min): before {load_before}  after {load_after}  ({os.cpu_count()} CPUs)")
    print(f"{'path':<24}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'overhead ms (paired median, 95% CI)':>40}")
    overheads: dict[str, dict[str, float]] = {}
    for name, values in times.items():
        over = ""
        if name != ENGINE:
            # Each round ran every path back to back: the median of the per-round differences is the
            # overhead with the machine's drift taken out.
            diffs = [v - b for v, b in zip(values, base)]
            lo, hi = bootstrap_median_ci(diffs)
            overheads[name] = {"median": statistics.median(diffs), "ci95": [lo, hi]}
            over = f"{overheads[name]['median']:10.2f}  [{lo:.2f}, {hi:.2f}]"
        print(f"{name:<24}{statistics.median(values):11.2f}{percentile(values, 10):9.2f}"
              f"{percentile(values, 90):9.2f}{over:>40}")
    worst = max(overheads, key=lambda n: overheads[n]["median"])
    w = overheads[worst]
    print(f"Triton overhead at the median (worst transport, {worst}): {w['median']:.2f} ms, 95% CI "
          f"[{w['ci95'][0]:.2f}, {w['ci95'][1]:.2f}]  (target <= {TARGET_MS:g} ms: "
          f"{'met' if w['median'] <= TARGET_MS else 'NOT met'})")

    splits = {name: breakdown(calls[name], traces) for name in TRANSPORTS} if traces else {}
    if any(splits.values()):
        print("\nwhere a Triton round trip goes (medians per segment, ms; see breakdown() for the segments):")
        seg_names = [s for s in next(v for v in splits.values() if v) if s != "page faults"]
        print(f"{'segment':<16}" + "".join(f"{name:>24}" for name in splits))
        for seg in seg_names:
            print(f"{seg:<16}" + "".join(f"{splits[name].get(seg, float('nan')):24.3f}" for name in splits))
        print(f"{'overhead parts':<16}" + "".join(
            f"{sum(v for k, v in splits[name].items() if k not in ('image decode', 'engine', 'page faults')):24.3f}"
            for name in splits))
        print(f"{'page faults':<16}" + "".join(f"{splits[name].get('page faults', 0):24.0f}" for name in splits)
              + "   (model's serving thread, per request)")
    bf16 = weights.get(("1", "decoder_linear"))
    fp8 = weights.get(("2", "decoder_linear"))
    if bf16 and fp8:
        print(f"\ndecoder linear weight bytes: v1 {int(bf16[0])} ({bf16[1]}), v2 {int(fp8[0])} ({fp8[1]}); "
              f"fp8/bf16 ratio {fp8[0] / bf16[0]:.3f}")
        model1, model2 = weights[("1", "model")][0], weights[("2", "model")][0]
        print(f"whole-model weight bytes: v1 {int(model1)}, v2 {int(model2)}; ratio {model2 / model1:.3f}")
    print(json.dumps({
        "medians_ms": {k: statistics.median(v) for k, v in times.items()},
        "paired_overhead_ms": overheads,
        "breakdown_ms": splits,
        "threads": args.threads,
        "device": str(engine.device),
        "cpus": os.cpu_count(),
        "load_average": {"before": load_before, "after": load_after},
        "fp8_bf16_decoder_ratio": (fp8[0] / bf16[0]) if bf16 and fp8 else None,
    }))
    return 0


def http_metrics(url: str) -> str:
    import requests

    return requests.get(url, timeout=5).text


if __name__ == "__main__":
    raise SystemExit(main())
