"""Triton kernels for batch-1 decode and fp8 activations (CUDA only; imported lazily).

A decode step at batch 1 is memory-bound: every weight byte is read once per token, and the
arithmetic is a matrix-vector product. The general matrix kernels serve that shape poorly: for
fp8 with row-wise scales, cuBLAS runs its 128x128-tile fp8 kernels on a single row (measured on
the H100: 2.44x the bandwidth floor). These kernels are written for the shape instead, with the
GPU machine's own Triton (compiled there on first use):

* ``gemv``: ``y = x @ W.T`` for one row ``x``, streaming ``W`` (fp8 e4m3 with one scale per output
  row, or bf16) once from memory in 16-byte loads, accumulating in fp32 on the CUDA cores. With an
  fp8 ``x`` and its scale it computes exactly what ``torch._scaled_mm`` with row-wise scales does
  (dynamic fp8 activation x fp8 weight), with bias in the epilogue. ``w2`` turns it into the
  gated MLP's first half, ``silu(x @ Wg.T) * (x @ Wu.T)``, both weights streamed by one kernel,
  rounded as transformers' bf16 modules round;
* ``quantize_rows``: dynamic per-row fp8 quantization of activations in one pass (scale =
  amax / 448), for the eager prefill, where every kernel launch is paid from Python;
* ``decode_attention``: grouped-query attention of one query token over the static KV cache,
  split over the sequence (flash decoding) and reading only the positions written so far (the
  length comes from the device tensor the CUDA graph replays with), instead of two cuBLAS
  products and a softmax over the whole 4096-position buffer.

Every entry point is a ``torch.library`` custom op, so ``torch.compile`` treats it as one opaque
call (the activation's quantization around it stays for inductor to fuse) and the CUDA graph
captures its launch like any other kernel.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0  # float8_e4m3fn's largest finite value
FP8_DTYPE = torch.float8_e4m3fn

# (BLOCK_N, BLOCK_K, num_warps) per weight shape (N, K, gated, weight bytes per element), filled at load by
# services.serving.fp8_linear.tune_plans (timed on the GPU at hand); other shapes take the default.
GEMV_CONFIGS: dict[tuple[int, int, bool, int], tuple[int, int, int]] = {}
GEMV_DEFAULT_FP8 = (8, 512, 4)
GEMV_DEFAULT_BF16 = (4, 512, 4)


def _gemv_config(n: int, k: int, gated: bool, w_bytes: int) -> tuple[int, int, int]:
    cfg = GEMV_CONFIGS.get((n, k, gated, w_bytes))
    if cfg is not None:
        return cfg
    return GEMV_DEFAULT_FP8 if w_bytes == 1 else GEMV_DEFAULT_BF16


@triton.jit
def _gemv_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, w2_ptr, ws2_ptr, b_ptr, out_ptr, N, K,
                 X_SCALED: tl.constexpr, W_SCALED: tl.constexpr, HAS_BIAS: tl.constexpr,
                 GATED: tl.constexpr, EVEN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_mask = rn < N
    offs = rn.to(tl.int64)[:, None] * K + rk[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN:
            x = tl.load(x_ptr + k0 + rk).to(tl.float32)
            w = tl.load(w_ptr + offs + k0, eviction_policy="evict_first").to(tl.float32)
        else:
            k_mask = (k0 + rk) < K
            x = tl.load(x_ptr + k0 + rk, mask=k_mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + offs + k0, mask=n_mask[:, None] & k_mask[None, :], other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
        acc += w * x[None, :]
        if GATED:
            if EVEN:
                w2 = tl.load(w2_ptr + offs + k0, eviction_policy="evict_first").to(tl.float32)
            else:
                w2 = tl.load(w2_ptr + offs + k0, mask=n_mask[:, None] & k_mask[None, :], other=0.0,
                             eviction_policy="evict_first").to(tl.float32)
            acc2 += w2 * x[None, :]
    y = tl.sum(acc, axis=1)
    if X_SCALED:
        xs = tl.load(xs_ptr)
        y = y * xs
    if W_SCALED:
        y = y * tl.load(ws_ptr + rn, mask=n_mask, other=0.0)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
    if GATED:
        u = tl.sum(acc2, axis=1)
        if X_SCALED:
            u = u * xs
        if W_SCALED:
            u = u * tl.load(ws2_ptr + rn, mask=n_mask, other=0.0)
        # as transformers' bf16 modules round: gate and up outputs, silu(gate), then the product
        g = y.to(tl.bfloat16).to(tl.float32)
        u = u.to(tl.bfloat16).to(tl.float32)
        a = (g / (1.0 + tl.exp(-g))).to(tl.bfloat16).to(tl.float32)
        y = a * u
    tl.store(out_ptr + rn, y.to(out_ptr.dtype.element_ty), mask=n_mask)


def gemv_launch(x: torch.Tensor, x_scale: torch.Tensor | None, w: torch.Tensor, w_scale: torch.Tensor | None,
                bias: torch.Tensor | None = None, w2: torch.Tensor | None = None,
                w2_scale: torch.Tensor | None = None, config: tuple[int, int, int] | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (1, K) or (K,) against ``w`` (N, K): a (1, N) bf16 result (see the module's docstring)."""
    n, k = w.shape
    if w2 is not None and bias is not None:
        raise ValueError("gemv: the gated form takes no bias")
    x = x.reshape(-1)
    if x.numel() != k:
        raise ValueError(f"gemv: x has {x.numel()} elements, the weight has {k} columns")
    block_n, block_k, warps = config or _gemv_config(n, k, w2 is not None, w.element_size())
    if out is None:
        out = torch.empty((1, n), dtype=torch.bfloat16, device=x.device)
    even = n % block_n == 0 and k % block_k == 0
    dummy = w_scale if w_scale is not None else w
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, x_scale if x_scale is not None else dummy, w, dummy,
        w2 if w2 is not None else w, w2_scale if w2_scale is not None else dummy,
        bias if bias is not None else dummy, out, n, k,
        X_SCALED=x_scale is not None, W_SCALED=w_scale is not None, HAS_BIAS=bias is not None,
        GATED=w2 is not None, EVEN=even, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return out


