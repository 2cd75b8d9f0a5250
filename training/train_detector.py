"""Train the demo detector: a small Qwen2-VL-architecture model, from scratch, on synthetic labels.

The model is built with ``services.serving.checkpoint_builder`` (same tokenizer, config and image processor
as every checkpoint of this project) and taught to answer the project's prompt
(``services.core.prompt.build_prompt()``) with ``services.core.boxes.format_answer(grid_boxes)`` followed by
``<|im_end|>`` (an image without a table: ``<|im_end|>`` alone). Images come from
``services.image_sets.generator.generate_label`` on the fly, in DataLoader worker processes, from the
training seed range (``TRAIN_SEED_BASE`` + i); held-out checks use other ranges
(``VAL_SEED_BASE`` here, ``EVAL_SEED_BASE`` in scripts/evaluate_detector.py).

What the model sees is what the served model sees: each generated image goes through
``services.core.images.load_image`` (longest side <= 1024, JPEG q95 4:4:4, as the dashboard sends it),
then the checkpoint's ``Qwen2VLImageProcessorPil``; the prompt's ``<|image_pad|>`` is expanded with
``services.serving.engine.expand_image_placeholders``. Workers ship the processor's patches as uint8 (one
temporal copy); the GPU applies the processor's rescale and normalization (checked equal to the
processor's own output by ``--self-check``).

Training: AdamW, linear warmup then cosine decay over the *time* budget (the run stops at a wall-clock
deadline, so the schedule follows elapsed time), bf16 autocast, gradient clipping; the loss is the
cross-entropy of the answer tokens only, plus an auxiliary per-visual-token loss (is this 28x28 cell
inside a table, where is the cell, which box covers it) from a linear head on the vision merger's
output. The head speeds up learning of the vision tower and is dropped when saving: the checkpoint
is a plain Qwen2-VL. When the GPU outruns the 14 generator processes, recent batches are trained on
again (at most ``max_reuse`` times each); ``images_seen`` counts distinct generated images.

Commands (see training/README.md)::

    # CPU smoke test: a few steps with a tiny batch, decode path end to end
    python training/train_detector.py --device cpu --out /tmp/dd --max-steps 3 --batch-size 4 \
        --worker-batch 2 --num-workers 2 --val-images 2 --final-val-images 2 --train-seconds 120
    # the GPU run (scripts/gpu_train.sh)
    python training/train_detector.py --out /tmp/demo-detector --log-dir $OUT --out-tar $OUT/demo-detector.tar
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import os
import platform
import queue
import random
import shlex
import sys
import tarfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from services.core.boxes import Box, format_answer, parse_answer  # noqa: E402
from services.serving.checkpoint_builder import (  # noqa: E402
    CheckpointSpec,
    build_config,
    build_image_processor,
    build_tokenizer,
)
from services.serving.engine import IMAGE_PAD, expand_image_placeholders  # noqa: E402
from services.image_sets.generator import GeneratorConfig, generate_label  # noqa: E402
from services.core.prompt import build_prompt  # noqa: E402
from training.metrics import ImageResult, score  # noqa: E402

# Seed ranges of generate_label: training, the in-training held-out check, the final evaluation.
TRAIN_SEED_BASE = 1_000_000
TRAIN_SEED_LIMIT = 8_000_000
VAL_SEED_BASE = 8_000_000
EVAL_SEED_BASE = 9_000_000

# The demo detector's shape: 5.5 M parameters, 11.0 MB in bf16.
DEMO_SPEC = CheckpointSpec(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    mrope_section=(8, 12, 12),  # head_dim 64
    vision_depth=4,
    vision_embed_dim=192,
    vision_num_heads=3,
    vision_mlp_ratio=4,
    bpe_vocab_size=1024,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    # Every image becomes 160k..200k pixels: 204..256 visual tokens whatever its size.
    min_pixels=400 * 400,
    max_pixels=448 * 448,
    seed=0,
    note="demo detector: small Qwen2-VL trained from scratch on synthetic labels (not the real fine-tune)",
)
MAX_SIZE_BYTES = 12_000_000  # the shipped folder's limit


@dataclass
class TrainConfig:
    seed: int = 0
    batch_size: int = 128  # samples per optimizer step
    worker_batch: int = 32  # samples per DataLoader item (a step takes batch_size // worker_batch of them)
    num_workers: int = 14
    prefetch_factor: int = 4
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 250
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    aux_weight: float = 0.5
    train_seconds: float = 440.0  # training-loop budget; the cosine schedule runs over it
    deadline_seconds: float = 530.0  # hard stop of the loop, counted from the script's start
    max_steps: int = 0  # 0: stop on time only
    max_reuse: int = 3  # times one generated batch may be trained on
    replay_batches: int = 64  # worker batches kept on the device for reuse
    log_every: int = 20
    eval_every_s: float = 120.0
    val_images: int = 16
    final_val_images: int = 48
    save_every_s: float = 150.0
    max_new_tokens: int = 64  # two boxes are 49 tokens
    seed_start: int = TRAIN_SEED_BASE  # first training seed (a resumed run starts after the last one used)
    # Training mix of generate_label (GeneratorConfig's defaults: 10% no table, 10% two tables).
    # Held-out checks and the evaluation always use the default mix.
    none_fraction: float = 0.1
    two_fraction: float = 0.1


# --------------------------------------------------------------------------------------------
# Examples (built in DataLoader workers)
# --------------------------------------------------------------------------------------------


def as_sent(image):
    """The image as the dashboard sends it and the server decodes it (services.core.images.load_image)."""
    from PIL import Image

    from services.core.images import load_image

    buf = io.BytesIO()
    image.save(buf, "BMP")  # lossless and fast; load_image shrinks and re-encodes as JPEG q95
    loaded = load_image(buf.getvalue())
    with Image.open(io.BytesIO(loaded.data)) as img:
        img.load()
        return img.convert("RGB")


def canonical_order(boxes: list[Box]) -> list[Box]:
    """Tables in a fixed order (top-left first by x1 + y1), so the answer is a function of the image."""
    return sorted(boxes, key=lambda b: (b.x1 + b.y1, b.y1, b.x1))


def target_text(grid_boxes: list[Box]) -> str:
    return format_answer(canonical_order(grid_boxes)) + "<|im_end|>"


def rope_positions(ids: np.ndarray, image_token_id: int, grid_thw, merge: int) -> np.ndarray:
    """Qwen2-VL's M-RoPE position ids (3, L) for one sequence with one image (get_rope_index's rule)."""
    ids = np.asarray(ids)
    L = len(ids)
    is_img = ids == image_token_id
    n_img = int(is_img.sum())
    gh, gw = int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    first = int(np.argmax(is_img))
    if n_img != gh * gw or not is_img[first:first + n_img].all():
        raise ValueError("expected one contiguous run of image tokens matching the grid")
    pos = np.zeros((3, L), dtype=np.int64)
    pos[:, :first] = np.arange(first)
    r, c = np.divmod(np.arange(n_img), gw)
    pos[0, first:first + n_img] = first
    pos[1, first:first + n_img] = first + r
    pos[2, first:first + n_img] = first + c
    cur = first + max(gh, gw)
    rest = L - first - n_img
    pos[:, first + n_img:] = cur + np.arange(rest)
    return pos


def aux_targets(grid_boxes: list[Box], grid_thw, merge: int) -> np.ndarray:
    """Per visual token (raster order of the merged grid): [coverage, cx, cy, x1, y1, x2, y2].

    ``coverage``: share of the token's cell inside a table (0..1); ``cx, cy``: the cell's centre;
    ``x1..y2``: the box that covers most of the cell (0 when none), all in 0..1 of the image.
    """
    gh, gw = int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    xs, ys = np.arange(gw), np.arange(gh)
    cov = np.zeros((gh, gw), np.float32)
    best = np.zeros((gh, gw), np.float32)
    box = np.zeros((gh, gw, 4), np.float32)
    for b in grid_boxes:
        x1, y1, x2, y2 = (v / 1000.0 for v in b.as_tuple())
        ox = np.clip(np.minimum(x2, (xs + 1) / gw) - np.maximum(x1, xs / gw), 0, None) * gw
        oy = np.clip(np.minimum(y2, (ys + 1) / gh) - np.maximum(y1, ys / gh), 0, None) * gh
        c = np.outer(oy, ox).astype(np.float32)
        upd = c > best
        best = np.where(upd, c, best)
        box[upd] = (x1, y1, x2, y2)
        cov = np.clip(cov + c, 0.0, 1.0)
    cx = np.broadcast_to((xs + 0.5) / gw, (gh, gw))
    cy = np.broadcast_to(((ys + 0.5) / gh)[:, None], (gh, gw))
    out = np.concatenate([cov[..., None], cx[..., None], cy[..., None], box], axis=-1)
    return out.reshape(gh * gw, 7).astype(np.float32)


class ExampleMaker:
    """Turns a seed into one training example (numpy arrays), exactly as the server would see it."""

    def __init__(self, tokenizer, processor, gen_config: GeneratorConfig | None = None):
        self.tok = tokenizer
        self.proc = processor
        self.gen_config = gen_config or GeneratorConfig()
        self.prompt = build_prompt()
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.merge = processor.merge_size
        self.patch = processor.patch_size
        self.temporal = processor.temporal_patch_size
        self._prompt_ids: dict[tuple[int, int], list[int]] = {}

    def prompt_ids(self, grid_thw) -> list[int]:
        key = (int(grid_thw[1]), int(grid_thw[2]))
        if key not in self._prompt_ids:
            text = expand_image_placeholders(self.prompt, torch.tensor([[1, key[0], key[1]]]), self.merge)
            self._prompt_ids[key] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._prompt_ids[key]

    def make(self, seed: int) -> dict:
        sample = generate_label(seed, self.gen_config)
        image = as_sent(sample.image)
        out = self.proc(images=[image], do_rescale=False, do_normalize=False, return_tensors="np")
        pv = np.asarray(out["pixel_values"], dtype=np.float32)
        grid = np.asarray(out["image_grid_thw"][0], dtype=np.int64)
        n = pv.shape[0]
        one = pv.reshape(n, 3, self.temporal, self.patch * self.patch)[:, :, 0, :]
        patches = np.rint(one).astype(np.uint8)
        p_ids = self.prompt_ids(grid)
        a_ids = self.tok(target_text(sample.grid_boxes), add_special_tokens=False)["input_ids"]
        ids = np.asarray(p_ids + a_ids, dtype=np.int64)
        return {
            "ids": ids,
            "n_prompt": len(p_ids),
            "pos": rope_positions(ids, self.image_token_id, grid, self.merge),
            "patches": patches,
            "grid": grid,
            "aux": aux_targets(sample.grid_boxes, grid, self.merge),
            "seed": seed,
        }


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    B = len(examples)
    L = max(len(e["ids"]) for e in examples)
    ids = np.full((B, L), pad_id, dtype=np.int64)
    labels = np.full((B, L), -100, dtype=np.int64)
    pos = np.zeros((3, B, L), dtype=np.int64)
    for i, e in enumerate(examples):
        n = len(e["ids"])
        ids[i, :n] = e["ids"]
        labels[i, e["n_prompt"]:n] = e["ids"][e["n_prompt"]:]
        pos[:, i, :n] = e["pos"]
    return {
        "ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "pos": torch.from_numpy(pos),
        "patches": torch.from_numpy(np.concatenate([e["patches"] for e in examples])),
        "grid": torch.from_numpy(np.stack([e["grid"] for e in examples])),
        "aux": torch.from_numpy(np.concatenate([e["aux"] for e in examples])),
        "seeds": torch.tensor([e["seed"] for e in examples], dtype=torch.int64),
    }


def merge_batches(parts: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    L = max(p["ids"].shape[1] for p in parts)

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, L - t.shape[-1]), value=value)

    return {
        "ids": torch.cat([pad(p["ids"], pad_id) for p in parts]),
        "labels": torch.cat([pad(p["labels"], -100) for p in parts]),
        "pos": torch.cat([pad(p["pos"], 0) for p in parts], dim=1),
        "patches": torch.cat([p["patches"] for p in parts]),
        "grid": torch.cat([p["grid"] for p in parts]),
        "aux": torch.cat([p["aux"] for p in parts]),
        "seeds": torch.cat([p["seeds"] for p in parts]),
    }


class LabelStream(torch.utils.data.IterableDataset):
    """Endless worker batches; worker w of W makes batches w, w+W, ... from consecutive seeds."""

    def __init__(self, maker: ExampleMaker, seed_start: int, worker_batch: int, pad_id: int):
        super().__init__()
        self.maker = maker
        self.seed_start = seed_start
        self.worker_batch = worker_batch
        self.pad_id = pad_id

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        torch.set_num_threads(1)
        k = wid
        while True:
            first = self.seed_start + k * self.worker_batch
            seeds = range(first, first + self.worker_batch)
            if seeds[-1] >= TRAIN_SEED_LIMIT:
                raise RuntimeError(f"training seeds reached {TRAIN_SEED_LIMIT}: the held-out ranges start there")
            yield collate([self.maker.make(s) for s in seeds], self.pad_id)
            k += nw


# --------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------


class PixelNormalizer:
    """uint8 patches (N, 3, P*P), one temporal copy -> the processor's pixel_values (N, 3*T*P*P)."""

    def __init__(self, processor, device):
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32, device=device).view(1, 3, 1)
        self.std = torch.tensor(processor.image_std, dtype=torch.float32, device=device).view(1, 3, 1)
        self.scale = float(processor.rescale_factor)
        self.temporal = processor.temporal_patch_size

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.float() * self.scale
        x = (x - self.mean) / self.std
        n, c, p2 = x.shape
        return x.unsqueeze(2).expand(n, c, self.temporal, p2).reshape(n, c * self.temporal * p2)


