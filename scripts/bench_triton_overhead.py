"""What Triton costs on top of the engine: a 1-token request through the local Triton server against the
same call into the engine in-process, side by side in one run; and the fp8/bf16 ratio of the decoder's
weight bytes as the server reports them.

    .venv/bin/python scripts/bench_triton_overhead.py [--requests 200] [--checkpoint DIR] [--threads 1] [--device cuda]

Both sides do the same work on the same checkpoint and CPU: the label image as the dashboard sends it
(JPEG via ``services.core.images``, base64), the default prompt, ``max_tokens`` 1 at temperature 0, one
token. In-process: base64-decode and open the image (``decode_image``), parse the same
``sampling_parameters`` JSON as the client sends, ``Engine.generate`` with the cumulative
log-probability only if the client's request asks the server for it. Through Triton: the whole ``TritonClient.detect`` call, timed
around it (building and serializing the body included), over HTTP ``generate`` and over the gRPC stream.

Calls are interleaved in rounds (engine, HTTP, gRPC, with the order rotated every round), so drift hits
every path alike. The overhead of a transport is the median of its per-round differences (Triton round
trip - in-process call in the same round), with a 95 % bootstrap confidence interval over rounds.
Target: 2 ms or less at the median, judged on the larger of the paired difference and the round trip's
segments outside the engine (``verdict()`` says why).

Threads: the client, the in-process engine and the server's two model processes share this machine's
cores. With torch's default (one OpenMP thread per core in every process), the idle processes' spinning
OpenMP workers take the cores from the busy one and the timings swing by hundreds of ms. So both sides
run torch with the same thread count, ``--threads`` (default 1): ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` are set before torch is imported, and the server's model processes inherit them.

The floor (``--no-floor`` skips it): the same rounds through a second server whose model has the same
interface but no engine: it reads the request as this project's model does, computes (``compute_for``:
hashing, with the GIL released as in torch's kernels) for as long as the in-process call took at the
median, and answers one token; against the same computation run in-process. Its overhead is what
Triton and its Python backend cost around any model on this machine (its frontends, the copies into
shared memory, the messages and wake-ups between the processes); the difference to the real overhead
is what this project's model adds on top.

Where the time goes: the server's model writes per-request timestamps (``QWEN_TRITON_TRACE``, see
``services.serving.backend_model``) on the same monotonic clock as the client's, so the script splits
each Triton round trip into client, transport in, hand-off (execute() to the start of serving), reading
the inputs, image decode and engine (the in-process work), cancellation checks, response back to the
client, and client parsing (``--no-trace`` turns this off).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import inspect
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET_MS = 2.0
PARAMS = {"max_tokens": 1, "temperature": 0}
ENGINE = "in-process engine"
TRANSPORTS = {"Triton HTTP generate": "http", "Triton gRPC stream": "grpc"}
SPIN = "in-process compute"
FLOOR_MODEL_PY = '''"""Written by scripts/bench_triton_overhead.py: the floor model. The vLLM backend's interface and
no engine: it reads each request as the project's model does, computes for QWEN_FLOOR_COMPUTE_MS
(compute_for: hashing, which like torch's kernels runs with the GIL released) and answers one token
with the outputs the request asks for."""
import hashlib
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

COMPUTE_NS = int(float(os.environ["QWEN_FLOOR_COMPUTE_MS"]) * 1e6)


COMPUTE_FOR_SOURCE

def flag(inputs, name):
    return name in inputs and bool(inputs[name].as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        output = pb_utils.get_output_config_by_name(config, "text_output")
        self.dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            inputs = {tensor.name(): tensor for tensor in request.inputs()}
            inputs["text_input"].as_numpy()
            if "image" in inputs:
                inputs["image"].as_numpy()
            json.loads(inputs["sampling_parameters"].as_numpy().reshape(-1)[0])
            compute_for(COMPUTE_NS)
            tensors = [pb_utils.Tensor("text_output", np.asarray([b"0"], dtype=self.dtype))]
            if flag(inputs, "return_finish_reason"):
                tensors.append(pb_utils.Tensor("finish_reason", np.asarray(["length"], dtype=np.object_)))
            if flag(inputs, "return_num_input_tokens"):
                tensors.append(pb_utils.Tensor("num_input_tokens", np.asarray([1], dtype=np.uint32)))
            if flag(inputs, "return_num_output_tokens"):
                tensors.append(pb_utils.Tensor("num_output_tokens", np.asarray([1], dtype=np.uint32)))
            sender.send(pb_utils.InferenceResponse(output_tensors=tensors),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def label_image() -> bytes:
    """A generated label photo, encoded as the dashboard sends it (services.core.images: JPEG, <= 1024 px)."""
    from services.core.images import load_image
    from services.image_sets.generator import generate_label

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
    request's serving begins; inputs = reading the tensors and parameters; image decode and engine =
    the work the in-process call also does; cancel checks = the engine asking Triton whether the request was
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


ENGINE_WORK = ("image decode", "engine")  # the segments the in-process call also runs


def outside_engine(segments: dict[str, float]) -> float:
    """The sum of a round trip's segment medians outside the engine's work: what Triton adds, measured."""
    return sum(v for k, v in segments.items() if k not in (*ENGINE_WORK, "page faults"))


def verdict(paired: dict[str, dict], splits: dict[str, dict], in_process_ms: float) -> dict:
    """The figure the target is judged on, per transport, and the worst transport's.

    The paired difference (round trip - in-process call) is Triton's cost only while the engine runs as
    fast in the server's model process as in this one. It need not: on the H100 host the same engine
    call took 7.6 ms longer in this process, and the paired difference came out at -3.7 ms. So where the
    model's trace is on, each transport is judged on the larger of its paired difference and its
    segments outside the engine (measured directly, whatever the engine's speed), and the engine's time
    on both sides is reported; without the trace, on the paired difference alone.
    """
    judged: dict[str, dict] = {}
    for name, pair in paired.items():
        entry = {"paired_ms": pair["median"], "ms": pair["median"], "basis": "paired difference"}
        segments = splits.get(name) or {}
        if segments:
            entry["outside_ms"] = outside_engine(segments)
            entry["server_work_ms"] = sum(segments.get(k, 0.0) for k in ENGINE_WORK)
            entry["in_process_ms"] = in_process_ms
            if entry["outside_ms"] > entry["ms"]:
                entry["ms"] = entry["outside_ms"]
                entry["basis"] = "segments outside the engine (above the paired difference)"
        judged[name] = entry
    worst_name = max(judged, key=lambda n: judged[n]["ms"])
    worst = {"transport": worst_name, **judged[worst_name]}
    return {"transports": judged, "worst": worst, "met": worst["ms"] <= TARGET_MS, "target_ms": TARGET_MS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed rounds (one request per path each)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--checkpoint", help="default: the embedded default (demo detector or tiny)")
    parser.add_argument("--version", default="1", choices=["1", "2"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the in-process engine and of the server's model processes")
    parser.add_argument("--no-trace", action="store_true", help="no per-request server timestamps")
    parser.add_argument("--device", help="engine device of both sides (cpu, cuda); default: cuda where present")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor (a model with no engine)")
    return parser.parse_args(argv)


def prepare_environment(args: argparse.Namespace) -> tuple[Path, Path]:
    """Thread counts and the trace file for this process and the server's model processes (which
    inherit the environment); call before torch is imported anywhere. Returns (workdir, trace path)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench-triton-overhead-"))
    trace_path = workdir / "trace.jsonl"
    if args.no_trace:
        os.environ.pop("QWEN_TRITON_TRACE", None)
    else:
        os.environ["QWEN_TRITON_TRACE"] = str(trace_path)
    return workdir, trace_path


def engine_weights(metrics: str) -> dict[tuple[str, str], tuple[float, str]]:
    """``qwen_engine_weight_bytes`` from the metrics page: (version, part) -> (bytes, mode)."""
    from prometheus_client.parser import text_string_to_metric_families

    weights = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "qwen_engine_weight_bytes":
            for s in family.samples:
                weights[(s.labels["version"], s.labels["part"])] = (s.value, s.labels["mode"])
    return weights


def measure_paths(args: argparse.Namespace, checkpoint: Path, workdir: Path, image_b64: str,
                  prompt: str) -> tuple[Any, dict[str, list[dict]], dict]:
    """The interleaved rounds of the in-process engine and both Triton transports, against an
    embedded server; returns (the in-process engine, each path's calls, the server's weight bytes)."""
    from services.client.triton_client import TritonClient
    from services.serving.embedded_triton import start_embedded_triton
    from services.serving.engine import Engine, SamplingParams, decode_image

    server = start_embedded_triton(checkpoint, workdir=workdir / "server", device=args.device,
                                   ports={"http": None, "grpc": None, "metrics": None})
    http = grpc = None
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

        paths = {ENGINE: in_process, **{name: (lambda p=p: timed_detect(clients[p], image_b64, prompt, args.version))
                                        for name, p in TRANSPORTS.items()}}
        calls = interleaved(paths, args.requests, args.warmup)
        weights = engine_weights(http_metrics(server.metrics_url))
    finally:
        for client in (http, grpc):
            if client is not None:
                client.close()  # open gRPC streams would hold the server's shutdown
        server.stop()
    return engine, calls, weights


def print_verdict(judged: dict) -> None:
    w = judged["worst"]
    print(f"Triton overhead at the median (worst transport, {w['transport']}): {w['ms']:.2f} ms, the "
          f"{w['basis']}  (target <= {TARGET_MS:g} ms: {'met' if judged['met'] else 'NOT met'})")
    for name, j in judged["transports"].items():
        if "server_work_ms" in j:
            print(f"  {name}: paired {j['paired_ms']:.2f} ms, segments outside the engine {j['outside_ms']:.2f} ms;"
                  f" the engine's work took {j['server_work_ms']:.2f} ms in the server, "
                  f"{j['in_process_ms']:.2f} ms in-process")


def print_floor(floor_times: dict[str, list[float]], in_process_ms: float,
                overheads: dict[str, dict]) -> dict[str, dict]:
    """The floor's table and what the project's model adds to it; returns the floor's overheads."""
    print(f"\nthe floor: the same rounds through Triton to a model with no engine that computes (hashing, GIL"
          f" released) for {in_process_ms:.2f} ms, the in-process median above, and answers one token")
    floor = print_table(floor_times, SPIN)
    print("what this project's model adds to the floor (overhead - floor, paired medians): " + ", ".join(
        f"{name.removeprefix('Triton ')} {overheads[name]['median'] - floor[name]['median']:.2f} ms"
        for name in TRANSPORTS))
    return floor


def print_breakdown(splits: dict[str, dict]) -> None:
    print("\nwhere a Triton round trip goes (medians per segment, ms; see breakdown() for the segments):")
    seg_names = [s for s in next(v for v in splits.values() if v) if s != "page faults"]
    print(f"{'segment':<16}" + "".join(f"{name:>24}" for name in splits))
    for seg in seg_names:
        print(f"{seg:<16}" + "".join(f"{splits[name].get(seg, float('nan')):24.3f}" for name in splits))
    print(f"{'overhead parts':<16}" + "".join(f"{outside_engine(splits[name]):24.3f}" for name in splits))
    print(f"{'page faults':<16}" + "".join(f"{splits[name].get('page faults', 0):24.0f}" for name in splits)
          + "   (model's serving thread, per request)")


def print_weights(weights: dict) -> None:
    """Decoder-linear and whole-model weight bytes of both versions, where the server reported them."""
    bf16 = weights.get(("1", "decoder_linear"))
    fp8 = weights.get(("2", "decoder_linear"))
    if bf16 and fp8:
        print(f"\ndecoder linear weight bytes: v1 {int(bf16[0])} ({bf16[1]}), v2 {int(fp8[0])} ({fp8[1]}); "
              f"fp8/bf16 ratio {fp8[0] / bf16[0]:.3f}")
        model1, model2 = weights[("1", "model")][0], weights[("2", "model")][0]
        print(f"whole-model weight bytes: v1 {int(model1)}, v2 {int(model2)}; ratio {model2 / model1:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir, trace_path = prepare_environment(args)  # before torch is imported anywhere

    import torch

    from services.core.prompt import build_prompt
    from services.serving.embedded_triton import resolve_checkpoint

    torch.set_num_threads(args.threads)
    checkpoint = resolve_checkpoint(args.checkpoint)
    image_jpeg = label_image()
    image_b64 = base64.b64encode(image_jpeg).decode()
    prompt = build_prompt()
    load_before = load_average()

    engine, calls, weights = measure_paths(args, checkpoint, workdir, image_b64, prompt)
    times = durations_ms(calls)
    in_process_ms = statistics.median(times[ENGINE])
    floor_times = None
    if not args.no_floor:
        floor_times = measure_floor(checkpoint, workdir / "floor", in_process_ms, image_b64, prompt,
                                    args.version, args.requests, args.warmup)
    load_after = load_average()
    traces = read_traces(trace_path)
    shutil.rmtree(workdir, ignore_errors=True)

    print(f"checkpoint: {checkpoint}  version {args.version}  device: {engine.device}  rounds: {args.requests}  "
          f"torch threads per process: {args.threads}  image: {len(image_jpeg)} B JPEG, {len(image_b64)} B base64")
    print(f"load average (1/5/15 min): before {load_before}  after {load_after}  ({os.cpu_count()} CPUs)")
    overheads = print_table(times, ENGINE)
    splits = {name: breakdown(calls[name], traces) for name in TRANSPORTS} if traces else {}
    judged = verdict(overheads, splits, in_process_ms)
    print_verdict(judged)
    floor = print_floor(floor_times, in_process_ms, overheads) if floor_times is not None else {}
    if any(splits.values()):
        print_breakdown(splits)
    print_weights(weights)
    bf16, fp8 = weights.get(("1", "decoder_linear")), weights.get(("2", "decoder_linear"))
    print(json.dumps({
        "medians_ms": {k: statistics.median(v) for k, v in times.items()},
        "paired_overhead_ms": overheads,
        "floor_overhead_ms": floor or None,
        "breakdown_ms": splits,
        "verdict": judged,
        "threads": args.threads,
        "device": str(engine.device),
        "cpus": os.cpu_count(),
        "load_average": {"before": load_before, "after": load_after},
        "fp8_bf16_decoder_ratio": (fp8[0] / bf16[0]) if bf16 and fp8 else None,
    }))
    return 0


def timed_detect(client, image_b64: str, prompt: str, version: str) -> dict:
    """One 1-token request through Triton, timed around the whole ``detect`` call; with the client's
    send and receive stamps."""
    t0 = time.perf_counter_ns()
    done = client.detect(image_b64, prompt, version=version, **PARAMS)
    t1 = time.perf_counter_ns()
    assert done.num_output_tokens == 1
    return {"t0": t0, "t1": t1, "send_ns": done.send_ns, "recv_ns": done.recv_ns}


def durations_ms(calls: dict[str, list[dict]]) -> dict[str, list[float]]:
    return {name: [(c["t1"] - c["t0"]) / 1e6 for c in cs] for name, cs in calls.items()}


def interleaved(paths: dict, rounds: int, warmup: int) -> dict[str, list[dict]]:
    """Call every path once per round, the order rotated every round so that no path always runs first
    (drift of the machine hits every path alike); each call returns its stamps."""
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    names = list(paths)
    calls: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            calls[name].append(paths[name]())
    return calls


def print_table(times: dict[str, list[float]], base_name: str) -> dict[str, dict]:
    """Print each path's median and spread and, against ``base_name``, its paired overhead."""
    base = times[base_name]
    print(f"{'path':<24}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'overhead ms (paired median, 95% CI)':>40}")
    overheads: dict[str, dict[str, float]] = {}
    for name, values in times.items():
        over = ""
        if name != base_name:
            # Each round ran every path back to back: the median of the per-round differences is the
            # overhead with the machine's drift taken out.
            diffs = [v - b for v, b in zip(values, base)]
            lo, hi = bootstrap_median_ci(diffs)
            overheads[name] = {"median": statistics.median(diffs), "ci95": [lo, hi]}
            over = f"{overheads[name]['median']:10.2f}  [{lo:.2f}, {hi:.2f}]"
        print(f"{name:<24}{statistics.median(values):11.2f}{percentile(values, 10):9.2f}"
              f"{percentile(values, 90):9.2f}{over:>40}")
    return overheads


def compute_for(ns: int, block: bytes = bytes(256 * 1024)) -> None:
    """Compute for ``ns`` nanoseconds: SHA-256 of a block, over and over; hashing runs with the GIL
    released, as torch's kernels do (the floor model runs this same function)."""
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        hashlib.sha256(block).digest()


def floor_model_py() -> str:
    """The floor model's source, with ``compute_for`` as defined here."""
    return FLOOR_MODEL_PY.replace("COMPUTE_FOR_SOURCE\n", inspect.getsource(compute_for) + "\n")


def measure_floor(checkpoint: Path, workdir: Path, compute_ms: float, image_b64: str, prompt: str, version: str,
                  rounds: int, warmup: int) -> dict[str, list[float]]:
    """Round trips through a server whose model only computes for ``compute_ms`` (FLOOR_MODEL_PY), and
    the same computation in-process, interleaved as the main measurement is."""
    from services.serving.embedded_triton import start_embedded_triton
    from services.client.triton_client import TritonClient

    os.environ["QWEN_FLOOR_COMPUTE_MS"] = repr(compute_ms)  # the server's model processes inherit it
    compute_ns = int(compute_ms * 1e6)
    server = start_embedded_triton(checkpoint, workdir=workdir, versions={version: "bf16"}, model_py=floor_model_py(),
                                   ports={"http": None, "grpc": None, "metrics": None})
    clients = {}
    try:
        clients = {p: TritonClient(server.url(p), protocol=p) for p in TRANSPORTS.values()}

        def spin() -> dict:
            t0 = time.perf_counter_ns()
            compute_for(compute_ns)
            return {"t0": t0, "t1": time.perf_counter_ns()}

        paths = {SPIN: spin, **{name: (lambda p=p: timed_detect(clients[p], image_b64, prompt, version))
                                for name, p in TRANSPORTS.items()}}
        calls = interleaved(paths, rounds, warmup)
    finally:
        for client in clients.values():
            client.close()
        server.stop()
    return durations_ms(calls)


def http_metrics(url: str) -> str:
    import requests

    return requests.get(url, timeout=5).text


if __name__ == "__main__":
    raise SystemExit(main())
