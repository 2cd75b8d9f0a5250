"""services.serving.engine's fp8 path on a real GPU with the demo detector (marked ``gpu``: skipped without CUDA).

On compute capability >= 8.9, precision fp8 is torchao's dynamic activation + weight fp8 on every
linear layer of the text decoder (vision tower and lm_head stay bf16), halving the decoder's linear
weight bytes; and a greedy answer on a generated label parses to a box close to bf16's (IoU >= 0.8).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]

CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "demo-detector"
SEED0 = 7_300_000


@pytest.fixture(scope="module")
def engines():
    from services.serving.engine import Engine

    if not (CHECKPOINT / "config.json").is_file():
        pytest.fail(f"the demo detector is missing ({CHECKPOINT})")
    bf16 = Engine(CHECKPOINT, "bf16", device="cuda")
    fp8 = Engine(CHECKPOINT, "fp8", device="cuda")
    yield bf16, fp8
    del bf16, fp8


def one_table_labels(n: int):
    """The first ``n`` generated labels (from SEED0 on) with exactly one table, as (sample, base64 JPEG)."""
    from services.image_sets.generator import generate_label

    out, seed = [], SEED0
    while len(out) < n:
        sample = generate_label(seed)
        seed += 1
        if len(sample.boxes) != 1:
            continue
        buf = io.BytesIO()
        sample.image.save(buf, "JPEG", quality=95)
        out.append((sample, base64.b64encode(buf.getvalue())))
    return out


def test_fp8_is_dynamic_activation_and_weight_on_every_decoder_linear_layer(engines) -> None:
    import torch

    bf16, fp8 = engines
    if torch.cuda.get_device_capability(0) < (8, 9):
        pytest.skip(f"compute capability {torch.cuda.get_device_capability(0)} < 8.9: fp8 is weight-only here")
    q, b = fp8.quantization, bf16.quantization
    assert q.device.startswith("cuda") and q.precision == "fp8"
    assert q.mode == "fp8_dynamic_activation_weight"
    assert q.layers_quantized == q.decoder_linear_layers > 0
    assert b.mode == "none" and b.layers_quantized == 0
    assert q.decoder_linear_bytes_before == b.decoder_linear_bytes_after
    ratio = q.decoder_linear_bytes_after / b.decoder_linear_bytes_after
    assert 0.45 <= ratio <= 0.56, f"fp8 decoder linear bytes are {ratio:.3f} of bf16's (expected about half)"
    assert "float8_e4m3fn" in q.weight_dtype_after
    # the vision tower and lm_head are left in bf16, as vLLM's fp8 does
    assert fp8.model.lm_head.weight.dtype == torch.bfloat16
    visual = [p for n, p in fp8.model.named_parameters() if "visual" in n.split(".")]
    assert visual and all(p.dtype == torch.bfloat16 for p in visual)


def test_fp8_greedy_answers_land_on_bf16_boxes(engines) -> None:
    from services.core.boxes import iou, parse_answer
    from services.serving.engine import SamplingParams, decode_image
    from services.core.prompt import build_prompt

    bf16, fp8 = engines
    params = SamplingParams(max_tokens=96, temperature=0)
    rows = []
    for sample, data in one_table_labels(3):
        boxes = {}
        for name, engine in (("bf16", bf16), ("fp8", fp8)):
            out = engine.generate(build_prompt(), [decode_image(data)], params)
            parsed = parse_answer(out.text, sample.width, sample.height)
            boxes[name] = (parsed.pixel_boxes, out.text)
        assert boxes["bf16"][0], f"bf16 answered no box: {boxes['bf16'][1]!r}"
        assert boxes["fp8"][0], f"fp8 answered no box: {boxes['fp8'][1]!r}"
        rows.append((iou(boxes["bf16"][0][0], boxes["fp8"][0][0]), boxes["bf16"][1], boxes["fp8"][1]))
    assert all(r[0] >= 0.8 for r in rows), rows
