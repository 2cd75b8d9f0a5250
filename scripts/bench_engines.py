"""The vLLM engine against the transformers engine, side by side in one run, through the embedded Triton.

For each engine in turn (one server at a time, so they do not share the CPU), version 1 (bf16) of the
checkpoint (default: the demo detector) on its own: the median latency of a 1-token and of a 64-token
request (HTTP generate, a label image new to the server each time: no prefix or image cache hit), and
the throughput (requests/s, output tokens/s) of the project's benchmark runner in a closed loop at
concurrency 1, 4, 8 and 16 (64 forced output tokens, generated label images, 2 warm-up requests).

    .venv/bin/python scripts/bench_engines.py [--rounds 10] [--levels 1 4 8 16] [--json out.json]

Needs vLLM (scripts/setup.sh --vllm). Takes 5 to 10 minutes on 2 CPUs (the vLLM server starts in
80 to 380 s there).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from services.core import settings  # noqa: E402

ENGINES = ("transformers", "vllm")


def label_b64(mark: int) -> str:
    """A bundled label photo as trained (longest side 1024), one pixel changed: new to any cache."""
    image = Image.open(settings.PROJECT_ROOT / "samples" / "us_portrait.jpg").convert("RGB")
    image.thumbnail((1024, 1024))
    image.putpixel((mark % image.width, mark // image.width % image.height), (mark % 256, 5, 9))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def latencies(client, sizes: tuple[int, ...], rounds: int) -> dict[int, list[float]]:
    """Latency (ms) per output size, the sizes interleaved round by round so that drift hits all."""
    out: dict[int, list[float]] = {n: [] for n in sizes}
    for i in range(rounds):
        for n in sizes:
            done = client.detect(label_b64(1000 * n + i), version="1", max_tokens=n,
                                 extra_sampling={"ignore_eos": True})
            assert done.num_output_tokens == n, done
            out[n].append(done.latency_ms)
    return out


def throughput(server, concurrency: int, store, max_tokens: int) -> dict:
    from services.bench.runner import BenchmarkConfig, ImageSetSpec, run_benchmark
    from services.client.server_target import ServerTarget

    target = ServerTarget(server.http_url, server.grpc_url, server.metrics_url, "http", embedded=True,
                          checkpoint=None, repository=server.repository, server_pid=server.pid)
    requests = max(16, 2 * concurrency)
    config = BenchmarkConfig(versions=("1",), image_set=ImageSetSpec(kind="generated", count=requests, seed=concurrency),
                             requests=requests, warmup=2, concurrency=concurrency, max_tokens=max_tokens,
                             stream=True, extra_sampling={"ignore_eos": True})
    outcome = run_benchmark(config, store, target)
    s = outcome.summaries["1"]
    return {"status": outcome.status, "requests": requests, "rps": s.requests_per_s,
            "tokens_per_s": s.output_tokens_per_s, "p50_ms": s.p50_ms}


def measure(engine: str, checkpoint: Path, args, workdir: Path) -> dict:
    from services.bench.store import RunStore
    from services.client.triton_client import TritonClient
    from services.serving.embedded_triton import start_embedded_triton

    t0 = time.monotonic()
    server = start_embedded_triton(checkpoint, workdir=workdir / engine, versions={"1": "bf16"}, engine=engine,
                                   ports={"http": None, "grpc": None, "metrics": None})
    result: dict = {"ready_s": round(time.monotonic() - t0, 1)}
    print(f"[{engine}] ready in {result['ready_s']} s", flush=True)
    try:
        with TritonClient(server.http_url, "http", timeout_s=300) as client:
            latencies(client, (4,), 3)  # warm-up
            for n, xs in latencies(client, (1, 64), args.rounds).items():
                result[f"latency_{n}_ms"] = statistics.median(xs)
                print(f"[{engine}] {n}-token median {statistics.median(xs):.1f} ms", flush=True)
        with RunStore(workdir / f"{engine}-db") as store:
            for level in args.levels:
                result[f"c{level}"] = throughput(server, level, store, 64)
                print(f"[{engine}] concurrency {level}: {result[f'c{level}']}", flush=True)
    finally:
        server.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(settings.PROJECT_ROOT / "models" / "demo-detector"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("QWEN_DATA_DIR", tempfile.mkdtemp(prefix="bench-engines-"))
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        results = {engine: measure(engine, Path(args.checkpoint), args, Path(tmp)) for engine in args.engines}
    rows = [("server ready (s)", lambda r: f"{r['ready_s']:.0f}"),
            ("1-token latency, median (ms)", lambda r: f"{r['latency_1_ms']:.1f}"),
            ("64-token latency, median (ms)", lambda r: f"{r['latency_64_ms']:.1f}")]
    for level in args.levels:
        rows.append((f"throughput at concurrency {level} (req/s | tok/s)",
                     lambda r, c=level: f"{r[f'c{c}']['rps']:.2f} | {r[f'c{c}']['tokens_per_s']:.0f}"))
    width = max(len(name) for name, _ in rows)
    print(f"\nversion 1 (bf16), {Path(args.checkpoint).name}, {os.cpu_count()} CPUs, load average at start "
          f"{load[0]:.1f}; {args.rounds} rounds per latency, 64 forced tokens for throughput")
    print(f"{'':<{width}}  " + "  ".join(f"{e:>16}" for e in args.engines))
    for name, cell in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{cell(results[e]):>16}" for e in args.engines))
    if "vllm" in results and "transformers" in results:
        for level in args.levels:
            ratio = results["vllm"][f"c{level}"]["rps"] / results["transformers"][f"c{level}"]["rps"]
            print(f"vLLM / transformers throughput at concurrency {level}: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
