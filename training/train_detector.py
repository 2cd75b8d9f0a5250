"""Train the demo detector: a small Qwen2-VL-architecture model, from scratch, on synthetic labels.

The model is built with ``services.serving.checkpoint_builder`` (same tokenizer, config and image processor
as every checkpoint of this project) and taught to answer the project's prompt
(``services.core.prompt.build_prompt()``) with ``services.core.boxes.format_answer(grid_boxes)`` followed by
``<|im_end|>`` (an image without a table: ``<|im_end|>`` alone). Images come from
``services.image_sets.generator.generate_label`` on the fly, in DataLoader worker processes, from the
training seed range (``TRAIN_SEED_BASE`` + i); held-out checks use other ranges
(``VAL_SEED_BASE`` here, ``EVAL_SEED_BASE`` in scripts/evaluate_detector.py; all in training/examples.py,
which builds the examples).

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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from services.core.boxes import parse_answer  # noqa: E402
from services.serving.checkpoint_builder import (  # noqa: E402
    CheckpointSpec,
    build_config,
    build_image_processor,
    build_tokenizer,
)
from services.image_sets.generator import GeneratorConfig, generate_label  # noqa: E402
from training.examples import (  # noqa: E402
    TRAIN_SEED_BASE,
    ExampleMaker,
    LabelStream,
    as_sent,
    canonical_order,
    merge_batches,
)
from training.held_out import held_out_check  # noqa: E402


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


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, TrainConfig, Path]:
    """(arguments, config, log folder); the log folder is created."""
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
    log_dir = args.log_dir or args.out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    if cfg.batch_size % cfg.worker_batch:
        p.error("--batch-size must be a multiple of --worker-batch")
    return args, cfg, log_dir


def resumed_from(args: argparse.Namespace, cfg: TrainConfig) -> dict:
    """The build_info of the checkpoint ``--init-from`` resumes ({} for a fresh run); training goes on
    from its next seed unless ``--seed-start`` says otherwise."""
    previous: dict = {}
    if args.init_from is not None:
        previous = json.loads((args.init_from / "build_info.json").read_text())
        if "next_seed" in previous and args.seed_start is None:
            cfg.seed_start = int(previous["next_seed"])
    return previous


def start_workers(maker: ExampleMaker, cfg: TrainConfig, pad_id: int, device: str) -> tuple[queue.Queue, Feeder]:
    """The DataLoader workers (they fork here, in the main thread, before CUDA is touched) and the
    feeder thread that queues their batches."""
    parts_per_step = cfg.batch_size // cfg.worker_batch
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
    return q, feeder


@dataclass
class Trainee:
    """The model in training, its auxiliary head (fed by a hook on the vision merger) and the
    on-device pixel normalization."""

    model: Any
    aux_head: torch.nn.Module
    captured: dict[str, torch.Tensor]
    normalizer: PixelNormalizer


def build_trainee(spec: CheckpointSpec, tokenizer, processor, device: str, init_from: Path | None) -> Trainee:
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(spec, tokenizer, device, init_from)
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
    return Trainee(model, aux_head, captured, normalizer)


class TrainLog:
    """``train_log.csv``, appended to: a row per logged step and per held-out check. Steps and counts
    go on from those of the run resumed (``previous``, its build_info)."""

    FIELDS = ["run", "step", "time_s", "lr", "loss", "lm_loss", "aux_loss", "answer_token_acc",
              "images_seen", "samples_trained", "val_mean_iou", "val_recall50"]

    def __init__(self, log_dir: Path, previous: dict) -> None:
        path = log_dir / "train_log.csv"
        self.run_index = int(previous.get("runs", 0)) + 1
        self.step0 = int(previous.get("steps", 0))
        self.images0 = int(previous.get("images_seen", 0))
        self.samples0 = int(previous.get("samples_trained", 0))
        self.file = path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if path.stat().st_size == 0:
            self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()


def base_build_info(spec: CheckpointSpec, cfg: TrainConfig, argv: list[str] | None, device: str,
                    previous: dict) -> dict:
    """The parts of build_info.json that do not change during the run."""
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    return {
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


class TrainingLoop:
    """The optimizer steps until the time budget, the hard deadline or ``max_steps``; logging,
    held-out checks and intermediate saves along the way; the final check and save."""

    def __init__(self, args: argparse.Namespace, cfg: TrainConfig, spec: CheckpointSpec, tokenizer, processor,
                 trainee: Trainee, opt: torch.optim.Optimizer, q: queue.Queue, feeder: Feeder, log: TrainLog,
                 base_info: dict, previous: dict, pad_id: int, device: str, amp: bool, t_start: float) -> None:
        self.args, self.cfg, self.spec, self.tokenizer, self.processor = args, cfg, spec, tokenizer, processor
        self.trainee, self.opt, self.q, self.feeder, self.log = trainee, opt, q, feeder, log
        self.base_info, self.previous, self.pad_id, self.device, self.amp = base_info, previous, pad_id, device, amp
        self.t_start = t_start
        self.image_token_id = trainee.model.config.image_token_id
        self.parts_per_step = cfg.batch_size // cfg.worker_batch
        self.buffer: deque = deque(maxlen=cfg.replay_batches)
        self.rng = random.Random(cfg.seed)
        self.step = 0
        self.fresh_images = 0
        self.samples_trained = 0
        self.max_seed = cfg.seed_start - 1
        self.recent: deque = deque(maxlen=50)  # build_info's final_loss: mean of the last 50 logged steps (every log_every)
        self.last_val: dict = {}
        print(f"waiting for the first batches from {cfg.num_workers} workers ...", flush=True)
        self.t_first: float | None = None
        self.t_train0 = time.time()
        self.last_eval = self.last_save = self.t_train0
        self.hard_stop = t_start + cfg.deadline_seconds

    def take_fresh(self, block: bool) -> list:
        """A new worker batch onto the device and into the replay buffer; returns its [batch, uses] entry."""
        if self.feeder.error is not None:
            raise RuntimeError("data worker failed") from self.feeder.error
        wb = self.q.get(timeout=300) if block else self.q.get_nowait()
        g = {k: v.to(self.device, non_blocking=True) for k, v in wb.items() if k != "seeds"}
        g["seeds"] = wb["seeds"]
        self.fresh_images += len(wb["seeds"])
        self.max_seed = max(self.max_seed, int(wb["seeds"].max()))
        entry = [g, 0]
        self.buffer.append(entry)
        return entry

    def gather_parts(self) -> list[dict[str, torch.Tensor]]:
        """The worker batches of one step: fresh ones while the queue has them, else replayed ones
        (each at most ``max_reuse`` times, never twice in one step)."""
        parts = []
        for _ in range(self.parts_per_step):
            try:
                entry = self.take_fresh(block=(self.t_first is None))
            except queue.Empty:
                cands = [e for e in self.buffer if e[1] < self.cfg.max_reuse and all(e is not p for p in parts)]
                entry = self.rng.choice(cands) if cands else self.take_fresh(block=True)
            entry[1] += 1
            parts.append(entry[0])
        if self.t_first is None:
            self.t_first = time.time()
            print(f"first batch after {self.t_first - self.t_start:.1f} s", flush=True)
            self.t_train0 = self.last_eval = self.last_save = self.t_first
        return parts

    def train_step(self, parts: list[dict[str, torch.Tensor]]) -> tuple[float, torch.Tensor, dict]:
        """One optimizer step on the merged parts; returns (lr, loss, the loss's parts)."""
        cfg, t = self.cfg, self.trainee
        batch = merge_batches(parts, self.pad_id)
        lr = lr_at(cfg, self.step, (time.time() - self.t_train0) / cfg.train_seconds)
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss, parts_loss = compute_loss(t.model, t.aux_head, t.normalizer, batch, t.captured, cfg,
                                        self.image_token_id, self.amp)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(t.model.parameters()) + list(t.aux_head.parameters()), cfg.grad_clip)
        self.opt.step()
        self.step += 1
        self.samples_trained += int(batch["ids"].shape[0])
        return lr, loss, parts_loss

    def log_step(self, lr: float, loss: torch.Tensor, parts_loss: dict) -> None:
        log, fresh, trained = self.log, self.fresh_images, self.samples_trained
        row = {"loss": loss.item(), **{k: v.item() for k, v in parts_loss.items()}}
        self.recent.append(row)
        t = time.time() - self.t_train0
        log.write({
            "run": log.run_index, "step": log.step0 + self.step, "time_s": round(t, 1), "lr": f"{lr:.3e}",
            "loss": f"{row['loss']:.4f}", "lm_loss": f"{row['lm_loss']:.4f}",
            "aux_loss": f"{row['aux_loss']:.4f}", "answer_token_acc": f"{row['acc']:.4f}",
            "images_seen": log.images0 + fresh, "samples_trained": log.samples0 + trained,
            "val_mean_iou": "", "val_recall50": "",
        })
        print(f"step {log.step0 + self.step:6d} t {t:6.1f}s lr {lr:.2e} loss {row['loss']:.4f} "
              f"lm {row['lm_loss']:.4f} aux {row['aux_loss']:.4f} acc {row['acc']:.3f} "
              f"fresh {fresh} ({fresh / max(t, 1e-6):.0f}/s) "
              f"trained {trained} ({trained / max(t, 1e-6):.0f}/s) q {self.q.qsize()}",
              flush=True)

    def held_out(self, n: int) -> float:
        """The held-out check on ``n`` images into ``last_val``; returns when it ended."""
        self.last_val = held_out_check(self.trainee.model, self.tokenizer, self.processor, n,
                                       self.cfg.max_new_tokens, self.device, self.amp)
        return time.time()

    def write_val_row(self, time_s: float) -> None:
        log = self.log
        log.write({"run": log.run_index, "step": log.step0 + self.step, "time_s": time_s,
                   "images_seen": log.images0 + self.fresh_images,
                   "samples_trained": log.samples0 + self.samples_trained,
                   "val_mean_iou": self.last_val["val_mean_iou"], "val_recall50": self.last_val["val_recall50"]})

    def save(self, final: bool) -> int:
        previous, cfg = self.previous, self.cfg
        elapsed = time.time() - self.t_train0
        recent = self.recent
        info = {
            **self.base_info,
            "runs": self.log.run_index,
            "steps": self.log.step0 + self.step,
            "images_seen": self.log.images0 + self.fresh_images,
            "samples_trained": self.log.samples0 + self.samples_trained,
            "next_seed": self.max_seed + 1,
            "train_seed_range": [previous.get("train_seed_range", [cfg.seed_start])[0], self.max_seed],
            "wall_time_s": round(float(previous.get("wall_time_s", 0)) + (time.time() - self.t_start), 1),
            "train_time_s": round(float(previous.get("train_time_s", 0)) + elapsed, 1),
            "this_run": {"steps": self.step, "images_seen": self.fresh_images, "train_time_s": round(elapsed, 1)},
            "final_loss": round(float(np.mean([r["loss"] for r in recent])), 4) if recent else None,
            "final_lm_loss": round(float(np.mean([r["lm_loss"] for r in recent])), 4) if recent else None,
            "held_out_check": self.last_val,
            "complete": final,
        }
        args = self.args
        size = save_checkpoint(self.trainee.model, self.tokenizer, self.processor, self.spec, args.out, info,
                               args.out_tar)
        print(f"saved {args.out} ({size / 1e6:.2f} MB, {'final' if final else 'intermediate'})", flush=True)
        return size

    def run(self) -> None:
        cfg = self.cfg
        try:
            while True:
                now = time.time()
                progress = (now - self.t_train0) / cfg.train_seconds
                if progress >= 1.0 or now >= self.hard_stop or (cfg.max_steps and self.step >= cfg.max_steps):
                    break
                lr, loss, parts_loss = self.train_step(self.gather_parts())
                if self.step % cfg.log_every == 0 or self.step == 1:
                    self.log_step(lr, loss, parts_loss)
                if time.time() - self.last_eval >= cfg.eval_every_s and cfg.val_images:
                    self.last_eval = self.held_out(cfg.val_images)
                    self.write_val_row(round(self.last_eval - self.t_train0, 1))
                    print(f"held-out check at step {self.log.step0 + self.step}: {json.dumps(self.last_val)}",
                          flush=True)
                if time.time() - self.last_save >= cfg.save_every_s:
                    self.save(final=False)
                    self.last_save = time.time()
        finally:
            self.feeder.stop.set()

    def finish(self) -> None:
        """The summary, the final held-out check and the final save."""
        print(f"training stopped after {self.step} steps, {time.time() - self.t_train0:.1f} s; "
              f"{self.fresh_images} images generated, {self.samples_trained} samples trained", flush=True)
        if self.device.startswith("cuda"):
            print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
        if self.cfg.final_val_images:
            self.held_out(self.cfg.final_val_images)
            self.write_val_row(round(time.time() - self.t_train0, 1))
            print(f"final held-out check: {json.dumps(self.last_val)}", flush=True)
        self.log.file.close()
        size = self.save(final=True)
        if size > MAX_SIZE_BYTES:
            print(f"WARNING: the checkpoint folder is {size / 1e6:.2f} MB, over {MAX_SIZE_BYTES / 1e6} MB", flush=True)


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    args, cfg, log_dir = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = args.amp == "on" or (args.amp == "auto" and device.startswith("cuda"))
    previous = resumed_from(args, cfg)
    spec = DEMO_SPEC
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    tokenizer = build_tokenizer(spec.bpe_vocab_size)
    processor = build_image_processor(spec)
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    maker = ExampleMaker(tokenizer, processor,
                         GeneratorConfig(none_fraction=cfg.none_fraction, two_fraction=cfg.two_fraction))
    q, feeder = start_workers(maker, cfg, pad_id, device)  # the workers fork before CUDA is touched

    trainee = build_trainee(spec, tokenizer, processor, device, args.init_from)
    if not args.no_self_check:
        self_check(maker, trainee.model, trainee.normalizer, device)
    opt_kwargs = {"fused": True} if device.startswith("cuda") else {}
    opt = torch.optim.AdamW(param_groups(trainee.model, trainee.aux_head, cfg.weight_decay), lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), **opt_kwargs)
    log = TrainLog(log_dir, previous)
    base_info = base_build_info(spec, cfg, argv, device, previous)

    loop = TrainingLoop(args, cfg, spec, tokenizer, processor, trainee, opt, q, feeder, log, base_info, previous,
                        pad_id, device, amp, t_start)
    loop.run()
    loop.finish()
    print(f"done in {time.time() - t_start:.1f} s", flush=True)
    os._exit(0)  # do not wait for the DataLoader workers' shutdown


if __name__ == "__main__":
    raise SystemExit(main())
