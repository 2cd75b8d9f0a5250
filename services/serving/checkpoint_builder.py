"""Build a Qwen2-VL-architecture checkpoint locally and deterministically, with no download.

The real fine-tune (a 7B Qwen2-VL) cannot be fetched here, so the embedded default serves a checkpoint
that this module makes from a config: random weights from a fixed seed, a byte-level BPE tokenizer
trained locally on a fixed corpus that carries every Qwen2-VL special token and the Qwen2-VL chat
template, and the Qwen2-VL image processor settings. It is the same file layout as a Hugging Face
checkpoint, so the engine loads it and the real fine-tune through one code path.

    python -m services.serving.checkpoint_builder OUT_DIR [--preset tiny|7b] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Qwen2-VL's special tokens, in the order the real tokenizer numbers them after its BPE vocabulary.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The chat template: the Qwen2-VL conversation format (system turn, user turns with image and video
# placeholders, assistant turns), written for this project.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class CheckpointSpec:
    """The shape of a Qwen2-VL checkpoint to build. Defaults: a tiny one for CPU tests and demos."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2
    vision_depth: int = 2
    vision_embed_dim: int = 64
    vision_num_heads: int = 4
    vision_mlp_ratio: int = 2
    bpe_vocab_size: int = 1024  # BPE tokens before the special tokens
    vocab_size: int | None = None  # embedding rows; None: the tokenizer's size
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    # Image processor bounds in pixels (Qwen2-VL: one visual token per 28x28 after merging).
    min_pixels: int = 56 * 56
    max_pixels: int = 224 * 224
    seed: int = 0
    note: str = field(default="tiny random-weight Qwen2-VL for tests and the offline demo")


# Qwen2-VL-7B's exact architecture (the real fine-tune's shape), with random weights.
PRESET_7B = CheckpointSpec(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    mrope_section=(16, 24, 24),
    vision_depth=32,
    vision_embed_dim=1280,
    vision_num_heads=16,
    vision_mlp_ratio=4,
    vocab_size=152064,
    max_position_embeddings=32768,
    min_pixels=56 * 56,
    max_pixels=1280 * 28 * 28,
    note="Qwen2-VL-7B architecture with random weights (no download possible)",
)
PRESETS = {"tiny": CheckpointSpec(), "7b": PRESET_7B}


def tokenizer_corpus() -> list[str]:
    """The fixed text the tokenizer is trained on: the prompt, box answers, label-like English."""
    from services.core.prompt import SYSTEM_PROMPT, USER_PROMPT

    words = (
        "nutrition facts table serving size servings per container amount calories total fat "
        "saturated trans cholesterol sodium carbohydrate dietary fiber sugars added protein "
        "vitamin calcium iron potassium daily value energy per 100 g portion of which salt "
        "ingredients water sugar flour oil milk whey lecithin natural flavour best before "
        "net weight store in a cool dry place made in the detect all nutrition tables in this "
        "image and return the boxes you are a helpful assistant system user assistant"
    ).split()
    lines = [SYSTEM_PROMPT, USER_PROMPT, "nutrition-table", "nutrition table"]
    for i, w in enumerate(words):
        lines.append(" ".join(words[i : i + 7]).capitalize() + ".")
        lines.append(f"{w} {i * 37 % 1000} mg {i * 13 % 100}%")
        lines.append(f"nutrition-table({i * 7 % 1000},{i * 11 % 1000}),({i * 17 % 1000},{i * 19 % 1000})")
    return lines * 4


def build_tokenizer(bpe_vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained here, with Qwen2-VL's special tokens and chat template.

    Digits are split one per token, as in Qwen2's pre-tokenizer, so coordinates are read and written
    digit by digit.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def build_config(spec: CheckpointSpec, tokenizer):
    """The Qwen2VLConfig for ``spec`` with token ids taken from ``tokenizer``."""
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = spec.hidden_size // spec.num_attention_heads
    if sum(spec.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {spec.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    vocab = spec.vocab_size or len(tokenizer)
    if vocab < len(tokenizer):
        raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer ({len(tokenizer)})")
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            max_position_embeddings=spec.max_position_embeddings,
            max_window_layers=spec.num_hidden_layers,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": list(spec.mrope_section),
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=spec.tie_word_embeddings,
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            embed_dim=spec.vision_embed_dim,
            hidden_size=spec.hidden_size,
            num_heads=spec.vision_num_heads,
            mlp_ratio=spec.vision_mlp_ratio,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
        architectures=["Qwen2VLForConditionalGeneration"],
    )


def build_image_processor(spec: CheckpointSpec):
    """Qwen2-VL's image processor (the PIL one: no torchvision needed) with the spec's bounds."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )


def build_checkpoint(out_dir: str | Path, spec: CheckpointSpec | None = None, device: str = "cpu") -> Path:
    """Write a complete checkpoint folder for ``spec`` (config, weights, tokenizer, image processor).

    The same spec and seed give the same files (weights included) on the same torch build.
    """
    import torch
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    spec = spec or CheckpointSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.bpe_vocab_size)
    config = build_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    build_image_processor(spec).save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "built_by": "services.serving.checkpoint_builder",
        "spec": asdict(spec),
        "parameters": n_params,
        "weights": "random (seeded), not the fine-tune",
    }
    (out / "build_info.json").write_text(json.dumps(card, indent=2) + "\n")
    log.info("built %s: %d parameters (%s)", out, n_params, spec.note)
    return out


def default_checkpoint_dir() -> Path:
    """Where the tiny random-weight checkpoint is cached (under the project's data folder)."""
    from services.core.settings import data_dir

    recipe = json.dumps([asdict(CheckpointSpec()), SPECIAL_TOKENS, CHAT_TEMPLATE, tokenizer_corpus()], sort_keys=True)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    return data_dir() / "checkpoints" / f"tiny-random-{digest}"


def ensure_tiny_checkpoint() -> Path:
    """The tiny random-weight checkpoint, built on first use and reused afterwards."""
    out = default_checkpoint_dir()
    if not (out / "build_info.json").exists():
        tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
        build_checkpoint(tmp)
        try:
            tmp.replace(out)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = PRESETS[args.preset]
    spec = CheckpointSpec(**{**asdict(spec), "seed": args.seed, "mrope_section": tuple(spec.mrope_section)})
    build_checkpoint(args.out_dir, spec, device=args.device)
    print(f"checkpoint written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
