"""Evaluate a detector checkpoint through the real local Triton server, both versions (bf16, fp8).

Held-out images come from ``services.image_sets.generator.generate_label(EVAL_SEED_BASE + i)`` with the
default GeneratorConfig (some have no table, some two); no training or in-training check used these
seeds. Each image goes the dashboard's way: ``services.core.images.load_image`` (longest side <= 1024,
JPEG q95), base64, the project prompt (``build_prompt()``), temperature 0, ``max_tokens`` enough for
two boxes, over HTTP ``/v2/models/qwen/versions/{v}/generate``; the answer is read with
``services.core.boxes.parse_answer``. Versions are asked alternately, image by image, after a warm-up.

Per version: mean IoU of the matched box per ground-truth table (0 when missed; one-to-one
matching), share of tables found at IoU >= 0.5 (and 0.75), false alarms on no-table images,
answers with no box although there was a table, extra boxes; between versions: mean IoU of their
boxes (agreement). Latency: wall time of each request (median, p90).

    python scripts/evaluate_detector.py                          # models/demo-detector, 200 images
    python scripts/evaluate_detector.py --count 50 --json /tmp/e.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from services.core.boxes import parse_answer  # noqa: E402
from services.core.images import encode_base64, load_image  # noqa: E402
from services.image_sets.generator import GeneratorConfig, generate_label  # noqa: E402
from services.core.prompt import build_prompt  # noqa: E402
from training.metrics import ImageResult, agreement, score  # noqa: E402
from training.examples import EVAL_SEED_BASE  # noqa: E402

VERSIONS = {"1": "bf16", "2": "fp8"}
TARGETS = {"mean_iou": 0.75, "recall_50": 0.90, "median_latency_s": 1.0}


def image_b64(image) -> str:
    """What the dashboard sends for this image: load_image (shrink to 1024, JPEG q95), base64."""
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return encode_base64(load_image(buf.getvalue(), name="generated.png"))


def generate(url: str, version: str, b64: str, max_tokens: int, timeout: float = 120.0) -> tuple[str, float]:
    body = {
        "text_input": build_prompt(),
        "image": [b64],
        "stream": False,
        "exclude_input_in_output": True,
        "sampling_parameters": json.dumps({"max_tokens": max_tokens, "temperature": 0.0}),
    }
    t0 = time.perf_counter()
    r = requests.post(f"http://{url}/v2/models/qwen/versions/{version}/generate", json=body, timeout=timeout)
    dt = time.perf_counter() - t0
    try:
        payload = r.json()
    except ValueError:
        raise RuntimeError(f"version {version}: HTTP {r.status_code}, not JSON: {r.text[:300]}") from None
    if r.status_code != 200 or "error" in payload:
        raise RuntimeError(f"version {version}: HTTP {r.status_code}: {payload.get('error', payload)}")
    return payload["text_output"], dt


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def evaluate(url: str, count: int, seed_base: int, max_tokens: int, log_every: int = 25) -> dict:
    cfg = GeneratorConfig()
    per_version: dict[str, list[ImageResult]] = {v: [] for v in VERSIONS}
    latency: dict[str, list[float]] = {v: [] for v in VERSIONS}
    details = []
    warm = generate_label(seed_base - 1, cfg)  # warm-up image, outside the evaluated range
    for v in VERSIONS:
        generate(url, v, image_b64(warm.image), max_tokens)
    t0 = time.perf_counter()
    for i in range(count):
        seed = seed_base + i
        sample = generate_label(seed, cfg)
        b64 = image_b64(sample.image)
        row = {"seed": seed, "size": [sample.width, sample.height], "style": sample.style,
               "truth": [list(b.as_tuple()) for b in sample.grid_boxes]}
        order = list(VERSIONS) if i % 2 == 0 else list(VERSIONS)[::-1]
        for v in order:
            text, dt = generate(url, v, b64, max_tokens)
            parsed = parse_answer(text, sample.width, sample.height)
            res = ImageResult(sample.grid_boxes, parsed.grid_boxes, text, seed)
            per_version[v].append(res)
            latency[v].append(dt)
            row[f"v{v}"] = {"text": text, "boxes": [[round(x, 1) for x in b.as_tuple()] for b in parsed.grid_boxes],
                            "table_ious": [round(x, 4) for x in res.table_ious], "latency_s": round(dt, 4)}
        details.append(row)
        if log_every and (i + 1) % log_every == 0:
            done = {v: score(per_version[v]) for v in VERSIONS}
            print(f"  {i + 1}/{count} images ({time.perf_counter() - t0:.0f} s): "
                  + ", ".join(f"v{v} mean IoU {s.mean_iou:.3f} recall@0.5 {s.recall_50:.3f}" for v, s in done.items()),
                  flush=True)
    summary = {}
    for v, prec in VERSIONS.items():
        s = score(per_version[v])
        summary[v] = {
            "precision": prec,
            **s.as_dict(),
            "median_latency_s": statistics.median(latency[v]),
            "p90_latency_s": percentile(latency[v], 0.9),
            "mean_latency_s": statistics.fmean(latency[v]),
            "requests_over_2s": sum(1 for x in latency[v] if x > 2.0),
            # Median of each block of 25 images, in order: a burst of load from other processes
            # on this machine shows up as a run of slow blocks.
            "latency_block_medians_s": [round(statistics.median(latency[v][i:i + 25]), 3)
                                        for i in range(0, len(latency[v]), 25)],
        }
        summary[v].pop("extra", None)
    agree = agreement([r.pred for r in per_version["1"]], [r.pred for r in per_version["2"]])
    return {"versions": summary, "agreement_v1_v2": agree, "details": details,
            "seconds": round(time.perf_counter() - t0, 1)}


def print_table(result: dict) -> None:
    vs = result["versions"]
    rows = [
        ("images", "images", "{:d}"),
        ("tables (ground truth)", "tables", "{:d}"),
        ("mean IoU per table (0 if missed)", "mean_iou", "{:.3f}"),
        ("found at IoU >= 0.5", "recall_50", "{:.1%}"),
        ("found at IoU >= 0.75", "recall_75", "{:.1%}"),
        ("no-table images with a box (false alarm)", "no_table_images_with_box", "{:d}"),
        ("  of no-table images", "no_table_images", "{:d}"),
        ("boxes matching no table (all images)", "false_positive_boxes", "{:d}"),
        ("answers with no box although a table", "missed_answers", "{:d}"),
        ("right number of boxes", "count_correct", "{:.1%}"),
        ("median latency (s)", "median_latency_s", "{:.3f}"),
        ("p90 latency (s)", "p90_latency_s", "{:.3f}"),
        ("requests over 2 s", "requests_over_2s", "{:d}"),
    ]
    w = max(len(r[0]) for r in rows) + 2
    print()
    print(f"{'metric':<{w}}" + "".join(f"{'v' + v + ' (' + vs[v]['precision'] + ')':>14}" for v in vs))
    print("-" * (w + 14 * len(vs)))
    for label, key, fmt in rows:
        print(f"{label:<{w}}" + "".join(f"{fmt.format(vs[v][key]):>14}" for v in vs))
    a = result["agreement_v1_v2"]
    print("-" * (w + 14 * len(vs)))
    print(f"{'v1/v2 agreement: mean IoU of their boxes':<{w}}{a['mean_iou']:>14.3f}")
    print(f"{'v1/v2 agreement: same number of boxes':<{w}}{a['same_count']:>14.1%}")
    for v in vs:
        print(f"v{v} median latency per block of 25 images (s): {vs[v]['latency_block_medians_s']}")
    print()
    for v in vs:
        for key, goal in TARGETS.items():
            got = vs[v][key]
            ok = got < goal if key.endswith("latency_s") else got >= goal
            print(f"target v{v} {key} {'<' if key.endswith('latency_s') else '>='} {goal}: "
                  f"{got:.3f} {'met' if ok else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "demo-detector")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE)
    p.add_argument("--max-tokens", type=int, default=64, help="two boxes take 49 tokens")
    p.add_argument("--json", type=Path, default=ROOT / "data" / "eval" / "demo-detector-eval.json",
                   help="full results, every image's answers included")
    p.add_argument("--summary", type=Path, default=None,
                   help="also write the summary (no per-image details) here, e.g. models/demo-detector/evaluation.json")
    p.add_argument("--url", help="an already running Triton (host:http_port) serving this checkpoint as qwen 1 and 2")
    args = p.parse_args(argv)

    load_before = os.getloadavg()
    server = None
    if args.url:
        url = args.url
    else:
        from services.serving.embedded_triton import start_embedded_triton

        if not (args.checkpoint / "config.json").is_file():
            p.error(f"{args.checkpoint} is not a checkpoint folder (no config.json)")
        print(f"starting the embedded Triton on {args.checkpoint} ...", flush=True)
        t = time.perf_counter()
        server = start_embedded_triton(args.checkpoint, workdir=tempfile.mkdtemp(prefix="eval-triton-"),
                                       ports={"http": None, "grpc": None, "metrics": None})
        url = server.http_url
        print(f"ready in {time.perf_counter() - t:.1f} s at {url}", flush=True)
    try:
        print(f"evaluating {args.count} images (seeds {args.seed_base}..{args.seed_base + args.count - 1}), "
              f"versions {', '.join(f'{v}={p_}' for v, p_ in VERSIONS.items())}", flush=True)
        result = evaluate(url, args.count, args.seed_base, args.max_tokens)
        engine = {v: server.engine_report(v) for v in VERSIONS} if server else None
    finally:
        if server is not None:
            server.stop()
    build_info = {}
    try:
        build_info = json.loads((args.checkpoint / "build_info.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    result["meta"] = {
        "checkpoint": str(args.checkpoint),
        "trained_by": build_info.get("trained_by"),
        "steps": build_info.get("steps"),
        "seed_range": [args.seed_base, args.seed_base + args.count - 1],
        "max_tokens": args.max_tokens,
        "server": "embedded Triton (services.serving.embedded_triton)" if server else args.url,
        "engine_reports": engine,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "command": "python scripts/evaluate_detector.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "targets": TARGETS,
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    print_table(result)
    print(f"machine: {result['meta']['machine']}; 1-minute load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (other processes share these CPUs: latency depends on them)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nfull results: {args.json}")
    if args.summary:
        summary = {k: v for k, v in result.items() if k != "details"}
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary: {args.summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
