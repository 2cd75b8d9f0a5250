"""The locally built Qwen2-VL checkpoint: complete, deterministic, with Qwen2-VL's tokens and template."""

from __future__ import annotations

import hashlib
import json

import pytest

from services.serving.checkpoint_builder import (
    PRESET_7B,
    SPECIAL_TOKENS,
    CheckpointSpec,
    build_checkpoint,
    build_config,
    build_tokenizer,
)
from services.core.prompt import build_prompt


def digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_spec_gives_identical_files(tmp_path):
    a = build_checkpoint(tmp_path / "a")
    b = build_checkpoint(tmp_path / "b")
    assert digest(a) == digest(b)
    other = build_checkpoint(tmp_path / "c", CheckpointSpec(seed=1))
    assert digest(other)["model.safetensors"] != digest(a)["model.safetensors"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "generation_config.json", "build_info.json"} <= set(digest(a))


def test_tokenizer_carries_every_special_token_as_one_token():
    tok = build_tokenizer()
    for token in SPECIAL_TOKENS:
        ids = tok(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == token
    assert tok.eos_token == "<|im_end|>"


def test_tokenizer_splits_digits_and_round_trips_the_answer_format():
    tok = build_tokenizer()
    answer = "<|object_ref_start|>nutrition-table<|object_ref_end|><|box_start|>(273,304),(713,679)<|box_end|>"
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == answer
    assert tok.decode(ids, skip_special_tokens=True) == "nutrition-table(273,304),(713,679)"
    digits = tok("2730", add_special_tokens=False)["input_ids"]
    assert len(digits) == 4


def test_chat_template_renders_the_vllm_prompt():
    tok = build_tokenizer()
    from services.core.prompt import SYSTEM_PROMPT, USER_PROMPT

    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": USER_PROMPT}]},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == build_prompt()


def test_7b_preset_has_qwen2_vl_7b_shape():
    tok = build_tokenizer()
    config = build_config(PRESET_7B, tok)
    text = config.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (3584, 18944, 28)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (28, 4, 152064)
    assert config.vision_config.depth == 32 and config.vision_config.embed_dim == 1280


def test_bad_mrope_section_is_refused():
    with pytest.raises(ValueError, match="mrope_section"):
        build_config(CheckpointSpec(mrope_section=(2, 2, 2)), build_tokenizer())


def test_build_info_says_it_is_random(tmp_path):
    out = build_checkpoint(tmp_path / "a")
    info = json.loads((out / "build_info.json").read_text())
    assert "random" in info["weights"] and info["parameters"] > 0