def build_model(spec: CheckpointSpec, tokenizer, device, init_from: Path | None = None):
    from transformers import Qwen2VLForConditionalGeneration

    config = build_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    if init_from is not None:
        model = Qwen2VLForConditionalGeneration.from_pretrained(init_from, dtype=torch.float32)
    else:
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    return model.to(device)


def param_groups(model: torch.nn.Module, aux_head: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for module in (model, aux_head):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over steps, then cosine down to min_lr_ratio over the time budget."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, max(0.0, progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def compute_loss(model, aux_head, normalizer, batch, captured, cfg: TrainConfig, image_token_id: int, amp: bool):
    ids = batch["ids"]
    with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model.model(
            input_ids=ids,
            pixel_values=normalizer(batch["patches"]),
            image_grid_thw=batch["grid"],
            position_ids=batch["pos"],
            mm_token_type_ids=(ids == image_token_id).to(torch.int32),
            use_cache=False,
        )
        h = out.last_hidden_state[:, :-1]
        tgt = batch["labels"][:, 1:]
        sel = tgt != -100
        logits = model.lm_head(h[sel]).float()
        aux_out = aux_head(captured["merger"]).float()
    targets = tgt[sel]
    lm_loss = F.cross_entropy(logits, targets)
    acc = (logits.argmax(-1) == targets).float().mean()
    aux = batch["aux"]
    cov = aux[:, 0]
    l_cov = F.binary_cross_entropy_with_logits(aux_out[:, 0], cov)
    l_pos = F.smooth_l1_loss(aux_out[:, 1:3], aux[:, 1:3], beta=0.05)
    inside = cov > 0.5
    if inside.any():
        l_box = F.smooth_l1_loss(aux_out[inside][:, 3:7], aux[inside][:, 3:7], beta=0.05)
    else:
        l_box = aux_out.sum() * 0.0
    aux_loss = l_cov + l_pos + l_box
    loss = lm_loss + cfg.aux_weight * aux_loss
    return loss, {"lm_loss": lm_loss.detach(), "aux_loss": aux_loss.detach(), "acc": acc.detach()}


# --------------------------------------------------------------------------------------------
# Greedy decoding (the held-out check), as services.serving.engine.Engine.prepare/generate do it
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, tokenizer, processor, image, max_new_tokens: int, device, amp: bool) -> str:
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


