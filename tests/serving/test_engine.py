"""The engine in-process: sampling parameters as vLLM takes them, streaming steps, fp8 as applied."""

from __future__ import annotations

import base64
import io

import pytest
import torch

from services.serving.engine import Engine, EngineError, SamplingParams, decode_image, tensor_bytes
from services.core.prompt import build_prompt


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    return {p: Engine(tiny_checkpoint, p, device="cpu") for p in ("bf16", "fp8")}


@pytest.fixture(scope="module")
def image(label_image_bytes):
    return decode_image(base64.b64encode(label_image_bytes))


def test_sampling_params_follow_vllm_defaults_and_types():
    assert SamplingParams.from_json(None).max_tokens == 16  # vLLM's default: always send max_tokens
    p = SamplingParams.from_json('{"max_tokens": "32", "temperature": "0", "ignore_eos": "true", "top_k": -1}')
    assert (p.max_tokens, p.temperature, p.ignore_eos) == (32, 0.0, True)
    for bad, message in [('{"max_tokens": 0}', "max_tokens"), ('{"temperature": -1}', "temperature"),
                         ('{"n": 2}', "not supported"), ('{"what": 1}', "unknown"), ("[1]", "JSON object"),
                         ('{"max_tokens": "many"}', "wrong type"), ('{"min_tokens": 9, "max_tokens": 4}', "min_tokens")]:
        with pytest.raises(EngineError, match=message):
            SamplingParams.from_json(bad)


def test_steps_add_up_to_the_result(engines, image):
    steps = []
    result = engines["bf16"].generate(build_prompt(), [image], SamplingParams(max_tokens=10, temperature=0),
                                      on_step=steps.append)
    assert "".join(s.text for s in steps) == result.text
    assert sum(s.num_tokens for s in steps) == result.num_output_tokens
    assert [s.finished for s in steps].count(True) == 1 and steps[-1].finished
    assert result.num_input_tokens > 40


def test_min_tokens_and_ignore_eos_force_the_length(engines, image):
    for params in (SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
                   SamplingParams(max_tokens=20, min_tokens=20, temperature=0)):
        result = engines["bf16"].generate(build_prompt(), [image], params)
        assert result.num_output_tokens == 20 and result.finish_reason == "length"


def test_stop_token_ids_end_the_answer(engines, image):
    first = engines["bf16"].generate(build_prompt(), [image], SamplingParams(max_tokens=8, temperature=0))
    stop_on = first.token_ids[2]
    result = engines["bf16"].generate(build_prompt(), [image],
                                      SamplingParams(max_tokens=8, temperature=0, stop_token_ids=(stop_on,)))
    assert result.finish_reason == "stop"
    assert result.token_ids[-1] == stop_on and len(result.token_ids) <= 3


def test_logprobs_are_reported_when_asked(engines, image):
    result = engines["bf16"].generate(build_prompt(), [image], SamplingParams(max_tokens=4, temperature=0, logprobs=2),
                                      with_logprobs=True)
    assert result.cumulative_logprob < 0
    assert len(result.logprobs) == 4
    for token, entry in zip(result.token_ids, result.logprobs):
        assert entry[token]["rank"] == 1  # greedy picks the most likely token
    assert abs(sum(e[t]["logprob"] for t, e in zip(result.token_ids, result.logprobs)) - result.cumulative_logprob) < 1e-4


def test_fp8_is_applied_to_decoder_linears_only(engines):
    report = engines["fp8"].quantization
    assert report.mode == "fp8_weight_only"  # no GPU of compute capability >= 8.9 here
    assert report.layers_quantized == report.decoder_linear_layers > 0
    assert report.decoder_linear_bytes_after < report.decoder_linear_bytes_before
    model = engines["fp8"].model
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.model.visual.parameters())
    assert engines["bf16"].quantization.mode == "none"


def test_fp8_answers_stay_close_to_bf16(engines, image):
    params = SamplingParams(max_tokens=6, temperature=0)
    a = engines["bf16"].generate(build_prompt(), [image], params, with_logprobs=True)
    b = engines["fp8"].generate(build_prompt(), [image], params, with_logprobs=True)
    assert a.token_ids[0] == b.token_ids[0]  # random weights exaggerate fp8 error; the first pick holds


def test_prompt_too_long_and_placeholder_mismatch_are_refused(engines, image, tiny_checkpoint):
    with pytest.raises(EngineError, match="placeholder"):
        engines["bf16"].generate(build_prompt(num_images=2), [image], SamplingParams(max_tokens=1))
    short = Engine(tiny_checkpoint, "bf16", device="cpu", max_model_len=32)
    with pytest.raises(EngineError, match="maximum model length"):
        short.generate(build_prompt(), [image], SamplingParams(max_tokens=1))


def test_decode_image_refusals():
    for data, message in [(b"", "empty"), (b"!!", "base64"), (base64.b64encode(b"hello"), "not a recognised")]:
        with pytest.raises(EngineError, match=message):
            decode_image(data)


def test_tensor_bytes_looks_inside_subclasses():
    t = torch.zeros(10, 10, dtype=torch.bfloat16)
    assert tensor_bytes(t) == 200
