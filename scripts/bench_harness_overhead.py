"""What the benchmark harness costs: its throughput against a bare tritonclient loop sending the same
requests, at concurrency 1 and 32, side by side in one run against the local Triton; and the sampler's
CPU at 10 samples per second.

    .venv/bin/python scripts/bench_harness_overhead.py [--requests 32] [--concurrency 1 32] [--rounds 5]
                                                       [--protocol grpc] [--checkpoint DIR] [--sampler-only]

The server: the embedded Triton (``services.serving.embedded_triton``) on free ports, serving the tiny
random-weight checkpoint by default (``--checkpoint`` for another), both versions.

The requests, the same for both loops: ``--requests`` per version, versions interleaved on the same
image order (``benchmark.request_plan``: v1 img0, v2 img0, v1 img1, ...), over a generated labelled set
(``--images`` images from seed 0, longest side ``--max-side``; handed to the harness as uploaded
bytes, so that generating them is not counted as harness work), ``--max-tokens`` tokens with
``ignore_eos`` (every answer exactly that long), temperature 0, streamed, over ``--protocol``. The
request bodies are ``TritonClient.request_body`` of the same images, so both loops send byte-identical
inputs; the sha256 of every image the harness sent is checked against the bare loop's.

The harness: ``services.bench.runner.run_benchmark`` with warm-up 0 and closed loop at the concurrency, a
``RunStore`` in a temporary folder and the shared sampler at 10 samples/s attached: everything a real
run does (a thread pool, TritonClient's pooled gRPC streams, box parsing and IoU, a committed SQLite
row per request, progress bookkeeping, the memory samples written).

The bare loop (gRPC): ``concurrency`` threads (``closed_loop``, shared with the HTTP loop), each with its
own ``tritonclient.grpc.InferenceServerClient`` and its own stream (``start_stream`` with a callback putting
responses on a queue), its inputs built before timing; each thread takes the next request from the shared
plan (a lock around an iterator), calls ``async_stream_infer(model, inputs, model_version, request_id, enable_empty_final_response=True)``
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
``--sampler-seconds`` (20) while the server is idle, as the dashboard runs it (NVML and the serving
processes' host memory at every tick, the metrics page every ``metrics_interval_s``, 1 s by default);
then, for comparison, the same with the metrics page read at every tick. ``Sampler.cpu_fraction()`` is
the sampling thread's CPU time (``thread_time``) per wall second; where NVML is absent (no GPU), that
source costs only its failed retry once a second. Target: < 2% of one core. ``--sampler-only``
skips the harness comparison.
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
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "qwen"


Sender = Callable[[int, Any], bool]


def closed_loop(plan: list, concurrency: int, open_sender: Callable[[], tuple[Sender, Callable[[], None]]]
                ) -> list[tuple[int, int, bool]]:
    """The bare loops' timing: ``concurrency`` threads, each opening its own sender before the start
    (``open_sender() -> (send, close)``; ``send(i, item) -> ok`` sends request ``i`` of the plan and
    returns once its last response is in), all released together; each thread takes the next request
    from the shared plan (a lock around an iterator) and stamps it with ``perf_counter_ns`` just
    before ``send`` and just after it returns. Returns (send_ns, recv_ns, ok) per request."""
    pending = iter(range(len(plan)))
    take = threading.Lock()
    results: list[tuple[int, int, bool]] = []
    ready = threading.Barrier(concurrency + 1)
    go = threading.Event()

    def worker() -> None:
        send, close = open_sender()
        ready.wait()
        go.wait()
        mine = []
        try:
            while True:
                with take:
                    i = next(pending, None)
                if i is None:
                    break
                t0 = time.perf_counter_ns()
                ok = send(i, plan[i])
                mine.append((t0, time.perf_counter_ns(), ok))
        finally:
            close()
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

    def open_sender() -> tuple[Sender, Callable[[], None]]:
        client = grpcclient.InferenceServerClient(url)
        responses: queue.SimpleQueue = queue.SimpleQueue()
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        inputs = [inputs_of(b) for b in bodies]

        def send(i: int, item: Any) -> bool:
            client.async_stream_infer(MODEL, inputs[item.image_index], model_version=item.version,
                                      request_id=str(i), enable_empty_final_response=True)
            while True:
                result, error = responses.get()
                if error is not None:
                    return False
                params = result.get_response().parameters
                if "triton_final_response" in params and params["triton_final_response"].bool_param:
                    return True

        def close() -> None:
            client.stop_stream()
            client.close()

        return send, close

    return closed_loop(plan, concurrency, open_sender)


def bare_http(url: str, bodies: list[dict], plan: list, concurrency: int, stream: bool) -> list[tuple[int, int, bool]]:
    """The bare HTTP loop: one requests.Session per thread, the generate(_stream) endpoint."""
    import requests

    endpoint = "generate_stream" if stream else "generate"
    payloads = [json.dumps(b).encode() for b in bodies]

    def open_sender() -> tuple[Sender, Callable[[], None]]:
        session = requests.Session()

        def send(i: int, item: Any) -> bool:
            with session.post(f"http://{url}/v2/models/{MODEL}/versions/{item.version}/{endpoint}",
                              data=payloads[item.image_index], headers={"Content-Type": "application/json"},
                              stream=True, timeout=120) as r:
                body = b"".join(r.iter_content(chunk_size=None))
                return r.status_code == 200 and b'"error"' not in body

        return send, session.close

    return closed_loop(plan, concurrency, open_sender)


def throughput(spans: list[tuple[int, int, bool]]) -> float:
    window = (max(r for _, r, _ in spans) - min(s for s, _, _ in spans)) / 1e9
    return sum(1 for *_, ok in spans if ok) / window


def with_cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and this process's CPU seconds (every thread) while it ran."""
    cpu0 = time.process_time()
    out = fn()
    return out, time.process_time() - cpu0