def held_out_check(model, tokenizer, processor, n: int, cfg: TrainConfig, device, amp: bool) -> dict:
    was_training = model.training
    model.eval()
    results = []
    t0 = time.perf_counter()
    for i in range(n):
        sample = generate_label(VAL_SEED_BASE + i)
        image = as_sent(sample.image)
        text = predict(model, tokenizer, processor, image, cfg.max_new_tokens, device, amp)
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


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_checkpoint(model, tokenizer, processor, spec: CheckpointSpec, out_dir: Path, info: dict,
                    out_tar: Path | None) -> int:
    """Write the checkpoint folder in bf16 (checkpoint_builder's layout) plus build_info.json."""
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to("cpu", torch.bfloat16).eval()
    for c in (m.config, getattr(m.config, "text_config", None), getattr(m.config, "vision_config", None)):
        if c is not None and hasattr(c, "dtype"):
            c.dtype = torch.bfloat16
    m.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        do_sample=False,
    )
    m.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in m.parameters())
    info = {**info, "parameters": n_params}
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    del m
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    if out_tar is not None:
        tmp = out_tar.with_name(out_tar.name + ".tmp")
        with tarfile.open(tmp, "w") as tar:
            tar.add(out_dir, arcname=out_dir.name)
        tmp.replace(out_tar)
    return size


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Feeder(threading.Thread):
    """Pulls worker batches from the DataLoader into a small queue (pinned when on CUDA)."""

    def __init__(self, batches, q: queue.Queue, pin: bool):
        super().__init__(daemon=True)
        self.loader, self.q, self.pin = batches, q, pin
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self):
        try:
            for wb in self.loader:
                if self.pin:
                    wb = {k: v.pin_memory() for k, v in wb.items()}
                while not self.stop.is_set():
                    try:
                        self.q.put(wb, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
        except BaseException as exc:  # surfaced in the main loop
            self.error = exc


def self_check(maker: ExampleMaker, model, normalizer, device) -> None:
    """The worker path (uint8 patches + GPU normalization, numpy M-RoPE) equals the served path."""
    from PIL import Image  # noqa: F401

    ex = maker.make(TRAIN_SEED_BASE)
    sample = generate_label(TRAIN_SEED_BASE, maker.gen_config)
    image = as_sent(sample.image)
    ref = maker.proc(images=[image], return_tensors="pt")
    mine = normalizer(torch.from_numpy(ex["patches"]).to(device)).cpu()
    err = (mine - ref["pixel_values"]).abs().max().item()
    if err > 1e-4 or tuple(ref["image_grid_thw"][0].tolist()) != tuple(ex["grid"].tolist()):
        raise RuntimeError(f"pixel path differs from the processor's (max abs err {err})")
    ids = torch.from_numpy(ex["ids"])[None].to(device)
    pos, _ = model.model.get_rope_index(
        ids, mm_token_type_ids=(ids == maker.image_token_id).to(torch.int32),
        image_grid_thw=torch.from_numpy(ex["grid"])[None].to(device),
    )
    if not torch.equal(pos[:, 0].cpu(), torch.from_numpy(ex["pos"])):
        raise RuntimeError("numpy M-RoPE positions differ from the model's get_rope_index")
    answer = maker.tok.decode(ex["ids"][ex["n_prompt"]:], skip_special_tokens=True)
    parsed = parse_answer(answer, sample.width, sample.height)
    want = canonical_order(sample.grid_boxes)
    if [tuple(int(v) for v in b.as_tuple()) for b in parsed.grid_boxes] != [tuple(int(v) for v in b.as_tuple()) for b in want]:
        raise RuntimeError(f"target text does not parse back to the boxes: {answer!r}")
    print(f"self-check ok: pixel max err {err:.2e}, M-RoPE equal, target {answer!r}", flush=True)


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--log-dir", type=Path, help="where train_log.csv goes (default: --out's parent)")
    p.add_argument("--out-tar", type=Path, help="also write the checkpoint folder as this tar after each save")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--init-from", type=Path, help="resume: start from this checkpoint folder's weights")
    p.add_argument("--no-self-check", action="store_true")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                   help="bf16 autocast (auto: on CUDA only; bf16 is slow on CPUs without bf16 units)")
    for f in fields(TrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    args = p.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                         if getattr(args, f.name) is not None})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = args.amp == "on" or (args.amp == "auto" and device.startswith("cuda"))
    log_dir = args.log_dir or args.out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    if cfg.batch_size % cfg.worker_batch:
        p.error("--batch-size must be a multiple of --worker-batch")
    parts_per_step = cfg.batch_size // cfg.worker_batch

    previous: dict = {}
    if args.init_from is not None:
        previous = json.loads((args.init_from / "build_info.json").read_text())
        if "next_seed" in previous and args.seed_start is None:
            cfg.seed_start = int(previous["next_seed"])
    spec = DEMO_SPEC
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    tokenizer = build_tokenizer(spec.bpe_vocab_size)
    processor = build_image_processor(spec)
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    maker = ExampleMaker(tokenizer, processor,
                         GeneratorConfig(none_fraction=cfg.none_fraction, two_fraction=cfg.two_fraction))

    # The workers fork before CUDA is touched.
    stream = LabelStream(maker, cfg.seed_start, cfg.worker_batch, pad_id)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=cfg.num_workers,
        prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None,
        persistent_workers=cfg.num_workers > 0,
    )
    q: queue.Queue = queue.Queue(maxsize=max(4, 2 * parts_per_step))
    batches = iter(loader)  # starts (forks) the workers here, in the main thread, before CUDA exists
    feeder = Feeder(batches, q, pin=device.startswith("cuda"))
    feeder.start()

    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(spec, tokenizer, device, args.init_from)
    model.train()
    aux_head = torch.nn.Linear(spec.hidden_size, 7).to(device)
    captured: dict[str, torch.Tensor] = {}
    model.model.visual.merger.register_forward_hook(lambda _m, _i, o: captured.__setitem__("merger", o))
    normalizer = PixelNormalizer(processor, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters ({n_params * 2 / 1e6:.2f} MB in bf16) on {device}; "
          f"torch {torch.__version__}, transformers {__import__('transformers').__version__}", flush=True)
    if n_params * 2 > MAX_SIZE_BYTES:
        raise SystemExit(f"the spec has {n_params:,} parameters: over {MAX_SIZE_BYTES / 1e6} MB in bf16")
    if not args.no_self_check:
        self_check(maker, model, normalizer, device)

    opt_kwargs = {"fused": True} if device.startswith("cuda") else {}
    opt = torch.optim.AdamW(param_groups(model, aux_head, cfg.weight_decay), lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), **opt_kwargs)
    image_token_id = model.config.image_token_id

    csv_path = log_dir / "train_log.csv"
    csv_fields = ["run", "step", "time_s", "lr", "loss", "lm_loss", "aux_loss", "answer_token_acc",
                  "images_seen", "samples_trained", "val_mean_iou", "val_recall50"]
    run_index = int(previous.get("runs", 0)) + 1
    step0 = int(previous.get("steps", 0))
    images0 = int(previous.get("images_seen", 0))
    samples0 = int(previous.get("samples_trained", 0))
    csv_file = csv_path.open("a", newline="")
    writer = csv.DictWriter(csv_file, fieldnames=csv_fields)
    if csv_path.stat().st_size == 0:
        writer.writeheader()

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    base_info = {
        "trained_by": "training/train_detector.py",
        "built_by": "services.serving.checkpoint_builder (spec) + training/train_detector.py (weights)",
        "weights": "trained from scratch on synthetic labels (services.image_sets.generator); a demo, not the fine-tune",
        "spec": asdict(spec),
        "train_config": asdict(cfg),
        "command": command,
        "seed": cfg.seed,
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "answer": "format_answer(grid boxes sorted by x1+y1) + '<|im_end|>'; no table: '<|im_end|>'",
        "resumed_from": previous.get("command") if previous else None,
        "commands": [*previous.get("commands", []), command],
    }

    buffer: deque = deque(maxlen=cfg.replay_batches)
    rng = random.Random(cfg.seed)
    step = 0
    fresh_images = 0
    samples_trained = 0
    max_seed = cfg.seed_start - 1
    recent: deque = deque(maxlen=50)  # build_info's final_loss: mean of the last 50 logged steps (every log_every)
    last_val: dict = {}
    print(f"waiting for the first batches from {cfg.num_workers} workers ...", flush=True)
    t_first = None
    t_train0 = time.time()
    last_eval = last_save = t_train0
    hard_stop = t_start + cfg.deadline_seconds

    def take_fresh(block: bool):
        nonlocal fresh_images, max_seed
        if feeder.error is not None:
            raise RuntimeError("data worker failed") from feeder.error
        wb = q.get(timeout=300) if block else q.get_nowait()
        g = {k: v.to(device, non_blocking=True) for k, v in wb.items() if k != "seeds"}
        g["seeds"] = wb["seeds"]
        fresh_images += len(wb["seeds"])
        max_seed = max(max_seed, int(wb["seeds"].max()))
        entry = [g, 0]
        buffer.append(entry)
        return entry

    def save(final: bool) -> int:
        elapsed = time.time() - t_train0
        info = {
            **base_info,
            "runs": run_index,
            "steps": step0 + step,
            "images_seen": images0 + fresh_images,
            "samples_trained": samples0 + samples_trained,
            "next_seed": max_seed + 1,
            "train_seed_range": [previous.get("train_seed_range", [cfg.seed_start])[0], max_seed],
            "wall_time_s": round(float(previous.get("wall_time_s", 0)) + (time.time() - t_start), 1),
            "train_time_s": round(float(previous.get("train_time_s", 0)) + elapsed, 1),
            "this_run": {"steps": step, "images_seen": fresh_images, "train_time_s": round(elapsed, 1)},
            "final_loss": round(float(np.mean([r["loss"] for r in recent])), 4) if recent else None,
            "final_lm_loss": round(float(np.mean([r["lm_loss"] for r in recent])), 4) if recent else None,
            "held_out_check": last_val,
            "complete": final,
        }
        size = save_checkpoint(model, tokenizer, processor, spec, args.out, info, args.out_tar)
        print(f"saved {args.out} ({size / 1e6:.2f} MB, {'final' if final else 'intermediate'})", flush=True)
        return size

    try:
        while True:
            now = time.time()
            progress = (now - t_train0) / cfg.train_seconds
            if progress >= 1.0 or now >= hard_stop or (cfg.max_steps and step >= cfg.max_steps):
                break
            parts = []
            for _ in range(parts_per_step):
                try:
                    entry = take_fresh(block=(t_first is None))
                except queue.Empty:
                    cands = [e for e in buffer if e[1] < cfg.max_reuse and all(e is not p for p in parts)]
                    entry = rng.choice(cands) if cands else take_fresh(block=True)
                entry[1] += 1
                parts.append(entry[0])
            if t_first is None:
                t_first = time.time()
                print(f"first batch after {t_first - t_start:.1f} s", flush=True)
                t_train0 = last_eval = last_save = t_first
            batch = merge_batches(parts, pad_id)
            lr = lr_at(cfg, step, (time.time() - t_train0) / cfg.train_seconds)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, parts_loss = compute_loss(model, aux_head, normalizer, batch, captured, cfg, image_token_id, amp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(aux_head.parameters()), cfg.grad_clip)
            opt.step()
            step += 1
            samples_trained += int(batch["ids"].shape[0])
            if step % cfg.log_every == 0 or step == 1:
                row = {"loss": loss.item(), **{k: v.item() for k, v in parts_loss.items()}}
                recent.append(row)
                t = time.time() - t_train0
                writer.writerow({
                    "run": run_index, "step": step0 + step, "time_s": round(t, 1), "lr": f"{lr:.3e}",
                    "loss": f"{row['loss']:.4f}", "lm_loss": f"{row['lm_loss']:.4f}",
                    "aux_loss": f"{row['aux_loss']:.4f}", "answer_token_acc": f"{row['acc']:.4f}",
                    "images_seen": images0 + fresh_images, "samples_trained": samples0 + samples_trained,
                    "val_mean_iou": "", "val_recall50": "",
                })
                csv_file.flush()
                print(f"step {step0 + step:6d} t {t:6.1f}s lr {lr:.2e} loss {row['loss']:.4f} "
                      f"lm {row['lm_loss']:.4f} aux {row['aux_loss']:.4f} acc {row['acc']:.3f} "
                      f"fresh {fresh_images} ({fresh_images / max(t, 1e-6):.0f}/s) "
                      f"trained {samples_trained} ({samples_trained / max(t, 1e-6):.0f}/s) q {q.qsize()}",
                      flush=True)
            if time.time() - last_eval >= cfg.eval_every_s and cfg.val_images:
                last_val = held_out_check(model, tokenizer, processor, cfg.val_images, cfg, device, amp)
                last_eval = time.time()
                writer.writerow({"run": run_index, "step": step0 + step, "time_s": round(last_eval - t_train0, 1),
                                 "images_seen": images0 + fresh_images, "samples_trained": samples0 + samples_trained,
                                 "val_mean_iou": last_val["val_mean_iou"], "val_recall50": last_val["val_recall50"]})
                csv_file.flush()
                print(f"held-out check at step {step0 + step}: {json.dumps(last_val)}", flush=True)
            if time.time() - last_save >= cfg.save_every_s:
                save(final=False)
                last_save = time.time()
    finally:
        feeder.stop.set()

    print(f"training stopped after {step} steps, {time.time() - t_train0:.1f} s; "
          f"{fresh_images} images generated, {samples_trained} samples trained", flush=True)
    if device.startswith("cuda"):
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
    if cfg.final_val_images:
        last_val = held_out_check(model, tokenizer, processor, cfg.final_val_images, cfg, device, amp)
        writer.writerow({"run": run_index, "step": step0 + step, "time_s": round(time.time() - t_train0, 1),
                         "images_seen": images0 + fresh_images, "samples_trained": samples0 + samples_trained,
                         "val_mean_iou": last_val["val_mean_iou"], "val_recall50": last_val["val_recall50"]})
        csv_file.flush()
        print(f"final held-out check: {json.dumps(last_val)}", flush=True)
    csv_file.close()
    size = save(final=True)
    if size > MAX_SIZE_BYTES:
        print(f"WARNING: the checkpoint folder is {size / 1e6:.2f} MB, over {MAX_SIZE_BYTES / 1e6} MB", flush=True)
    print(f"done in {time.time() - t_start:.1f} s", flush=True)
    os._exit(0)  # do not wait for the DataLoader workers' shutdown


if __name__ == "__main__":
    raise SystemExit(main())
