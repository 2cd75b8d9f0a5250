"""What the benchmark harness costs: its throughput against a bare tritonclient loop sending the same
requests, at concurrency 1 and 32, side by side in one run against the local Triton; and the sampler's
CPU at 10 samples per second.

    .venv/bin/python scripts/bench_harness_overhead.py [--requests 32] [--concurrency 1 32] [--rounds 5]
                                                       [--protocol grpc] [--checkpoint DIR]

The server: the embedded Triton (``services.embedded_triton``) on free ports, serving the tiny
random-weight checkpoint by default (``--checkpoint`` for another), both versions.

The requests, the same for both loops: ``--requests`` per version, versions interleaved on the same
image order (``benchmark.request_plan``: v1 img0, v2 img0, v1 img1, ...), over a generated labelled set
(``--images`` images from seed 0, longest side ``--max-side``; handed to the harness as uploaded
bytes, so that generating them is not counted as harness work), ``--max-tokens`` tokens with
``ignore_eos`` (every answer exactly that long), temperature 0, streamed, over ``--protocol``. The
request bodies are ``TritonClient.request_body`` of the same images, so both loops send byte-identical
inputs; the sha256 of every image the harness sent is checked against the bare loop's.

The harness: ``services.benchmark.run_benchmark`` with warm-up 0 and closed loop at the concurrency, a
``RunStore`` in a temporary folder and the shared sampler at 10 samples/s attached: everything a real
run does (a thread pool, TritonClient's pooled gRPC streams, box parsing and IoU, a committed SQLite
row per request, progress bookkeeping, the memory samples written).

The bare loop (gRPC): ``concurrency`` threads, each with its own ``tritonclient.grpc.InferenceServerClient``
and its own stream (``start_stream`` with a callback putting responses on a queue), its inputs built
before timing; each thread takes the next request from the shared plan (a lock around an iterator),
calls ``async_stream_infer(model, inputs, model_version, request_id, enable_empty_final_response=True)``
and waits on its queue for the response flagged ``triton_final_response``; nothing is parsed or stored.
(HTTP: each thread its own ``requests.Session`` posting the JSON body to ``.../generate_stream``, reading
the events to the end.) The shared sampler is stopped while the bare loop runs.

Throughput, for both: successful requests / (last receive - first send), the definition of
docs/benchmark-definitions.md. Runs alternate (bare, harness, then harness, bare, ...) so drift on this
shared machine hits both; the verdict uses the median ratio over rounds. Target: harness/bare >= 0.9.
Client CPU per request (this process's CPU time over the whole call / requests: for the harness that
includes the run's setup, its manifest and the 10 Hz sampler thread) is shown beside it, with the
load average after each pair (this machine's cores are shared: a load well above the CPU count
makes the CPU-bound server, and so both loops, several times slower and the ratios noisy).

The sampler: a fresh ``gpu_sampler.Sampler`` at 10 samples/s on the server's metrics URL and pid, for
``--sampler-seconds`` (20) while the server is idle; ``Sampler.cpu_fraction()`` is the sampling thread's
CPU time per wall second. Target: < 2% of one core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "qwen"


def bare_grpc(url: str, bodies: list[dict], plan: list, concurrency: int) -> list[tuple[int, int, bool]]:
    """The bare gRPC loop (see the module docstring); returns (send_ns, recv_ns, ok) per request."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    def inputs_of(body: dict) -> list:
        out = []
        for name, value in body.items():
            if isinstance(value, bool):
                t = grpcclient.InferInput(name, [1], "BOOL")
                t.set_data_from_numpy(np.array([value], dtype=bool))
            else:
                items = value if isinstance(value, list) else [value]
                t = grpcclient.InferInput(name, [len(items)], "BYTES")
                t.set_data_from_numpy(np.array([str(v).encode() for v in items], dtype=np.object_))
            out.append(t)
        return out

    pending = iter(range(len(plan)))
    take = threading.Lock()
    results: list[tuple[int, int, bool]] = []
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        responses: queue.SimpleQueue = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        inputs = [inputs_of(b) for b in bodies]
        ready.wait()
        go.wait()
        mine = []
        try:
            while True:
                with take:
                    i = next(pending, None)
                if i is None:
                    break
                item = plan[i]
                t0 = time.perf_counter_ns()
                client.async_stream_infer(MODEL, inputs[item.image_index], model_version=item.version,
                                          request_id=str(i), enable_empty_final_response=True)
                ok = True
                while True:
                    result, error = responses.get()
                    if error is not None:
                        ok = False
                        break
                    params = result.get_response().parameters
                    if "triton_final_response" in params and params["triton_final_response"].bool_param:
                        break
                mine.append((t0, time.perf_counter_ns(), ok))
        finally:
            client.stop_stream()
            client.close()
            with take:
                results.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    go.set()
    for t in threads:
        t.join()
    return results