def measure_sampler(metrics_url: str, pid: int, seconds: float, metrics_interval_s: float | None) -> dict:
    """A fresh 10/s ``Sampler`` on the server for ``seconds``: its thread's CPU per wall second, the
    samples taken, the metrics readings among them, the failing sources, the load average after."""
    from services.bench.sampler import Sampler

    extra = {} if metrics_interval_s is None else {"metrics_interval_s": metrics_interval_s}
    sampler = Sampler(rate_hz=10.0, metrics_url=metrics_url, root_pid=pid, thread_name="overhead-sampler", **extra)
    sampler.start()
    time.sleep(seconds)
    fraction = sampler.cpu_fraction()
    samples = sampler.samples()
    errors = sampler.errors()
    sampler.stop()
    return {"fraction": fraction, "samples": len(samples), "interval": sampler.metrics_interval_s,
            "reads": sum(1 for x in samples if x.metrics and x.metrics_fresh), "errors": errors,
            "load": os.getloadavg()[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=32, help="requests per version per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5, help="bare/harness pairs per concurrency")
    parser.add_argument("--versions", nargs="+", default=["1", "2"])
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--images", type=int, default=8, help="generated images (seed 0)")
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--sampler-seconds", type=float, default=20.0,
                        help="seconds of each sampler measurement (two: the default metrics interval, then every tick)")
    parser.add_argument("--sampler-only", action="store_true",
                        help="measure the sampler only, not the harness against the bare loop")
    parser.add_argument("--checkpoint", help="default: the tiny random-weight checkpoint")
    return parser.parse_args(argv)


def uploaded_images(count: int, max_side: int) -> tuple[Any, list]:
    """(image-set spec, loaded images) of ``count`` generated images from seed 0, handed to the
    harness as uploaded bytes: generating them is not its cost."""
    from services.image_sets.image_set import ImageSetSpec, load_image_set
    from services.image_sets.generator import generate_dataset

    pngs = []
    for i, sample in enumerate(generate_dataset(0, count)):
        buf = io.BytesIO()
        sample.image.save(buf, "PNG")
        pngs.append((f"generated-0-{i:04d}.png", buf.getvalue()))
    spec = ImageSetSpec(kind="uploaded", images=tuple(pngs), max_side=max_side)
    return spec, load_image_set(spec).images


EXTRA = {"ignore_eos": True}
STREAM = True


class Contest:
    """The bare loop and the harness against one server, with the same images and request plan."""

    def __init__(self, args: argparse.Namespace, server: Any, spec: Any, images: list, work: Path) -> None:
        from services.bench.request_plan import request_plan
        from services.bench.store import RunStore
        from services.client.server_target import ServerTarget
        from services.client.triton_client import TritonClient

        self.args, self.spec, self.images = args, spec, images
        self.url = server.grpc_url if args.protocol == "grpc" else server.http_url
        with TritonClient(self.url, protocol=args.protocol) as client:
            self.bodies = [client.request_body(im.b64, None, args.max_tokens, 0.0, STREAM, EXTRA) for im in images]
            for v in args.versions:  # the first request of each version is slow: not timed anywhere
                for im in images[:2]:
                    client.detect(im.b64, version=v, max_tokens=args.max_tokens, stream=STREAM, extra_sampling=EXTRA)
        self.target = ServerTarget(server.http_url, server.grpc_url, server.metrics_url, args.protocol, embedded=True,
                                   checkpoint=None, repository=server.repository, server_pid=server.pid)
        self.plan = request_plan(args.versions, len(images), args.requests, 0)
        self.store = RunStore(work / "db")

    def run_bare(self, c: int) -> tuple[float, float]:
        """(throughput in req/s, client CPU ms per request) of the bare loop at concurrency ``c``."""
        args = self.args
        spans, cpu = with_cpu(lambda: bare_grpc(self.url, self.bodies, self.plan, c) if args.protocol == "grpc"
                              else bare_http(self.url, self.bodies, self.plan, c, STREAM))
        failed = sum(1 for *_, ok in spans if not ok)
        if failed:
            print(f"  (bare loop: {failed} failed requests)")
        return throughput(spans), cpu / len(spans) * 1e3

    def run_harness(self, c: int) -> tuple[float, float]:
        """(throughput in req/s, client CPU ms per request) of a harness run at concurrency ``c``."""
        from services.bench.runner import BenchmarkConfig, run_benchmark
        from services.bench.sampler import stop_shared_sampler
        from services.bench.stats import request_throughput

        args, store = self.args, self.store
        cfg = BenchmarkConfig(versions=tuple(args.versions), image_set=self.spec, requests=args.requests, warmup=0,
                              load="closed", concurrency=c, max_tokens=args.max_tokens, temperature=0.0,
                              stream=STREAM, protocol=args.protocol, extra_sampling=dict(EXTRA))
        outcome, cpu = with_cpu(lambda: run_benchmark(cfg, store=store, target=self.target))
        stop_shared_sampler()  # not left running under the bare loop
        if outcome.status != "completed":
            raise SystemExit(f"harness run {outcome.run_id} {outcome.status}: {outcome.reason}")
        sent = [i["sha256"] for i in store.get_run(outcome.run_id).manifest["image_set"]["images"]]
        if sent != [im.sha256 for im in self.images]:
            raise SystemExit("the harness sent other images than the bare loop")
        records = store.get_requests(outcome.run_id)
        return request_throughput(records), cpu / len(records) * 1e3

    def compare_at(self, c: int) -> str:
        """``--rounds`` bare/harness pairs at concurrency ``c``, alternating which goes first; one
        table row a round; returns the verdict line."""
        ratios, bares, harnesses = [], [], []
        for r in range(self.args.rounds):
            order = ("bare", "harness") if r % 2 == 0 else ("harness", "bare")
            got = {}
            for which in order:
                got[which] = self.run_bare(c) if which == "bare" else self.run_harness(c)
            (bare, bare_cpu), (harness, harness_cpu) = got["bare"], got["harness"]
            ratios.append(harness / bare)
            bares.append(bare)
            harnesses.append(harness)
            print(f"{c:>11}  {r + 1:>5}  {bare:>10.2f}  {harness:>13.2f}  {harness / bare:>6.3f}  "
                  f"{bare_cpu:>15.2f}  {harness_cpu:>18.2f}  {os.getloadavg()[0]:>8.2f}", flush=True)
        med = statistics.median(ratios)
        return (f"concurrency {c}: median harness/bare = {med:.3f} "
                f"({'meets' if med >= 0.9 else 'misses'} the target >= 0.9); per-round ratios "
                f"{min(ratios):.2f}..{max(ratios):.2f}; median throughputs: bare "
                f"{statistics.median(bares):.2f}, harness {statistics.median(harnesses):.2f} req/s "
                f"(ratio {statistics.median(harnesses) / statistics.median(bares):.3f})")


def print_setup(args: argparse.Namespace, server: Any, checkpoint: str, contest: Contest) -> None:
    print(f"server: embedded Triton {server.http_url} (gRPC {server.grpc_url}), checkpoint {checkpoint}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start "
          "(other processes share these cores: see the load column)")
    print(f"requests per run: {len(contest.plan)} ({args.requests} per version {args.versions}, interleaved), "
          f"{len(contest.images)} generated images <= {args.max_side} px, max_tokens {args.max_tokens} (ignore_eos), "
          f"streamed, {args.protocol}")
    print()


def compare_harness(args: argparse.Namespace, contest: Contest) -> None:
    """The harness against the bare loop at each ``--concurrency``: a table, then the verdicts."""
    header = "" if args.sampler_only else f"{'concurrency':>11}  {'round':>5}  {'bare req/s':>10}  {'harness req/s':>13}  {'ratio':>6}  " \
             f"{'bare CPU ms/req':>15}  {'harness CPU ms/req':>18}  {'load avg':>8}"
    if header:
        print(header)
        print("-" * len(header))
    verdicts = [contest.compare_at(c) for c in ([] if args.sampler_only else args.concurrency)]
    if verdicts:
        print()
        print("\n".join(verdicts))
        print()


def report_sampler(args: argparse.Namespace, server: Any) -> None:
    """The sampler's CPU with the default metrics interval, then with a metrics read at every tick."""
    print(f"sampler at 10 samples/s, {args.sampler_seconds:g} s each, server idle; sources: NVML and the host memory "
          f"of pid {server.pid} and its children at every tick, metrics {server.metrics_url} every metrics_interval_s")
    for interval in (None, 0.0):  # the default interval, then (for comparison) a read at every tick
        m = measure_sampler(server.metrics_url, server.pid, args.sampler_seconds, interval)
        how = (f"metrics every {m['interval']:g} s (the default)" if interval is None
               else "metrics at every tick (metrics_interval_s=0, for comparison)")
        verdict = f" ({'meets' if m['fraction'] < 0.02 else 'misses'} the target < 2%)" if interval is None else ""
        print(f"  {how}: {m['samples']} samples, {m['reads']} metrics readings: "
              f"CPU {m['fraction'] * 100:.2f}% of one core{verdict}; load average {m['load']:.2f}"
              + (f"; failing sources: {m['errors']}" if m["errors"] else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from services.serving.checkpoint_builder import ensure_tiny_checkpoint
    from services.serving.embedded_triton import start_embedded_triton

    checkpoint = args.checkpoint or ensure_tiny_checkpoint()
    spec, images = uploaded_images(args.images, args.max_side)
    work = Path(tempfile.mkdtemp(prefix="bench-harness-"))
    server = start_embedded_triton(checkpoint, workdir=work / "triton", ports={"http": None, "grpc": None, "metrics": None})
    try:
        contest = Contest(args, server, spec, images, work)
        print_setup(args, server, checkpoint, contest)
        compare_harness(args, contest)
        report_sampler(args, server)
        contest.store.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
