"""The static-cache decode path (services/serving/graph_decode.py) against transformers' own computation.

On this CPU machine the step runs eagerly over the static cache (no CUDA graph, no compilation);
the same step is what the GPU captures, and tests/test_gpu_fast_decode.py checks the captured one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.serving.engine import Engine, EngineError, SamplingParams
from services.serving.graph_decode import GraphDecoder, StaticKVCache, greedy_agreement
from services.image_sets.generator import GeneratorConfig, generate_label
from services.core.prompt import build_prompt

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-detector"
PROMPT = build_prompt()


@pytest.fixture(scope="module")
def images():
    return [generate_label(5_100_000 + i, GeneratorConfig(size=(448, 448))).image for i in range(2)]


@pytest.fixture(scope="module")
def demo_engines():
    if not (DEMO / "config.json").is_file():
        pytest.skip("models/demo-detector is not in this checkout")
    return {p: Engine(DEMO, p, device="cpu", fast_decode=True) for p in ("bf16", "fp8")}


@pytest.fixture(scope="module")
def tiny_engine(tiny_checkpoint):
    return Engine(tiny_checkpoint, "bf16", device="cpu", fast_decode=True)


def test_cpu_engines_use_generate_unless_asked(tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("QWEN_FAST_DECODE", raising=False)
    assert Engine(tiny_checkpoint, "bf16", device="cpu").decode_report() == {"decode_mode": "generate"}
    monkeypatch.setenv("QWEN_FAST_DECODE", "1")
    report = Engine(tiny_checkpoint, "bf16", device="cpu").decode_report()
    assert report["decode_mode"] == "static_eager"
    assert report["compiled"] is False and report["capture_error"] is None


def test_static_cache_writes_at_its_position():
    cache = StaticKVCache(n_layers=2, n_kv_heads=2, head_dim=4, max_len=8, dtype=torch.float32, device="cpu")
    cache.position.fill_(5)
    k = torch.ones(1, 2, 1, 4)
    keys, values = cache.update(k, 2 * k, 1)
    assert keys is cache.keys[1] and values is cache.values[1]
    assert torch.equal(keys[0, :, 5], torch.ones(2, 4)) and torch.equal(values[0, :, 5], 2 * torch.ones(2, 4))
    assert keys[0, :, :5].abs().sum() == 0 and keys[0, :, 6:].abs().sum() == 0
    assert cache.keys[0].abs().sum() == 0  # other layers untouched
    assert cache.nbytes == 2 * 2 * (2 * 8 * 4) * 4


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_greedy_tokens_equal_generate_on_the_trained_detector(demo_engines, images, precision):
    """Equal tokens, or a divergence only where generate()'s top two were a rounding-level tie."""
    engine = demo_engines[precision]
    outcomes = []
    for image in images:
        for params in (SamplingParams(max_tokens=40, temperature=0, logprobs=2),
                       SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, logprobs=2)):
            plain = engine.generate(PROMPT, [image], params, fast=False)
            fast = engine.generate(PROMPT, [image], params, fast=True)
            agreement = greedy_agreement(plain, fast)
            assert agreement["equal"] or agreement["near_tie"], agreement
            if agreement["equal"]:
                assert (fast.text, fast.finish_reason) == (plain.text, plain.finish_reason)
            assert fast.text.startswith("nutrition-table(")
            outcomes.append(agreement["equal"])
    assert sum(outcomes) >= len(outcomes) // 2  # ties are the exception, not the rule


def test_greedy_agreement_judges_differences():
    from services.serving.engine import GenerationResult

    def result(ids, margins=None):
        lps = None
        if margins is not None:
            lps = [{t: {"logprob": -0.1, "rank": 1}, t + 1000: {"logprob": -0.1 - m, "rank": 2}}
                   for t, m in zip(ids, margins)]
        return GenerationResult(text="", token_ids=ids, num_input_tokens=1, finish_reason="length", logprobs=lps)

    assert greedy_agreement(result([1, 2, 3]), result([1, 2, 3]))["equal"]
    tie = greedy_agreement(result([1, 2, 3], [5.0, 0.1, 5.0]), result([1, 1002, 7]))
    assert tie == {"equal": False, "first_difference": 1, "margin": pytest.approx(0.1), "near_tie": True, "tokens": 3}
    assert not greedy_agreement(result([1, 2, 3], [5.0, 3.0, 5.0]), result([1, 1002, 7]))["near_tie"]
    assert not greedy_agreement(result([1, 2, 3], [5.0, 0.1, 5.0]), result([1, 9, 7]))["near_tie"]


