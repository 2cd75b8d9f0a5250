"""Microbenchmark of the linear-layer kernels a Qwen2-VL-7B decoder can use, bf16 against fp8 (needs CUDA).

    python scripts/bench_fp8_linear.py [--prefill-rows 1316] [--json out.json] [--sweep]

Shapes are the 7B decoder's (hidden 3584, intermediate 18944, 28 query / 4 key-value heads of
128): q/k/v fused (4608x3584), q or o (3584x3584), k or v (512x3584), gate or up (18944x3584),
gate+up in one gated kernel, down (3584x18944), and lm_head (152064x3584, bf16 only). For M = 1
(a decode step) and M = ``--prefill-rows`` (the prefill of a 1024x1024 label), each candidate:

* ``bf16 F.linear``: cuBLAS, the bf16 model's kernel;
* ``fp8 torchao``: torchao's ``Float8DynamicActivationFloat8WeightConfig(PerRow)`` linear (what the
  engine used), activation quantization included;
* ``fp8 _scaled_mm rowwise``: cuBLAS fp8 with row-wise scales, the activation already quantized;
  ``... swapped`` computes ``W @ x.T`` (the weight as the 'M' side, x padded to 16 columns);
* ``fp8 _scaled_mm tensor``: one scale per tensor;
* ``fp8 triton gemv``: ``services.serving.decode_kernels.gemv`` (fp8 weight, fp8 activation, M = 1),
  best block configuration of a sweep; ``w8a16`` takes the bf16 activation instead;
* ``bf16 triton gemv``: the same kernel on bf16 weights;
* prefill only: ``quantize_rows + _scaled_mm`` (the project's prefill path, both launches).

Times are the median of CUDA-graph replays of calls that rotate over enough weight copies that
no weight stays in the 50 MB L2 (``gpu`` column: what a CUDA-graph decode pays); the prefill rows
also give eager wall time per call (``eager``: what a Python-driven prefill pays, host included).
The ``floor`` is weight bytes / the measured copy bandwidth (read + written), as bench_decode's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

H, I, V = 3584, 18944, 152064
SHAPES = [  # name, N, K, gated, bias (the largest shares of a step first)
    ("gate+up gated", I, H, True, False),
    ("down", H, I, False, False),
    ("qkv", 4608, H, False, True),
    ("q|o", H, H, False, False),
    ("lm_head", V, H, False, False),
    ("gate|up", I, H, False, False),
    ("k|v", 512, H, False, True),
]


def copy_bandwidth(gib: float = 2.0, repeats: int = 20) -> float:
    import torch

    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(repeats):
        dst.copy_(src)
    b.record()
    torch.cuda.synchronize()
    bw = 2 * n * repeats / (a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return bw


def graph_time(fns, replays: int = 15) -> float:
    """Seconds per call: ``fns`` (one per weight copy) captured in one CUDA graph, replayed; median."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / len(fns))
    del g
    return statistics.median(times)


def eager_time(fns, rounds: int = 3) -> float:
    """Seconds per call of ``fns`` run eagerly from Python (host time included); median of rounds."""
    import torch

    for f in fns:
        f()
    torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for f in fns:
            f()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / len(fns))
    return statistics.median(out)


