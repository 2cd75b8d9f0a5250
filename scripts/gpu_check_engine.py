"""Check the engine's GPU path: bf16 and fp8 (dynamic activation + weight on compute capability >= 8.9)
on CUDA, on a checkpoint and a few generated label images. Prints one JSON line per version and a verdict.

    python scripts/gpu_check_engine.py [--checkpoint models/demo-detector] [--images 8]

What it reports for each precision: the QuantizationReport as applied (mode, layers, bytes), torch's
allocated memory after load, the greedy answers' boxes against the ground truth (IoU) and against bf16
(agreement), and the wall time per image. It needs torch with CUDA, transformers and torchao.
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


def main(argv: list[str] | None = None) -> int:
    import torch

    from services.core.boxes import iou, match_boxes, parse_answer
    from services.serving.engine import Engine, SamplingParams, decode_image
    from services.image_sets.generator import generate_label
    from services.core.prompt import build_prompt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="models/demo-detector")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7_000_000)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU")
        return 2

    samples = [generate_label(args.seed + i) for i in range(args.images)]
    encoded = []
    for s in samples:
        buf = io.BytesIO()
        s.image.save(buf, "JPEG", quality=95)
        encoded.append(base64.b64encode(buf.getvalue()))
    params = SamplingParams(max_tokens=96, temperature=0)
    answers: dict[str, list] = {}
    results = {}
    import gc

    for precision in ("bf16", "fp8"):
        gc.collect()  # the previous version's engine must be gone before this one is measured
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        engine = Engine(args.checkpoint, precision, device="cuda")
        allocated = torch.cuda.memory_allocated() - before
        engine.generate(build_prompt(), [decode_image(encoded[0])], params)  # warm-up
        times, ious, boxes = [], [], []
        for sample, data in zip(samples, encoded):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = engine.generate(build_prompt(), [decode_image(data)], params)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            parsed = parse_answer(out.text, sample.image.width, sample.image.height)
            boxes.append(parsed.pixel_boxes)
            for _, j, value in match_boxes(parsed.pixel_boxes, sample.boxes):
                if j is not None:
                    ious.append(value)
        answers[precision] = boxes
        results[precision] = {
            "quantization": engine.quantization.as_dict(),
            "cuda_allocated_bytes_after_load": allocated,
            "mean_iou_vs_truth": round(statistics.mean(ious), 4) if ious else None,
            "median_s_per_image": round(statistics.median(times), 4),
        }
        print(json.dumps({precision: results[precision]}))
        del engine
    agreement = []
    for a, b in zip(answers["bf16"], answers["fp8"]):
        if a and b:
            agreement.append(iou(a[0], b[0]))
    device = torch.cuda.get_device_name(0)
    cc = ".".join(map(str, torch.cuda.get_device_capability(0)))
    fp8 = results["fp8"]["quantization"]
    print(json.dumps({"device": device, "compute_capability": cc,
                      "agreement_mean_iou": round(statistics.mean(agreement), 4) if agreement else None}))
    expected = "fp8_dynamic_activation_weight" if tuple(map(int, cc.split("."))) >= (8, 9) else "fp8_weight_only"
    ok = fp8["mode"] == expected and fp8["layers_quantized"] == fp8["decoder_linear_layers"] > 0
    print(f"fp8 mode on {device} (cc {cc}): {fp8['mode']} (expected {expected}): {'OK' if ok else 'WRONG'}; "
          f"decoder linear bytes {fp8['decoder_linear_bytes_before']} -> {fp8['decoder_linear_bytes_after']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
