"""fp8 linear layers for Hopper-class GPUs: fp8 weights with row-wise scales, dynamic fp8 activations.

The recipe is torchao's ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` (and
vLLM's fp8 on Hopper): each output row of a weight gets one fp32 scale (its absolute maximum /
448, e4m3's largest value), and each row of an activation is quantized the same way at run time.
What changes is the kernels, picked for the two shapes a batch-1 server runs:

* **prefill** (many rows): one Triton pass quantizes the activation rows, then
  ``torch._scaled_mm`` with row-wise scales (cuBLAS's fp8 kernels with outer-vector scaling,
  bias in the epilogue): two launches per layer, no tensor-subclass dispatch in Python (the
  likely reason why torchao's fp8 prefill took 184 ms against bf16's 86 ms on the 7B: not yet
  profiled, ``bench_decode.py --profile`` lists the prefill's host operators and kernels);
* **decode** (one row): the activation's quantization is plain torch code (inductor fuses it into
  the RMSNorm or SiLU before it), then ``services.serving.decode_kernels.gemv``, a Triton
  matrix-vector kernel that streams the fp8 weight once: the H100 profile of the torchao path
  shows cuBLAS's 128x128-tile fp8 kernels for the single row, 4.5 ms a step for 6.5 GB of weights
  (about 1.4 TB/s against the 3 TB/s copy bandwidth).

The engine's default for fp8 on CUDA since an H100 run measured it (issue 17, docs/gpu-results.md);
``QWEN_FP8_BACKEND=torchao`` goes back to torchao's layers.

Both compute ``(xq * x_scale) @ (Wq * w_scale).T + bias`` in fp32 and round once to bf16.
``Fp8Linear`` is an ``nn.Linear`` (the engine's and the benchmark's accounting find it as one)
whose ``weight`` is the float8_e4m3fn tensor and ``weight_scale`` the fp32 row scales.

Only for CUDA devices of compute capability 8.9 or more; elsewhere the engine keeps torchao's
weight-only fp8.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

FP8_MAX = 448.0


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise fp8 of a (N, K) weight: ``(wq e4m3 (N, K), scale fp32 (N,))`` with ``w ~= wq * scale``."""
    wf = w.float()
    scale = wf.abs().amax(dim=1).clamp(min=1e-12) / FP8_MAX
    wq = (wf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return wq, scale


def quantize_activation(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise dynamic fp8 of a (M, K) activation in torch ops (fused by inductor when compiled)."""
    scale = x2.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    xq = (x2.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return xq, scale


@functools.cache
def scaled_mm_takes_bias(device: str) -> bool:
    """Whether ``torch._scaled_mm`` with row-wise scales accepts a bf16 bias here (a one-time probe)."""
    a = torch.ones((16, 32), device=device).to(torch.float8_e4m3fn)
    b = torch.ones((16, 32), device=device).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, b.t(), scale_a=torch.ones((16, 1), device=device), scale_b=torch.ones((1, 16), device=device),
                         bias=torch.zeros(16, device=device, dtype=torch.bfloat16), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, ValueError):
        return False


class Fp8Linear(torch.nn.Linear):
    """``nn.Linear`` with an fp8 e4m3 weight, one fp32 scale per output row and dynamic fp8 activations."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        torch.nn.Module.__init__(self)
        self.out_features, self.in_features = weight.shape
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.bias_in_mm = scaled_mm_takes_bias(str(weight.device)) if weight.is_cuda else False

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "Fp8Linear":
        wq, scale = quantize_weight(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(wq, scale, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 row-wise, dynamic activation"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.shape[0] == 1:  # decode: matrix-vector product, activation quantized by torch ops
            from services.serving.decode_kernels import gemv

            xq, xs = quantize_activation(x2)
            y = gemv(xq, xs, self.weight, self.weight_scale, self.bias, None, None)
        else:
            if torch.compiler.is_compiling():
                xq, xs = quantize_activation(x2)
            else:
                from services.serving.decode_kernels import quantize_rows

                xq, xs = quantize_rows(x2.contiguous())
            bias = self.bias if self.bias_in_mm else None
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale.view(1, -1),
                                 bias=bias, out_dtype=torch.bfloat16)
            if self.bias is not None and not self.bias_in_mm:
                y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def quantize_decoder(decoder: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``decoder`` by an ``Fp8Linear`` (layer by layer); returns how many."""
    count = 0
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, Fp8Linear.from_linear(child))
                del child
                count += 1
    return count


# ------------------------------------------------------------------------------ the decode step's plan


def _fuse_rows(linears: list[torch.nn.Linear]) -> dict[str, Any]:
    """One weight (rows stacked) for ``linears`` that share an input; each module's own weight, scale
    and bias become views of it, so no byte is held twice. Returns the fused tensors and the splits."""
    fp8 = all(isinstance(m, Fp8Linear) for m in linears)
    weight = torch.cat([m.weight.detach() for m in linears], dim=0)
    scale = torch.cat([m.weight_scale for m in linears], dim=0) if fp8 else None
    has_bias = all(m.bias is not None for m in linears)
    bias = torch.cat([m.bias.detach() for m in linears], dim=0) if has_bias else None
    start = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start:start + n], requires_grad=False)
        if fp8:
            m.weight_scale = scale[start:start + n]
        if has_bias:
            m.bias = torch.nn.Parameter(bias[start:start + n], requires_grad=False)
        start += n
    return {"weight": weight, "scale": scale, "bias": bias, "splits": [m.weight.shape[0] for m in linears]}


def _plain(linear: torch.nn.Linear) -> dict[str, Any]:
    return {"weight": linear.weight, "scale": getattr(linear, "weight_scale", None), "bias": linear.bias}


def bf16_plans() -> bool:
    """Whether bf16 layers decode through the Triton kernel too (``QWEN_DECODE_GEMV_BF16``, default on)."""
    import os

    return os.environ.get("QWEN_DECODE_GEMV_BF16", "1").strip().lower() not in ("0", "false", "no", "off")


def prepare_decode_plan(layer: torch.nn.Module) -> dict[str, Any] | None:
    """The matrix-vector plan of one decoder layer (q/k/v fused, gate and up in one gated kernel).

    Applies to layers whose projections are all ``Fp8Linear`` or all bf16 ``nn.Linear`` without
    bias on o/gate/up/down (Qwen2-VL's); returns None for anything else (the step then calls the
    modules). Fusing q, k and v re-lays their weights into one buffer (views for the modules).
    """
    attn, mlp = layer.self_attn, layer.mlp
    mods = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    kinds = {type(m) for m in mods}
    if kinds == {Fp8Linear}:
        pass
    elif kinds == {torch.nn.Linear} and all(m.weight.dtype == torch.bfloat16 for m in mods) and bf16_plans():
        pass
    else:
        return None
    if any(m.bias is not None for m in mods[3:]):
        return None
    act = getattr(mlp, "act_fn", None)
    if not isinstance(act, torch.nn.SiLU) and type(act).__name__ not in ("SiLUActivation", "SiLU"):
        return None
    with torch.no_grad():
        qkv = _fuse_rows([attn.q_proj, attn.k_proj, attn.v_proj])
    return {"fp8": Fp8Linear in kinds, "qkv": qkv, "o": _plain(attn.o_proj),
            "gate": _plain(mlp.gate_proj), "up": _plain(mlp.up_proj), "down": _plain(mlp.down_proj)}


def plan_linear(x: torch.Tensor, spec: dict[str, Any], fp8: bool, w2: dict[str, Any] | None = None) -> torch.Tensor:
    """One decode-step product through the Triton kernel: x (…, K) with one row; returns (1, N) bf16."""
    from services.serving.decode_kernels import gemv

    x2 = x.reshape(1, -1)
    if fp8:
        xq, xs = quantize_activation(x2)
        return gemv(xq, xs, spec["weight"], spec["scale"], spec["bias"],
                    None if w2 is None else w2["weight"], None if w2 is None else w2["scale"])
    return gemv(x2, None, spec["weight"], None, spec["bias"], None if w2 is None else w2["weight"], None)


GEMV_CANDIDATES = {  # (BLOCK_N, BLOCK_K, num_warps) tried per weight shape at load (tune_plans)
    1: [(8, 512, 4), (4, 1024, 4), (8, 1024, 8), (16, 1024, 8)],
    2: [(4, 512, 4), (8, 512, 8), (2, 1024, 4), (4, 1024, 8)],
}


def tune_plans(plans: list, repeats: int = 3) -> dict[str, Any]:
    """Pick the matrix-vector kernel's block shape for each weight shape of the plans, on this GPU.

    Each candidate runs over every layer's weight of that shape in turn (distinct weights, so the
    timing streams them from memory as a decode step does, not from L2), queued behind a sleeping
    kernel so that the launches' host time stays out of the GPU timing; the fastest is kept in
    ``decode_kernels.GEMV_CONFIGS``. Returns the times (microseconds per product) by shape.
    """
    from services.serving import decode_kernels as dk

    groups: dict[tuple, list] = {}
    for plan in plans:
        if plan is None:
            continue
        for name, spec, w2 in (("qkv", plan["qkv"], None), ("o", plan["o"], None),
                               ("gate_up", plan["gate"], plan["up"]), ("down", plan["down"], None)):
            n, k = spec["weight"].shape
            key = (n, k, w2 is not None, spec["weight"].element_size())
            groups.setdefault(key, []).append((name, spec, w2))
    report: dict[str, Any] = {}
    for key, items in groups.items():
        n, k, gated, w_bytes = key
        dev = items[0][1]["weight"].device
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        xq, xs = quantize_activation(x) if w_bytes == 1 else (x, None)
        times = {}
        for cfg in GEMV_CANDIDATES[1 if w_bytes == 1 else 2]:
            def run_all(cfg=cfg):
                for _, spec, w2 in items:
                    dk.gemv_launch(xq, xs, spec["weight"], spec["scale"], spec["bias"],
                                   None if w2 is None else w2["weight"], None if w2 is None else w2["scale"],
                                   config=cfg)
            try:
                run_all()  # compiles this configuration
                torch.cuda.synchronize(dev)
                best = float("inf")
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda._sleep(int(3e6))  # ~1.5 ms: the launches below queue up behind it
                    start.record()
                    run_all()
                    end.record()
                    end.synchronize()
                    best = min(best, start.elapsed_time(end) * 1e3 / len(items))
                times[cfg] = best
            except Exception as exc:  # noqa: BLE001 - a configuration that does not compile is skipped
                times[cfg] = None
                report.setdefault("errors", []).append(f"{key} {cfg}: {type(exc).__name__}: {str(exc)[:200]}")
        ok = {c: t for c, t in times.items() if t is not None}
        if ok:
            chosen = min(ok, key=ok.get)
            dk.GEMV_CONFIGS[key] = chosen
            report[f"{items[0][0]} {n}x{k}{' gated' if gated else ''} {'fp8' if w_bytes == 1 else 'bf16'}"] = {
                "chosen": list(chosen), "us": {str(c): None if t is None else round(t, 2) for c, t in times.items()},
                "layers": len(items)}
    return report