def test_step_logits_match_the_full_forward_pass(tiny_engine, images):
    """Teacher-forced: each step's logits equal the model's full forward pass at that position."""
    engine = tiny_engine
    decoder: GraphDecoder = engine.graph_decoder()
    tokens = [5, 17, 300, 42, 7, 99]
    with torch.inference_mode():
        inputs = engine.prepare(PROMPT, [images[0]])
        n = inputs["input_ids"].shape[1]
        steps = [decoder.prefill(inputs)]
        for t in tokens:
            steps.append(decoder.step(t).clone())
        full_ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
        full = dict(inputs, input_ids=full_ids, attention_mask=torch.ones_like(full_ids),
                    mm_token_type_ids=(full_ids == engine.image_token_id).to(torch.int32))
        engine.model.model.rope_deltas = None
        reference = engine.model(**full, use_cache=False).logits[0, n - 1:].float()
    assert len(steps) == reference.shape[0]
    for i, got in enumerate(steps):
        want = reference[i]
        rel = (got[0] - want).norm() / want.norm()
        assert rel < 0.02, f"step {i}: relative difference {rel:.4f}"
        assert int(got.argmax()) == int(want.argmax())


def test_answer_stops_at_the_cache_end_like_max_model_len(tiny_checkpoint, images):
    probe = Engine(tiny_checkpoint, "bf16", device="cpu", fast_decode=True)
    n = probe.prepare(PROMPT, [images[0]])["input_ids"].shape[1]
    engine = Engine(tiny_checkpoint, "bf16", device="cpu", fast_decode=True, max_model_len=n + 3)
    steps = []
    result = engine.generate(PROMPT, [images[0]], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True),
                             on_step=steps.append)
    assert result.num_output_tokens == 3 and result.finish_reason == "length"
    assert steps[-1].finished and steps[-1].finish_reason == "length"
    assert sum(s.num_tokens for s in steps) == 3


def test_cancel_mid_answer_then_serve_again(tiny_engine, images):
    seen = []

    def cancelled():
        return len(seen) >= 2

    with pytest.raises(EngineError, match="cancelled"):
        tiny_engine.generate(PROMPT, [images[0]], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
                             on_step=seen.append, is_cancelled=cancelled)
    assert len(seen) == 2 and not any(s.finished for s in seen)  # no final response after a cancel
    again = tiny_engine.generate(PROMPT, [images[0]], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    assert again.num_output_tokens == 5


def test_sampling_parameters_on_the_fast_path(tiny_engine, images):
    image = [images[1]]
    # Seeded sampling draws the same tokens as generate() does: same warpers, same random stream.
    for params in (SamplingParams(max_tokens=12, temperature=0.8, top_k=5, top_p=0.9, ignore_eos=True, seed=3),
                   SamplingParams(max_tokens=12, temperature=1.0, seed=11, ignore_eos=True)):
        fast = tiny_engine.generate(PROMPT, image, params, fast=True)
        assert fast.token_ids == tiny_engine.generate(PROMPT, image, params, fast=False).token_ids
        assert fast.token_ids == tiny_engine.generate(PROMPT, image, params, fast=True).token_ids
    penal = tiny_engine.generate(PROMPT, image, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                               repetition_penalty=1.5), fast=True)
    plain = tiny_engine.generate(PROMPT, image, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True,
                                                               repetition_penalty=1.5), fast=False)
    assert penal.token_ids == plain.token_ids


def test_min_tokens_and_stop_ids_on_the_fast_path(demo_engines, images):
    engine = demo_engines["bf16"]
    natural = engine.generate(PROMPT, [images[0]], SamplingParams(max_tokens=60, temperature=0))
    assert natural.finish_reason == "stop"
    n = natural.num_output_tokens
    longer = engine.generate(PROMPT, [images[0]], SamplingParams(max_tokens=60, temperature=0, min_tokens=n + 4))
    assert longer.num_output_tokens >= n + 4
    plain = engine.generate(PROMPT, [images[0]], SamplingParams(max_tokens=60, temperature=0, min_tokens=n + 4,
                                                                logprobs=2), fast=False)
    assert plain.num_output_tokens >= n + 4
    agreement = greedy_agreement(plain, longer)
    assert agreement["equal"] or agreement["near_tie"], agreement


def test_logprobs_agree_with_the_plain_path(demo_engines, images):
    engine = demo_engines["bf16"]
    params = SamplingParams(max_tokens=16, temperature=0, logprobs=2)
    fast = engine.generate(PROMPT, [images[1]], params, fast=True)
    plain = engine.generate(PROMPT, [images[1]], params, fast=False)
    agreement = greedy_agreement(plain, fast)
    assert agreement["equal"] or agreement["near_tie"], agreement
    k = agreement["first_difference"] or len(plain.token_ids)
    for got, want in zip(fast.logprobs[:k], plain.logprobs[:k]):
        assert sorted(got) == sorted(want)
        for token, entry in want.items():  # the chosen token closely, far-fetched runners-up loosely
            tolerance = dict(abs=0.1) if entry["rank"] == 1 else dict(rel=0.05, abs=0.1)
            assert got[token]["logprob"] == pytest.approx(entry["logprob"], **tolerance)