@torch.library.custom_op("qwen_decode::gemv", mutates_args=())
def gemv(x: torch.Tensor, x_scale: Optional[torch.Tensor], w: torch.Tensor, w_scale: Optional[torch.Tensor],
         bias: Optional[torch.Tensor], w2: Optional[torch.Tensor], w2_scale: Optional[torch.Tensor]) -> torch.Tensor:
    return gemv_launch(x, x_scale, w, w_scale, bias, w2, w2_scale)


@gemv.register_fake
def _(x, x_scale, w, w_scale, bias, w2, w2_scale):
    return x.new_empty((1, w.shape[0]), dtype=torch.bfloat16)


# ------------------------------------------------------------------------------ row quantization


@triton.jit
def _quant_rows_kernel(x_ptr, xq_ptr, xs_ptr, K, stride_x, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_x + k0 + rk, mask=(k0 + rk) < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0), 1e-12) / 448.0
    tl.store(xs_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_ptr + row * stride_x + k0 + rk, mask=(k0 + rk) < K, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
        tl.store(xq_ptr + row * K + k0 + rk, q.to(xq_ptr.dtype.element_ty), mask=(k0 + rk) < K)


@torch.library.custom_op("qwen_decode::quantize_rows", mutates_args=())
def quantize_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row dynamic fp8: ``(xq (M, K) e4m3, scale (M, 1) fp32)`` with ``x ~= xq * scale``."""
    m, k = x.shape
    xq = torch.empty((m, k), dtype=FP8_DTYPE, device=x.device)
    xs = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    block = min(2048, triton.next_power_of_2(k))
    _quant_rows_kernel[(m,)](x, xq, xs, k, x.stride(0), BLOCK_K=block, num_warps=4 if block <= 1024 else 8)
    return xq, xs


@quantize_rows.register_fake
def _(x):
    m, k = x.shape
    return x.new_empty((m, k), dtype=FP8_DTYPE), x.new_empty((m, 1), dtype=torch.float32)


# ------------------------------------------------------------------------------ decode attention


@triton.jit
def _attn_split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, m_ptr, l_ptr, scale, stride_kh, stride_kl,
                       G: tl.constexpr, GP: tl.constexpr, HD: tl.constexpr, BLOCK_L: tl.constexpr,
                       SPLITS: tl.constexpr, DOT_F32: tl.constexpr):
    h = tl.program_id(0)  # key/value head
    s = tl.program_id(1)  # split of the sequence
    length = tl.load(pos_ptr).to(tl.int32) + 1  # positions 0..position hold keys (this token's included)
    chunk = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_L) * BLOCK_L
    start = s * chunk
    end = tl.minimum(start + chunk, length)
    rg = tl.arange(0, GP)
    rd = tl.arange(0, HD)
    rl = tl.arange(0, BLOCK_L)
    q = tl.load(q_ptr + (h * G + rg)[:, None] * HD + rd[None, :], mask=(rg < G)[:, None], other=0.0)
    m_i = tl.full((GP,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((GP,), dtype=tl.float32)
    acc = tl.zeros((GP, HD), dtype=tl.float32)
    base = h.to(tl.int64) * stride_kh
    for l0 in range(start, end, BLOCK_L):
        pos = l0 + rl
        valid = pos < end
        kv_offs = base + pos[:, None].to(tl.int64) * stride_kl + rd[None, :]
        k = tl.load(k_ptr + kv_offs, mask=valid[:, None], other=0.0)
        if DOT_F32:  # Triton's CPU interpreter (tests) multiplies bf16 wrongly
            scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * scale
        else:
            scores = tl.dot(q, tl.trans(k)) * scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + kv_offs, mask=valid[:, None], other=0.0)
        if DOT_F32:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32))
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    part = (h * SPLITS + s) * GP
    tl.store(o_ptr + (part + rg)[:, None] * HD + rd[None, :], acc)
    tl.store(m_ptr + part + rg, m_i)
    tl.store(l_ptr + part + rg, l_i)


@triton.jit
def _attn_reduce_kernel(o_ptr, m_ptr, l_ptr, out_ptr, G: tl.constexpr, GP: tl.constexpr, HD: tl.constexpr,
                        SPLITS: tl.constexpr):
    j = tl.program_id(0)  # query head
    h = j // G
    g = j % G
    rs = tl.arange(0, SPLITS)
    rd = tl.arange(0, HD)
    idx = (h * SPLITS + rs) * GP + g
    m = tl.load(m_ptr + idx)
    l = tl.load(l_ptr + idx)
    m_max = tl.max(m, axis=0)
    w = tl.where(m > float("-inf"), tl.exp(m - m_max), 0.0)
    o = tl.load(o_ptr + idx[:, None] * HD + rd[None, :])
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + j * HD + rd, out.to(out_ptr.dtype.element_ty))


ATTN_SPLITS = 16
ATTN_BLOCK_L = 64


@torch.library.custom_op("qwen_decode::attention", mutates_args=())
def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """One query token's attention over a static cache: ``q`` (1, heads, 1, hd) after RoPE; ``keys`` and
    ``values`` (1, kv_heads, max_len, hd), valid up to ``position`` (a one-element device tensor,
    included). Returns (1, 1, heads * hd) in ``q``'s dtype, heads in order (kv head, its query heads),
    as transformers lays them out."""
    _, nh, _, hd = q.shape
    nkv = keys.shape[1]
    g = nh // nkv
    gp = max(16, triton.next_power_of_2(g))
    splits, block_l = ATTN_SPLITS, ATTN_BLOCK_L
    dev = q.device
    o = torch.empty((nkv, splits, gp, hd), dtype=torch.float32, device=dev)
    m = torch.empty((nkv, splits, gp), dtype=torch.float32, device=dev)
    l = torch.empty((nkv, splits, gp), dtype=torch.float32, device=dev)
    out = torch.empty((1, 1, nh * hd), dtype=q.dtype, device=dev)
    qc = q.contiguous()
    _attn_split_kernel[(nkv, splits)](qc, keys, values, position, o, m, l, scale, keys.stride(1), keys.stride(2),
                                      G=g, GP=gp, HD=hd, BLOCK_L=block_l, SPLITS=splits, DOT_F32=not q.is_cuda,
                                      num_warps=4)
    _attn_reduce_kernel[(nh,)](o, m, l, out, G=g, GP=gp, HD=hd, SPLITS=splits, num_warps=4)
    return out


@decode_attention.register_fake
def _(q, keys, values, position, scale):
    _, nh, _, hd = q.shape
    return q.new_empty((1, 1, nh * hd))


def attention_supported(n_heads: int, n_kv_heads: int, head_dim: int) -> bool:
    """Whether ``decode_attention`` handles this attention shape (head_dim a power of two, >= 16)."""
    return (n_heads % n_kv_heads == 0 and head_dim >= 16 and head_dim & (head_dim - 1) == 0
            and n_heads // n_kv_heads <= 64)
