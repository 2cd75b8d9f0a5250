"""The demo detector's held-out check during training: greedy decoding on validation seeds, scored.

Decoding follows ``services.serving.engine.Engine.prepare/generate`` (the checkpoint's image
processor, the project's prompt with its ``<|image_pad|>`` expanded, greedy, stopping at
``<|im_end|>``); images come from the validation seed range and go through ``as_sent`` as the
dashboard sends them.
"""

from __future__ import annotations

import time

import torch

from services.core.boxes import parse_answer
from services.core.prompt import build_prompt
from services.image_sets.generator import generate_label
from services.serving.engine import expand_image_placeholders
from training.examples import VAL_SEED_BASE, as_sent
from training.metrics import ImageResult, score


@torch.no_grad()
def predict(model, tokenizer, processor, image, max_new_tokens: int, device, amp: bool) -> str:
    """The model's greedy answer for ``image``, as services.serving.engine.Engine.prepare/generate make it."""
    processed = processor(images=[image], return_tensors="pt")
    grid = processed["image_grid_thw"]
    text = expand_image_placeholders(build_prompt(), grid, processor.merge_size)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    image_token_id = model.config.image_token_id
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=processed["pixel_values"].to(device),
            image_grid_thw=grid.to(device),
            mm_token_type_ids=(ids == image_token_id).to(torch.int32),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[1],
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def held_out_check(model, tokenizer, processor, n: int, max_new_tokens: int, device, amp: bool) -> dict:
    """Greedy answers on the first ``n`` images of the validation seed range, scored: mean IoU,
    recall at IoU 0.5, the two-table images apart, false alarms on images without a table."""
    was_training = model.training
    model.eval()
    results = []
    t0 = time.perf_counter()
    for i in range(n):
        sample = generate_label(VAL_SEED_BASE + i)
        image = as_sent(sample.image)
        text = predict(model, tokenizer, processor, image, max_new_tokens, device, amp)
        parsed = parse_answer(text, sample.width, sample.height)
        results.append(ImageResult(sample.grid_boxes, parsed.grid_boxes, text, sample.seed))
    model.train(was_training)
    s = score(results)
    two = score([r for r in results if len(r.truth) == 2])
    return {
        "val_images": n,
        "val_mean_iou": round(s.mean_iou, 4),
        "val_recall50": round(s.recall_50, 4),
        "val_two_table_images": two.images,
        "val_two_table_mean_iou": round(two.mean_iou, 4),
        "val_no_table_false_alarms": s.no_table_images_with_box,
        "val_seconds": round(time.perf_counter() - t0, 1),
        "example": results[0].text if results else "",
    }
