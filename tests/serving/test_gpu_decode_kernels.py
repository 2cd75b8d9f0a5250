"""The project's Triton kernels and fp8 layers on a real GPU (marked ``gpu``: skipped without CUDA).

Each kernel against a float32 reference of the same arithmetic, on fresh random inputs, outputs
poisoned first: the matrix-vector kernel (fp8 x fp8 with row-wise scales, bf16, the gated MLP form,
shapes that do not divide the blocks), the row-wise activation quantization (bit-equal to the torch
ops), the split-sequence decode attention (against the eager attention over the masked cache), and
``Fp8Linear`` for one row and for a prefill's rows.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
if torch.cuda.get_device_capability(0) < (8, 9):
    pytest.skip("fp8 kernels need compute capability 8.9", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

from services.serving import decode_kernels as dk  # noqa: E402
from services.serving.fp8_linear import Fp8Linear, quantize_activation, quantize_weight  # noqa: E402


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("n,k", [(4608, 3584), (3584, 18944), (200, 136), (96, 4000)])
@pytest.mark.parametrize("gated", [False, True])
def test_fp8_gemv_matches_the_rowwise_scaled_product(n, k, gated):
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    wq, ws = quantize_weight(torch.randn(n, k, device="cuda") * 0.02)
    wq2, ws2 = quantize_weight(torch.randn(n, k, device="cuda") * 0.02)
    bias = None if gated else torch.randn(n, device="cuda", dtype=torch.bfloat16)
    xq, xs = quantize_activation(x)
    ref = (xq.float() * xs) @ (wq.float() * ws[:, None]).t()
    if gated:
        up = (xq.float() * xs) @ (wq2.float() * ws2[:, None]).t()
        ref = F.silu(ref.bfloat16()).float() * up.bfloat16().float()
    else:
        ref = ref + bias.float()
    for cfg in [None, (2, 256, 4), (16, 1024, 8)]:
        out = torch.full((1, n), float("nan"), device="cuda", dtype=torch.bfloat16)
        dk.gemv_launch(xq, xs, wq, ws, bias, wq2 if gated else None, ws2 if gated else None, config=cfg, out=out)
        assert torch.isfinite(out).all()
        assert rel(out, ref) < 1e-2, (cfg, rel(out, ref))


@pytest.mark.parametrize("n,k", [(3584, 3584), (152, 200)])
def test_bf16_gemv_matches_f_linear(n, k):
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    out = dk.gemv(x, None, w, None, bias, None, None)
    ref = x.double() @ w.double().t() + bias.double()
    assert rel(out, ref) < 1e-2


def test_quantize_rows_equals_the_torch_ops():
    x = torch.randn(37, 3584, device="cuda", dtype=torch.bfloat16) * torch.rand(37, 1, device="cuda") * 10
    xq, xs = dk.quantize_rows(x)
    rq, rs = quantize_activation(x)
    assert torch.equal(xs, rs)
    # the same division and rounding; allow a rare last-bit difference of the fp32 quotient
    differ = (xq.view(torch.uint8) != rq.view(torch.uint8)).float().mean()
    assert differ < 1e-3 and (xq.float() - rq.float()).abs().max() <= rq.float().abs().max() / 8


@pytest.mark.parametrize("nh,nkv,hd", [(28, 4, 128), (4, 2, 64)])
@pytest.mark.parametrize("pos", [0, 5, 63, 64, 1315, 4095])
def test_decode_attention_matches_the_eager_attention(nh, nkv, hd, pos):
    max_len = 4096
    q = torch.randn(1, nh, 1, hd, device="cuda", dtype=torch.bfloat16)
    keys = torch.randn(1, nkv, max_len, hd, device="cuda", dtype=torch.bfloat16)
    values = torch.randn(1, nkv, max_len, hd, device="cuda", dtype=torch.bfloat16)
    keys[:, :, pos + 1:] = float("nan")  # never written: must never be read
    values[:, :, pos + 1:] = float("nan")
    out = dk.decode_attention(q, keys, values, torch.tensor([pos], device="cuda"), hd**-0.5)
    qq = q.reshape(1, nkv, nh // nkv, hd).double()
    scores = qq @ keys[:, :, : pos + 1].double().transpose(2, 3) * hd**-0.5
    ref = (scores.softmax(-1) @ values[:, :, : pos + 1].double()).reshape(1, 1, nh * hd)
    assert out.shape == (1, 1, nh * hd) and out.dtype == torch.bfloat16
    assert rel(out, ref) < 1e-2


@pytest.mark.parametrize("rows", [1, 7, 1316])
def test_fp8_linear_computes_dynamic_rowwise_fp8(rows):
    lin = torch.nn.Linear(3584, 512, bias=True, device="cuda", dtype=torch.bfloat16)
    layer = Fp8Linear.from_linear(lin)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.shape == (512,)
    x = torch.randn(1, rows, 3584, device="cuda", dtype=torch.bfloat16)
    out = layer(x)
    xq, xs = quantize_activation(x.reshape(rows, -1))
    ref = (xq.float() * xs) @ (layer.weight.float() * layer.weight_scale[:, None]).t() + lin.bias.float()
    assert out.shape == (1, rows, 512) and out.dtype == torch.bfloat16
    assert rel(out.reshape(rows, -1), ref) < 1e-2
    assert rel(out, lin(x)) < 0.1  # fp8 against bf16: e4m3 keeps 3 mantissa bits
