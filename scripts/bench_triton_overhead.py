"""What Triton costs on top of the engine: a 1-token request through the local Triton server against the
same call into the engine in-process, side by side in one run; and the fp8/bf16 ratio of the decoder's
weight bytes as the server reports them.

    .venv/bin/python scripts/bench_triton_overhead.py [--requests 200] [--checkpoint DIR]

Both paths do the same work: decode the base64 image, preprocess it, prefill the prompt and generate one
token. The in-process engine and the server's stubs run the same checkpoint on the same CPU; calls are
interleaved (engine, HTTP, gRPC, engine, ...) so drift hits every path alike. Overhead = the median of the
per-round differences (Triton round trip - in-process call). Target: 2 ms or less.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per path")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--checkpoint", help="default: the embedded default (demo detector or tiny)")
    parser.add_argument("--version", default="1", choices=["1", "2"])
    args = parser.parse_args(argv)

    from prometheus_client.parser import text_string_to_metric_families

    from services.embedded_triton import resolve_checkpoint, start_embedded_triton
    from services.engine import Engine, SamplingParams, decode_image
    from services.prompt import build_prompt
    from services.triton_client import TritonClient

    checkpoint = resolve_checkpoint(args.checkpoint)
    image_b64 = base64.b64encode(label_image()).decode()
    prompt = build_prompt()
    params = {"max_tokens": 1, "temperature": 0}

    server = start_embedded_triton(checkpoint, ports={"http": None, "grpc": None, "metrics": None})
    http = grpc = None
    try:
        precision = "fp8" if args.version == "2" else "bf16"
        engine = Engine(checkpoint, precision)
        http = TritonClient(server.http_url, protocol="http")
        grpc = TritonClient(server.grpc_url, protocol="grpc")

        def in_process() -> int:
            t0 = time.perf_counter_ns()
            result = engine.generate(prompt, [decode_image(image_b64)], SamplingParams.from_dict(params))
            assert result.num_output_tokens == 1
            return time.perf_counter_ns() - t0

        def through(client: TritonClient) -> int:
            done = client.detect(image_b64, prompt, version=args.version, max_tokens=1, temperature=0)
            assert done.num_output_tokens == 1
            return done.recv_ns - done.send_ns

        paths = {"in-process engine": in_process, "Triton HTTP generate": lambda: through(http),
                 "Triton gRPC stream": lambda: through(grpc)}
        for _ in range(args.warmup):
            for fn in paths.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in paths}
        for i in range(args.requests):
            order = list(paths.items())
            order = order[i % 3:] + order[: i % 3]  # rotate so no path always runs first
            for name, fn in order:
                times[name].append(fn() / 1e6)

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

    base = times["in-process engine"]
    print(f"checkpoint: {checkpoint}  version {args.version}  requests per path: {args.requests}")
    print(f"{'path':<24}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'overhead ms':>13}")
    overheads = {}
    for name, values in times.items():
        med = statistics.median(values)
        over = ""
        if name != "in-process engine":
            # Each round ran every path back to back: the median of the per-round differences is the
            # overhead with the machine's drift taken out.
            overheads[name] = statistics.median(v - b for v, b in zip(values, base))
            over = f"{overheads[name]:13.2f}"
        print(f"{name:<24}{med:11.2f}{percentile(values, 10):9.2f}{percentile(values, 90):9.2f}{over}")
    worst = max(overheads.values())
    print(f"Triton overhead at the median (worst transport): {worst:.2f} ms  (target <= 2 ms: "
          f"{'met' if worst <= 2 else 'NOT met'})")
    bf16 = weights.get(("1", "decoder_linear"))
    fp8 = weights.get(("2", "decoder_linear"))
    if bf16 and fp8:
        print(f"decoder linear weight bytes: v1 {int(bf16[0])} ({bf16[1]}), v2 {int(fp8[0])} ({fp8[1]}); "
              f"fp8/bf16 ratio {fp8[0] / bf16[0]:.3f}")
        model1, model2 = weights[("1", "model")][0], weights[("2", "model")][0]
        print(f"whole-model weight bytes: v1 {int(model1)}, v2 {int(model2)}; ratio {model2 / model1:.3f}")
    print(json.dumps({"medians_ms": {k: statistics.median(v) for k, v in times.items()},
                      "paired_overhead_ms": overheads}))
    return 0


def http_metrics(url: str) -> str:
    import requests

    return requests.get(url, timeout=5).text


if __name__ == "__main__":
    raise SystemExit(main())
