"""Training examples of the demo detector, built in DataLoader worker processes.

Each example is one generated label image (``services.image_sets.generator.generate_label`` from a
seed of the training range) as the served model sees it: sent through
``services.core.images.load_image`` like the dashboard sends it (:func:`as_sent`), cut into patches
by the checkpoint's image processor (shipped as uint8, one temporal copy; the GPU normalizes), the
prompt with its ``<|image_pad|>`` expanded, the answer text of the boxes (:func:`target_text`), the
M-RoPE positions (:func:`rope_positions`) and the auxiliary per-visual-token targets
(:func:`aux_targets`). :class:`LabelStream` yields endless worker batches of them; the seed ranges
below keep training, the in-training held-out check and the final evaluation apart.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from services.core.boxes import Box, format_answer
from services.core.prompt import build_prompt
from services.image_sets.generator import GeneratorConfig, generate_label
from services.serving.engine import IMAGE_PAD, expand_image_placeholders

# Seed ranges of generate_label: training, the in-training held-out check, the final evaluation.
TRAIN_SEED_BASE = 1_000_000
TRAIN_SEED_LIMIT = 8_000_000
VAL_SEED_BASE = 8_000_000
EVAL_SEED_BASE = 9_000_000


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

