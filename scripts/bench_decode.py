"""Decode speed at batch 1 against the memory-bandwidth floor, bf16 and fp8, fast path against plain.

    python scripts/bench_decode.py --checkpoint DIR [--images 3] [--tokens 200] [--json out.json]

For each precision (one engine at a time on the GPU), on generated 1024x1024 label images:

* the **floor**: weight bytes one decode step must read (the decoder's linear layers as served,
  i.e. fp8 for version 2, plus ``lm_head``, norms and the one embedding row), divided by the
  device-to-device copy bandwidth measured in this run (bytes read + written per second, the
  figure ``gpu-notes.md`` quotes); the KV cache read per step is reported beside it;
* the **fast path** (static KV cache, one CUDA-graph replay per token: ``services.serving.graph_decode``):
  TPOT = decode time / (tokens - 1) over ``--tokens`` forced tokens (``ignore_eos``), per image,
  and the median; its ratio to the floor (targets, issue 17: bf16 and fp8 each within 1.4x of its
  own floor, fp8's prefill no slower than bf16's);
* the **plain path** (transformers ``generate()``): TPOT over ``--plain-tokens`` forced tokens;
* **equality**: greedy tokens of both paths on the same image (no forced length): equal, or the
  index of the first difference with the plain path's top-2 margin there and whether it is a
  rounding-level near tie (``services.serving.graph_decode.greedy_agreement``; random weights make many).

``--variants`` picks engine variants: ``bf16`` and ``fp8`` as served, ``bf16-kernels`` and
``fp8-kernels`` with the project's kernels (issue 17: ``services.serving.fp8_linear``,
``services.serving.decode_kernels``), ``bf16-before`` and ``fp8-before`` without them (fp8
through torchao): one run gives the before / after figures on the same GPU. ``--profile`` adds a
per-kernel profile of one prefill and of a decode step (``--profile-dir`` writes the tables).

Prints a table and, with ``--json``, writes every figure. Needs CUDA, transformers and torchao.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def copy_bandwidth(device: str, gib: float = 2.0, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import torch

    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize(device)
    seconds = start.elapsed_time(end) / 1000
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * repeats / seconds


def step_weight_bytes(engine) -> dict[str, int]:
    """Bytes of weights one decode step reads: decoder linears (as served), lm_head, norms, one embedding row."""
    import torch

    from services.serving.engine import linear_weight_bytes, tensor_bytes

    decoder = engine.decoder()
    linears = sum(linear_weight_bytes(m) + (tensor_bytes(m.bias) if m.bias is not None else 0)
                  for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    norms = sum(tensor_bytes(p) for name, p in decoder.named_parameters() if "norm" in name)
    embed = decoder.embed_tokens.weight
    lm_head = tensor_bytes(engine.model.lm_head.weight)
    row = embed.shape[1] * embed.element_size()
    return {"decoder_linear": linears, "norms": norms, "lm_head": lm_head, "embedding_row": row,
            "total": linears + norms + lm_head + row}


def _kernel_rows(prof, per: int) -> list[dict]:
    """GPU kernels (and copies/memsets) of a profile by name: count and GPU time, divided by ``per``."""
    from torch.autograd import DeviceType

    rows = []
    for e in prof.key_averages():
        if getattr(e, "device_type", None) != DeviceType.CUDA:
            continue
        gpu_us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if gpu_us > 0 and e.count > 0:
            rows.append({"name": e.key[:110], "count": e.count / per, "gpu_us": gpu_us / per})
    rows.sort(key=lambda r: -r["gpu_us"])
    return rows


def _cpu_rows(prof) -> list[dict]:
    """Host-side operators of a profile by self CPU time (where an eager pass spends its host time)."""
    from torch.autograd import DeviceType

    rows = [{"name": e.key[:110], "count": e.count, "self_cpu_us": e.self_cpu_time_total,
             "cpu_total_us": e.cpu_time_total}
            for e in prof.key_averages() if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU
            and e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r["self_cpu_us"])
    return rows


def _table(title: str, rows: list[dict], unit_key: str, count_key: str = "count", limit: int = 40) -> str:
    total = sum(r[unit_key] for r in rows)
    lines = [title, f"{'ms':>9s} {'share':>6s} {'count':>7s}  name"]
    for r in rows[:limit]:
        lines.append(f"{r[unit_key] / 1e3:9.3f} {100 * r[unit_key] / max(total, 1e-9):5.1f}% {r[count_key]:7.0f}  {r['name']}")
    lines.append(f"{total / 1e3:9.3f} 100.0% {sum(r[count_key] for r in rows):7.0f}  total ({len(rows)} names)")
    return "\n".join(lines) + "\n"


def profile_steps(engine, prompt: str, image, steps: int = 5, label: str = "", out_dir: str | None = None) -> dict:
    """Where the time goes (torch.profiler/CUPTI): one prefill (kernels by GPU time, host operators by
    CPU time) and ``steps`` decode steps as replayed (kernels: count and GPU time per step, by name)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    decoder = engine.graph_decoder()
    with torch.inference_mode():
        inputs = engine.prepare(prompt, [image])
        decoder.prefill(inputs)
        torch.cuda.synchronize()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prefill_prof:
            decoder.prefill(inputs)
            torch.cuda.synchronize()
        prefill_wall = time.perf_counter() - t
        decoder.step(1)
        torch.cuda.synchronize()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                decoder.step(1)
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / steps
    rows = _kernel_rows(prof, steps)
    total = sum(r["gpu_us"] for r in rows)
    kernels = sum(r["count"] for r in rows)
    p_rows = _kernel_rows(prefill_prof, 1)
    p_cpu = _cpu_rows(prefill_prof)
    p_gpu = sum(r["gpu_us"] for r in p_rows)
    print(f"  profile {label}: decode {kernels:.0f} kernels/step, {total / 1e3:.2f} ms GPU time/step, "
          f"{wall * 1e3:.2f} ms wall/step (profiler on); prefill {prefill_wall * 1e3:.1f} ms wall, "
          f"{p_gpu / 1e3:.1f} ms GPU time in {sum(r['count'] for r in p_rows):.0f} kernels (profiler on)")
    for r in rows[:12]:
        print(f"    {r['gpu_us'] / 1e3:7.3f} ms  x{r['count']:5.0f}  {r['name']}")
    print("  prefill, top kernels:")
    for r in p_rows[:10]:
        print(f"    {r['gpu_us'] / 1e3:7.3f} ms  x{r['count']:5.0f}  {r['name']}")
    if out_dir:
        path = Path(out_dir) / f"profile-{label.replace(' ', '_')}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# {label}: torch.profiler, {torch.cuda.get_device_name(0)}\n\n"
            + _table(f"## one decode step (mean of {steps} CUDA-graph replays): GPU kernels by time; "
                     f"wall {wall * 1e3:.3f} ms/step", rows, "gpu_us")
            + "\n" + _table(f"## one prefill ({int(inputs['input_ids'].shape[1])} tokens): GPU kernels by time; "
                            f"wall {prefill_wall * 1e3:.1f} ms", p_rows, "gpu_us")
            + "\n" + _table("## the same prefill: host operators by self CPU time", p_cpu, "self_cpu_us"))
        print(f"  wrote {path}")
    return {"kernels_per_step": kernels, "gpu_ms_per_step": total / 1e3, "wall_ms_per_step": wall * 1e3,
            "top": rows[:30], "prefill_wall_ms": prefill_wall * 1e3, "prefill_gpu_ms": p_gpu / 1e3,
            "prefill_kernels": sum(r["count"] for r in p_rows), "prefill_top": p_rows[:30],
            "prefill_cpu_top": p_cpu[:30]}