def main(argv=None) -> int:
    import torch
    import torch.nn.functional as F

    from services.serving import decode_kernels as dk
    from services.serving.fp8_linear import quantize_activation, quantize_weight

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefill-rows", type=int, default=1316)
    p.add_argument("--rotate-mb", type=float, default=400.0, help="weight bytes rotated over per shape")
    p.add_argument("--sweep", action="store_true", help="sweep the Triton gemv's block configurations")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name(0)}: copy bandwidth {bw / 1e12:.2f} TB/s (read + written); "
          f"torch {torch.__version__}", flush=True)
    try:
        import torchao
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        print(f"torchao {torchao.__version__}")
    except ImportError:
        torchao = None
    rows: list[dict] = []
    sweeps: dict[str, list] = {}
    dev = "cuda"

    def record(shape, m, variant, gpu_s=None, eager_s=None, nbytes=None, flops=None, err=None, note=""):
        r = {"shape": shape, "M": m, "variant": variant, "gpu_us": None if gpu_s is None else gpu_s * 1e6,
             "eager_us": None if eager_s is None else eager_s * 1e6, "weight_bytes": nbytes, "note": note,
             "rel_err": err}
        if gpu_s and nbytes:
            r["floor_us"] = nbytes / bw * 1e6
            r["x_floor"] = gpu_s / (nbytes / bw)
            r["read_TBps"] = nbytes / gpu_s / 1e12
        if gpu_s and flops:
            r["TFLOPs"] = flops / gpu_s / 1e12
        rows.append(r)
        g = "-" if gpu_s is None else f"{gpu_s * 1e6:9.1f}"
        e = "-" if eager_s is None else f"{eager_s * 1e6:9.1f}"
        extra = (f"  {r['x_floor']:5.2f}x floor ({r['read_TBps']:.2f} TB/s read)" if "x_floor" in r and m == 1 else "")
        extra += f"  {r['TFLOPs']:.0f} TFLOP/s" if "TFLOPs" in r and m > 1 else ""
        extra += "" if err is None else f"  rel.err {err:.3g}"
        print(f"  {shape:14s} M={m:<5d} {variant:34s} gpu {g} us  eager {e} us{extra} {note}", flush=True)

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    for name, n, k, gated, has_bias in SHAPES:
        fp8_ok = name != "lm_head"
        wcount = 2 if gated else 1
        bf16_bytes = n * k * 2 * wcount
        copies = max(2, min(64, math.ceil(args.rotate_mb * 1e6 / (n * k * wcount))))
        copies_bf16 = max(2, min(64, math.ceil(args.rotate_mb * 1e6 / bf16_bytes)))
        print(f"{name}: N={n} K={k}{' gated' if gated else ''}{' bias' if has_bias else ''}; "
              f"{copies} fp8 / {copies_bf16} bf16 weight copies rotated", flush=True)
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies_bf16 * wcount)]
        bias = torch.randn(n, device=dev, dtype=torch.bfloat16) * 0.1 if has_bias else None
        x1 = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        # ---- M = 1
        ref = F.linear(x1, ws[0], bias)
        if gated:
            ref = F.silu(F.linear(x1, ws[0])) * F.linear(x1, ws[1])
            record(name, 1, "bf16 F.linear x2 + silu*mul",
                   graph_time([lambda i=i: F.silu(F.linear(x1, ws[2 * i])) * F.linear(x1, ws[2 * i + 1])
                               for i in range(copies_bf16)]), nbytes=bf16_bytes)
        else:
            record(name, 1, "bf16 F.linear (cuBLAS)",
                   graph_time([lambda i=i: F.linear(x1, ws[i], bias) for i in range(copies_bf16)]), nbytes=bf16_bytes)
        bf16_cfgs = [(2, 256, 4), (4, 256, 4), (4, 512, 4), (8, 256, 4), (8, 512, 8), (2, 512, 4), (4, 1024, 8)]
        best = None
        for cfg in (bf16_cfgs if args.sweep else [dk._gemv_config(n, k, gated, 2)]):
            try:
                fn = [(lambda i=i: dk.gemv_launch(x1, None, ws[wcount * i], None, bias,
                                                  ws[wcount * i + 1] if gated else None, None, config=cfg))
                      for i in range(copies_bf16)]
                t = graph_time(fn)
                err = rel(dk.gemv_launch(x1, None, ws[0], None, bias, ws[1] if gated else None, None, config=cfg), ref)
                sweeps.setdefault(f"bf16 {name}", []).append({"config": cfg, "gpu_us": t * 1e6, "rel_err": err})
                if best is None or t < best[0]:
                    best = (t, cfg, err)
            except Exception as exc:  # noqa: BLE001
                print(f"    bf16 gemv {cfg}: {type(exc).__name__}: {str(exc)[:200]}")
        if best:
            record(name, 1, f"bf16 triton gemv {best[1]}", best[0], nbytes=bf16_bytes, err=best[2])
        if not fp8_ok:
            del ws
            torch.cuda.empty_cache()
            continue
        qs = [quantize_weight(w) for w in ws[: copies * wcount]] if copies * wcount <= len(ws) else None
        if qs is None:
            base = [quantize_weight(w) for w in ws]
            qs = [base[i % len(base)] for i in range(copies * wcount)]
            # distinct storage for every copy, so that no copy is served from L2
            qs = [(q.clone(), s.clone()) for q, s in qs]
        fp8_bytes = n * k * wcount + n * 4 * wcount
        xq, xs = quantize_activation(x1)
        ref8 = (xq.float() * xs) @ (qs[0][0].float() * qs[0][1][:, None]).t()
        if bias is not None:
            ref8 = ref8 + bias.float()
        if gated:
            up = (xq.float() * xs) @ (qs[1][0].float() * qs[1][1][:, None]).t()
            ref8 = F.silu(ref8.bfloat16()) * up.bfloat16()
        fp8_cfgs = [(bn, bk, nw) for bn in (2, 4, 8, 16) for bk in (512, 1024) for nw in (4, 8)]
        best = None
        for cfg in (fp8_cfgs if args.sweep else [dk._gemv_config(n, k, gated, 1)]):
            try:
                fn = [(lambda i=i: dk.gemv_launch(xq, xs, qs[wcount * i][0], qs[wcount * i][1], bias,
                                                  qs[wcount * i + 1][0] if gated else None,
                                                  qs[wcount * i + 1][1] if gated else None, config=cfg))
                      for i in range(copies)]
                t = graph_time(fn)
                err = rel(dk.gemv_launch(xq, xs, qs[0][0], qs[0][1], bias, qs[1][0] if gated else None,
                                         qs[1][1] if gated else None, config=cfg), ref8)
                sweeps.setdefault(f"fp8 {name}", []).append({"config": cfg, "gpu_us": t * 1e6, "rel_err": err})
                if best is None or t < best[0]:
                    best = (t, cfg, err)
            except Exception as exc:  # noqa: BLE001
                print(f"    fp8 gemv {cfg}: {type(exc).__name__}: {str(exc)[:200]}")
        if best:
            record(name, 1, f"fp8 triton gemv w8a8 {best[1]}", best[0], nbytes=fp8_bytes, err=best[2])
            cfg = best[1]
            # with the activation's quantization as separate (unfused) torch ops
            fn = [(lambda i=i: dk.gemv_launch(*quantize_activation(x1), qs[wcount * i][0], qs[wcount * i][1], bias,
                                              qs[wcount * i + 1][0] if gated else None,
                                              qs[wcount * i + 1][1] if gated else None, config=cfg))
                  for i in range(copies)]
            record(name, 1, "fp8 triton gemv w8a8 + eager quant", graph_time(fn), nbytes=fp8_bytes)
            fn = [(lambda i=i: dk.gemv_launch(x1, None, qs[wcount * i][0], qs[wcount * i][1], bias,
                                              qs[wcount * i + 1][0] if gated else None,
                                              qs[wcount * i + 1][1] if gated else None, config=cfg))
                  for i in range(copies)]
            record(name, 1, "fp8 triton gemv w8a16", graph_time(fn), nbytes=fp8_bytes)
        if not gated:
            sb = qs[0][1].view(1, -1)

            def smm(i, a, a_s, swapped=False, tensor=False):
                wq, s = qs[i]
                if tensor:
                    return torch._scaled_mm(a, wq.t(), scale_a=a_s.reshape(()) if a_s.numel() == 1 else a_s.amax(),
                                            scale_b=s.amax(), out_dtype=torch.bfloat16)
                if swapped:
                    return torch._scaled_mm(wq, a.t(), scale_a=s.view(-1, 1), scale_b=a_s.view(1, -1),
                                            out_dtype=torch.bfloat16)
                return torch._scaled_mm(a, wq.t(), scale_a=a_s, scale_b=s.view(1, -1), out_dtype=torch.bfloat16)

            for label, kw in (("fp8 _scaled_mm rowwise", {}), ("fp8 _scaled_mm tensor", {"tensor": True})):
                try:
                    record(name, 1, label, graph_time([lambda i=i: smm(i, xq, xs, **kw) for i in range(copies)]),
                           nbytes=fp8_bytes)
                except Exception as exc:  # noqa: BLE001
                    print(f"    {label}: {type(exc).__name__}: {str(exc)[:200]}")
            try:
                xq16 = torch.zeros(16, k, device=dev, dtype=torch.float8_e4m3fn)
                xq16[:1] = xq
                xs16 = torch.ones(16, 1, device=dev)
                xs16[:1] = xs
                record(name, 1, "fp8 _scaled_mm rowwise swapped",
                       graph_time([lambda i=i: smm(i, xq16, xs16, swapped=True) for i in range(copies)]),
                       nbytes=fp8_bytes)
            except Exception as exc:  # noqa: BLE001
                print(f"    swapped: {type(exc).__name__}: {str(exc)[:200]}")
            try:
                torch._scaled_mm(xq, qs[0][0].t(), scale_a=xs, scale_b=sb, bias=bias, out_dtype=torch.bfloat16)
                print("    _scaled_mm rowwise accepts a bf16 bias" if bias is not None else "", end="")
            except Exception as exc:  # noqa: BLE001
                print(f"    _scaled_mm rowwise with bias: {type(exc).__name__}: {str(exc)[:160]}")
            if torchao is not None:
                try:
                    mods = []
                    for i in range(copies):
                        lin = torch.nn.Linear(k, n, bias=has_bias, device=dev, dtype=torch.bfloat16)
                        with torch.no_grad():
                            lin.weight.copy_(qs[i][0].float() * qs[i][1][:, None])
                            if has_bias:
                                lin.bias.copy_(bias)
                        quantize_(lin, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
                        mods.append(lin)
                    record(name, 1, "fp8 torchao (eager op in graph)",
                           graph_time([lambda i=i: mods[i](x1) for i in range(copies)]), nbytes=fp8_bytes)
                except Exception as exc:  # noqa: BLE001
                    mods = None
                    print(f"    torchao: {type(exc).__name__}: {str(exc)[:200]}")
        # ---- M = prefill rows
        m = args.prefill_rows
        if not gated:
            xm = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            flops = 2 * m * n * k
            nb = min(copies_bf16, 8)
            record(name, m, "bf16 F.linear (cuBLAS)", graph_time([lambda i=i: F.linear(xm, ws[i], bias) for i in range(nb)]),
                   eager_time([lambda i=i: F.linear(xm, ws[i], bias) for i in range(nb)]), flops=flops)
            nq = min(copies, 8)
            xqm, xsm = dk.quantize_rows(xm)
            refm = F.linear(xm, ws[0], bias)

            def prefill(i):
                a, a_s = dk.quantize_rows(xm)
                y = torch._scaled_mm(a, qs[i][0].t(), scale_a=a_s, scale_b=qs[i][1].view(1, -1), out_dtype=torch.bfloat16)
                return y + bias if bias is not None else y

            err = rel(prefill(0), (xm.float() @ (qs[0][0].float() * qs[0][1][:, None]).t()) + (0 if bias is None else bias.float()))
            record(name, m, "fp8 quantize_rows + _scaled_mm rowwise", graph_time([lambda i=i: prefill(i) for i in range(nq)]),
                   eager_time([lambda i=i: prefill(i) for i in range(nq)]), flops=flops, err=err)
            record(name, m, "fp8 _scaled_mm rowwise (x quantized)",
                   graph_time([lambda i=i: torch._scaled_mm(xqm, qs[i][0].t(), scale_a=xsm, scale_b=qs[i][1].view(1, -1),
                                                            out_dtype=torch.bfloat16) for i in range(nq)]), flops=flops)
            record(name, m, "fp8 quantize_rows alone", graph_time([lambda: dk.quantize_rows(xm)]),
                   eager_time([lambda: dk.quantize_rows(xm)] * 4))
            record(name, m, "fp8 quantize (torch ops, eager)", graph_time([lambda: quantize_activation(xm)]),
                   eager_time([lambda: quantize_activation(xm)] * 4))
            try:
                record(name, m, "fp8 _scaled_mm tensor (x quantized)",
                       graph_time([lambda i=i: torch._scaled_mm(xqm, qs[i][0].t(), scale_a=xsm.amax(), scale_b=qs[i][1].amax(),
                                                                out_dtype=torch.bfloat16) for i in range(nq)]), flops=flops)
            except Exception as exc:  # noqa: BLE001
                print(f"    tensor-wise prefill: {type(exc).__name__}: {str(exc)[:200]}")
            if torchao is not None and mods:
                try:
                    record(name, m, "fp8 torchao", graph_time([lambda i=i: mods[i](xm) for i in range(nq)]),
                           eager_time([lambda i=i: mods[i](xm) for i in range(nq)]), flops=flops)
                except Exception as exc:  # noqa: BLE001
                    print(f"    torchao prefill: {type(exc).__name__}: {str(exc)[:200]}")
            del xm
        del ws, qs
        torch.cuda.empty_cache()
    # ---- the decode attention against the engine's eager arithmetic, 1516 of 4096 positions written
    try:
        nh, nkv, hd, max_len, pos = 28, 4, 128, 4096, 1516
        caches = [(torch.randn(1, nkv, max_len, hd, device=dev, dtype=torch.bfloat16),
                   torch.randn(1, nkv, max_len, hd, device=dev, dtype=torch.bfloat16)) for _ in range(28)]
        q = torch.randn(1, nh, 1, hd, device=dev, dtype=torch.bfloat16)
        position = torch.tensor([pos], device=dev)
        mask = torch.full((1, 1, 1, max_len), torch.finfo(torch.bfloat16).min, device=dev, dtype=torch.bfloat16)
        mask[..., : pos + 1] = 0

        def eager_attn(kc, vc):
            s = torch.matmul(q.reshape(1, nkv, nh // nkv, hd), kc.transpose(2, 3)) * hd**-0.5
            p_ = F.softmax(s + mask, dim=-1, dtype=torch.float32).to(torch.bfloat16)
            return torch.matmul(p_, vc).reshape(1, 1, nh * hd)

        kv_bytes = 2 * nkv * (pos + 1) * hd * 2
        record("attention", 1, "eager (cuBLAS+softmax, 4096 slots)", graph_time([lambda c=c: eager_attn(*c) for c in caches]),
               nbytes=kv_bytes)
        err = rel(dk.decode_attention(q, caches[0][0], caches[0][1], position, hd**-0.5), eager_attn(*caches[0]))
        record("attention", 1, "triton split-KV (valid slots)",
               graph_time([lambda c=c: dk.decode_attention(q, c[0], c[1], position, hd**-0.5) for c in caches]),
               nbytes=kv_bytes, err=err)
    except Exception as exc:  # noqa: BLE001
        print(f"attention: {type(exc).__name__}: {str(exc)[:300]}")
    if sweeps:
        print("gemv sweep, best 3 per shape (BLOCK_N, BLOCK_K, num_warps):")
        for key, items in sweeps.items():
            items.sort(key=lambda r: r["gpu_us"])
            print(f"  {key:22s} " + "; ".join(f"{tuple(r['config'])} {r['gpu_us']:.1f} us" for r in items[:3])
                  + f"; worst {items[-1]['gpu_us']:.1f} us")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "copy_bandwidth": bw,
                                               "torch": torch.__version__, "rows": rows, "sweeps": sweeps},
                                              indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