def bare_http(url: str, bodies: list[dict], plan: list, concurrency: int, stream: bool) -> list[tuple[int, int, bool]]:
    """The bare HTTP loop: one requests.Session per thread, the generate(_stream) endpoint."""
    import requests

    pending = iter(range(len(plan)))
    take = threading.Lock()
    results: list[tuple[int, int, bool]] = []
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()
    endpoint = "generate_stream" if stream else "generate"
    payloads = [json.dumps(b).encode() for b in bodies]

    def worker() -> None:
        session = requests.Session()
        ready.wait()
        go.wait()
        mine = []
        try:
            while True:
                with take:
                    i = next(pending, None)
                if i is None:
                    break
                item = plan[i]
                t0 = time.perf_counter_ns()
                with session.post(f"http://{url}/v2/models/{MODEL}/versions/{item.version}/{endpoint}",
                                  data=payloads[item.image_index], headers={"Content-Type": "application/json"},
                                  stream=True, timeout=120) as r:
                    body = b"".join(r.iter_content(chunk_size=None))
                    ok = r.status_code == 200 and b'"error"' not in body
                mine.append((t0, time.perf_counter_ns(), ok))
        finally:
            session.close()
            with take:
                results.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    go.set()
    for t in threads:
        t.join()
    return results


def throughput(spans: list[tuple[int, int, bool]]) -> float:
    window = (max(r for _, r, _ in spans) - min(s for s, _, _ in spans)) / 1e9
    return sum(1 for *_, ok in spans if ok) / window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=32, help="requests per version per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5, help="bare/harness pairs per concurrency")
    parser.add_argument("--versions", nargs="+", default=["1", "2"])
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="generated images (seed 0)")
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--sampler-seconds", type=float, default=20.0)
    parser.add_argument("--checkpoint", help="default: the tiny random-weight checkpoint")
    args = parser.parse_args(argv)

    from services.bench_stats import request_throughput
    from services.benchmark import BenchmarkConfig, ImageSetSpec, load_image_set, request_plan, run_benchmark
    from services.checkpoint_builder import ensure_tiny_checkpoint
    from services.embedded_triton import start_embedded_triton
    from services.gpu_sampler import Sampler, stop_shared_sampler
    from services.run_store import RunStore
    from services.server_target import ServerTarget
    from services.triton_client import TritonClient

    from services.label_generator import generate_dataset

    checkpoint = args.checkpoint or ensure_tiny_checkpoint()
    # the generated images, handed to the harness as uploaded bytes: generating them is not its cost
    pngs = []
    for i, sample in enumerate(generate_dataset(0, args.images)):
        buf = io.BytesIO()
        sample.image.save(buf, "PNG")
        pngs.append((f"generated-0-{i:04d}.png", buf.getvalue()))
    spec = ImageSetSpec(kind="uploaded", images=tuple(pngs), max_side=args.max_side)
    images = load_image_set(spec).images
    extra = {"ignore_eos": True}
    stream = True
    work = Path(tempfile.mkdtemp(prefix="bench-harness-"))
    server = start_embedded_triton(checkpoint, workdir=work / "triton", ports={"http": None, "grpc": None, "metrics": None})
    try:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        with TritonClient(url, protocol=args.protocol) as client:
            bodies = [client.request_body(im.b64, None, args.max_tokens, 0.0, stream, extra) for im in images]
            for v in args.versions:  # the first request of each version is slow: not timed anywhere
                for im in images[:2]:
                    client.detect(im.b64, version=v, max_tokens=args.max_tokens, stream=stream, extra_sampling=extra)
        target = ServerTarget(server.http_url, server.grpc_url, server.metrics_url, args.protocol, embedded=True,
                              checkpoint=None, repository=server.repository, server_pid=server.pid)
        plan = request_plan(args.versions, len(images), args.requests, 0)
        store = RunStore(work / "db")
        print(f"server: embedded Triton {server.http_url} (gRPC {server.grpc_url}), checkpoint {checkpoint}")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start "
              "(other processes share these cores: see the load column)")
        print(f"requests per run: {len(plan)} ({args.requests} per version {args.versions}, interleaved), "
              f"{len(images)} generated images <= {args.max_side} px, max_tokens {args.max_tokens} (ignore_eos), "
              f"streamed, {args.protocol}")
        print()

        def run_bare(c: int) -> tuple[float, float]:
            cpu0 = time.process_time()
            spans = (bare_grpc(url, bodies, plan, c) if args.protocol == "grpc"
                     else bare_http(url, bodies, plan, c, stream))
            cpu = time.process_time() - cpu0
            failed = sum(1 for *_, ok in spans if not ok)
            if failed:
                print(f"  (bare loop: {failed} failed requests)")
            return throughput(spans), cpu / len(spans) * 1e3

        def run_harness(c: int) -> tuple[float, float]:
            cfg = BenchmarkConfig(versions=tuple(args.versions), image_set=spec, requests=args.requests, warmup=0,
                                  load="closed", concurrency=c, max_tokens=args.max_tokens, temperature=0.0,
                                  stream=stream, protocol=args.protocol, extra_sampling=dict(extra))
            cpu0 = time.process_time()
            outcome = run_benchmark(cfg, store=store, target=target)
            cpu = time.process_time() - cpu0
            stop_shared_sampler()  # not left running under the bare loop
            if outcome.status != "completed":
                raise SystemExit(f"harness run {outcome.run_id} {outcome.status}: {outcome.reason}")
            sent = [i["sha256"] for i in store.get_run(outcome.run_id).manifest["image_set"]["images"]]
            if sent != [im.sha256 for im in images]:
                raise SystemExit("the harness sent other images than the bare loop")
            records = store.get_requests(outcome.run_id)
            return request_throughput(records), cpu / len(records) * 1e3

        header = f"{'concurrency':>11}  {'round':>5}  {'bare req/s':>10}  {'harness req/s':>13}  {'ratio':>6}  " \
                 f"{'bare CPU ms/req':>15}  {'harness CPU ms/req':>18}  {'load avg':>8}"
        print(header)
        print("-" * len(header))
        verdicts = []
        for c in args.concurrency:
            ratios, bares, harnesses = [], [], []
            for r in range(args.rounds):
                order = ("bare", "harness") if r % 2 == 0 else ("harness", "bare")
                got = {}
                for which in order:
                    got[which] = run_bare(c) if which == "bare" else run_harness(c)
                (bare, bare_cpu), (harness, harness_cpu) = got["bare"], got["harness"]
                ratios.append(harness / bare)
                bares.append(bare)
                harnesses.append(harness)
                print(f"{c:>11}  {r + 1:>5}  {bare:>10.2f}  {harness:>13.2f}  {harness / bare:>6.3f}  "
                      f"{bare_cpu:>15.2f}  {harness_cpu:>18.2f}  {os.getloadavg()[0]:>8.2f}", flush=True)
            med = statistics.median(ratios)
            verdicts.append(f"concurrency {c}: median harness/bare = {med:.3f} "
                            f"({'meets' if med >= 0.9 else 'misses'} the target >= 0.9); per-round ratios "
                            f"{min(ratios):.2f}..{max(ratios):.2f}; median throughputs: bare "
                            f"{statistics.median(bares):.2f}, harness {statistics.median(harnesses):.2f} req/s "
                            f"(ratio {statistics.median(harnesses) / statistics.median(bares):.3f})")
        print()
        print("\n".join(verdicts))

        sampler = Sampler(rate_hz=10.0, metrics_url=server.metrics_url, root_pid=server.pid,
                          thread_name="overhead-sampler")
        sampler.start()
        time.sleep(args.sampler_seconds)
        fraction = sampler.cpu_fraction()
        n = len(sampler.samples())
        errors = sampler.errors()
        sampler.stop()
        print(f"sampler: {n} samples in {args.sampler_seconds:g} s ({n / args.sampler_seconds:.1f}/s; sources: "
              f"NVML, metrics {server.metrics_url}, host memory of pid {server.pid} and its children), "
              f"CPU {fraction * 100:.2f}% of one core ({'meets' if fraction < 0.02 else 'misses'} the target < 2%)"
              + (f"; failing sources: {errors}" if errors else ""))
        store.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