# What each variant is: (precision, Engine keyword arguments). "before" is the engine as it was before
# the project's kernels (issue 17): torchao's fp8 linears, cuBLAS products and eager attention in the step.
VARIANTS = {
    "bf16": ("bf16", {}),  # as served (the environment's QWEN_DECODE_KERNELS / QWEN_FP8_BACKEND)
    "fp8": ("fp8", {}),
    "bf16-kernels": ("bf16", {"decode_kernels": True}),
    "fp8-kernels": ("fp8", {"decode_kernels": True, "fp8_backend": "kernels"}),
    "bf16-before": ("bf16", {"decode_kernels": False}),
    "fp8-before": ("fp8", {"decode_kernels": False, "fp8_backend": "torchao"}),
    "fp8-torchao": ("fp8", {"decode_kernels": True, "fp8_backend": "torchao"}),  # torchao linears, kernel attention
}


def bench_precision(args, variant: str, images: list, bandwidth: float) -> dict:
    import torch

    from services.serving.engine import Engine, SamplingParams
    from services.serving.graph_decode import greedy_agreement
    from services.core.prompt import build_prompt

    precision, options = VARIANTS[variant]
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    engine = Engine(args.checkpoint, precision, device="cuda", max_model_len=args.max_model_len, fast_decode=True,
                    compile_decode=None if args.compile is None else bool(args.compile), **options)
    load_s = time.perf_counter() - t0
    prompt = build_prompt()
    weights = step_weight_bytes(engine)
    report = engine.decode_report()
    kv_per_step = report["static_cache_bytes"]  # the whole static cache is read each step (masked)
    floor_s = weights["total"] / bandwidth
    fast, plain, equal = [], [], []
    forced = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    forced_plain = SamplingParams(max_tokens=args.plain_tokens, temperature=0, ignore_eos=True)
    greedy = SamplingParams(max_tokens=args.equality_tokens, temperature=0, logprobs=2)
    engine.generate(prompt, [images[0]], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))  # warm-up
    for i, image in enumerate(images):
        r = engine.generate(prompt, [image], forced, fast=True)
        n = r.num_output_tokens
        fast.append({"image": i, "input_tokens": r.num_input_tokens, "output_tokens": n,
                     "prefill_s": r.timings["prefill_s"], "decode_s": r.timings["decode_s"],
                     "tpot_s": r.timings["decode_s"] / max(n - 1, 1)})
        if i < args.plain_images:
            torch.cuda.synchronize()
            t = time.perf_counter()
            p = engine.generate(prompt, [image], forced_plain, fast=False)
            torch.cuda.synchronize()
            plain.append({"image": i, "output_tokens": p.num_output_tokens, "generate_s": time.perf_counter() - t,
                          "prefill_s_fast": r.timings["prefill_s"]})
            a = engine.generate(prompt, [image], greedy, fast=False)
            b = engine.generate(prompt, [image], greedy, fast=True)
            equal.append({"image": i, "plain_tokens": len(a.token_ids), "fast_tokens": len(b.token_ids),
                          **greedy_agreement(a, b)})
    profile = profile_steps(engine, prompt, images[0], label=variant, out_dir=args.profile_dir) if args.profile else None
    tpot_fast = statistics.median(x["tpot_s"] for x in fast)
    # plain TPOT: (generate time - the fast path's prefill of the same image) / (tokens - 1)
    tpot_plain = statistics.median((x["generate_s"] - x["prefill_s_fast"]) / max(x["output_tokens"] - 1, 1)
                                   for x in plain) if plain else None
    result = {
        "precision": variant,  # the column label of the results page: the variant (precision, engine kernels)
        "engine_precision": precision,
        "engine_options": options,
        "load_s": load_s,
        "quantization": engine.quantization.as_dict(),
        "decode": report,
        "allocated_bytes_after_load": torch.cuda.memory_allocated() - before,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "step_weight_bytes": weights,
        "kv_cache_bytes_read_per_step": kv_per_step,
        "floor_s": floor_s,
        "floor_with_kv_s": (weights["total"] + kv_per_step) / bandwidth,
        "tpot_fast_s": tpot_fast,
        "tpot_plain_s": tpot_plain,
        "fast_over_floor": tpot_fast / floor_s,
        "speedup_over_plain": (tpot_plain / tpot_fast) if tpot_plain else None,
        "prefill_s_median": statistics.median(x["prefill_s"] for x in fast),
        "fast_runs": fast,
        "plain_runs": plain,
        "greedy_equality": equal,
        "profile": profile,
    }
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    import torch
    import transformers

    from services.image_sets.generator import GeneratorConfig, generate_label

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--variants", "--precisions", nargs="+", default=["bf16", "fp8"], choices=sorted(VARIANTS),
                        help="bf16 / fp8: the engine as served; bf16-kernels / fp8-kernels: with the project's "
                             "kernels (issue 17); bf16-before / fp8-before: without them (fp8 through torchao); "
                             "fp8-torchao: torchao's fp8 linears with the project's attention kernel")
    parser.add_argument("--images", type=int, default=3, help="1024x1024 generated label images")
    parser.add_argument("--image-seed", type=int, default=8_000_000)
    parser.add_argument("--tokens", type=int, default=200, help="forced tokens per fast-path request")
    parser.add_argument("--plain-tokens", type=int, default=32, help="forced tokens per plain-path request")
    parser.add_argument("--plain-images", type=int, default=2, help="images also run on the plain path")
    parser.add_argument("--equality-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--compile", type=int, choices=(0, 1), default=None,
                        help="torch.compile the decode step before capture (default: the engine's, on)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one prefill and a few decode steps (kernels by GPU time)")
    parser.add_argument("--profile-dir", help="write each variant's profile tables here (profile-VARIANT.txt)")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 2
    device = "cuda"
    bandwidth = copy_bandwidth(device)
    cfg = GeneratorConfig(size=(1024, 1024))
    images = [generate_label(args.image_seed + i, cfg).image for i in range(args.images)]
    env = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "transformers": transformers.__version__, "copy_bandwidth_bytes_per_s": bandwidth,
           "checkpoint": str(args.checkpoint)}
    try:
        import torchao

        env["torchao"] = torchao.__version__
    except ImportError:
        env["torchao"] = None
    print(f"{env['gpu']}: copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + written)", flush=True)
    results = []
    for variant in args.variants:
        try:
            r = bench_precision(args, variant, images, bandwidth)
        except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others' figures
            import traceback

            traceback.print_exc()
            print(f"{variant}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        results.append(r)
        precision = variant
        if args.json:  # written after every variant: a call cut short keeps the variants it finished
            Path(args.json).write_text(json.dumps({"environment": env, "results": results, "verdict": {},
                                                   "partial": True}, indent=2, default=str) + "\n")
        plain = f"{r['tpot_plain_s'] * 1e3:.1f}" if r["tpot_plain_s"] else "-"
        eq = ", ".join("equal" if e["equal"] else
                       f"differs at {e['first_difference']} (margin {e['margin']:.3f} nats, near tie: {e['near_tie']})"
                       if e["margin"] is not None else f"differs at {e['first_difference']}"
                       for e in r["greedy_equality"])
        print(f"{precision}: mode {r['decode']['decode_mode']} (compiled: {r['decode'].get('compiled')}, "
              f"{r['decode'].get('compile_seconds')} s; error: {r['decode'].get('compile_error')}), weights read/step "
              f"{r['step_weight_bytes']['total'] / 1e9:.2f} GB, floor {r['floor_s'] * 1e3:.2f} ms, "
              f"fast TPOT {r['tpot_fast_s'] * 1e3:.2f} ms ({r['fast_over_floor']:.2f}x floor), plain TPOT {plain} ms, "
              f"prefill {r['prefill_s_median'] * 1e3:.0f} ms, greedy fast vs plain: {eq}", flush=True)
    by = {r["precision"]: r for r in results}
    verdict = {}
    for name in VARIANTS:
        if name in by:
            verdict[f"{name}_tpot_over_floor"] = round(by[name]["fast_over_floor"], 3)
            verdict[f"{name}_within_1.4x_floor"] = by[name]["fast_over_floor"] <= 1.4
    for suffix in ("", "-kernels", "-before"):
        b, f = by.get("bf16" + suffix), by.get("fp8" + suffix)
        if b and f:
            tag = suffix.strip("-") or "served"
            verdict[f"{tag}: fp8_faster_than_bf16"] = f["tpot_fast_s"] < b["tpot_fast_s"]
            verdict[f"{tag}: fp8_over_bf16_tpot"] = round(f["tpot_fast_s"] / b["tpot_fast_s"], 4)
            verdict[f"{tag}: fp8_over_bf16_prefill"] = round(f["prefill_s_median"] / b["prefill_s_median"], 4)
            verdict[f"{tag}: fp8_prefill_not_slower_than_bf16"] = f["prefill_s_median"] <= b["prefill_s_median"]
    for p in ("bf16", "fp8"):
        after = by.get(f"{p}-kernels") or by.get(p)
        if after and f"{p}-before" in by and after is not by[f"{p}-before"]:
            verdict[f"{p}_tpot_after_over_before"] = round(after["tpot_fast_s"] / by[f"{p}-before"]["tpot_fast_s"], 4)
            verdict[f"{p}_prefill_after_over_before"] = round(
                after["prefill_s_median"] / by[f"{p}-before"]["prefill_s_median"], 4)
    print("verdict:", json.dumps(verdict))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results, "verdict": verdict},
                                              indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
