"""The fast decode path as the GPU runs it: compiled, captured in a CUDA graph, replayed per token.

Its greedy tokens must equal transformers generate()'s, except after a rounding-level tie of the
reference's top two candidates (services.serving.graph_decode.greedy_agreement).

Run on the GPU machine (``pytest -m gpu``); skipped elsewhere. The CPU-side checks of the same
step (logits against the full forward pass, sampling, cancellation) are in test_graph_decode.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-detector"


@pytest.fixture(scope="module")
def setup():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from services.image_sets.generator import GeneratorConfig, generate_label
    from services.core.prompt import build_prompt

    images = [generate_label(5_200_000 + i, GeneratorConfig(size=(768, 768))).image for i in range(3)]
    return build_prompt(), images


@pytest.mark.parametrize("precision,kernels", [("bf16", False), ("fp8", False), ("bf16", True), ("fp8", True)])
def test_graph_replay_gives_the_plain_path_tokens(setup, precision, kernels):
    """``kernels``: the project's Triton kernels in the step and, for fp8, its Fp8Linear (issue 17)."""
    import torch

    from services.serving.engine import Engine, SamplingParams
    from services.serving.graph_decode import greedy_agreement

    prompt, images = setup
    engine = Engine(DEMO, precision, device="cuda", decode_kernels=kernels,
                    fp8_backend="kernels" if kernels else "torchao")
    report = engine.decode_report()
    assert report["kernels"] is kernels
    if kernels:
        assert report["kernel_layers"] > 0 and report["kernel_attention"], report
    assert report["decode_mode"] == "cuda_graph", report
    assert report["capture_error"] is None
    assert report["compiled"] is True, report["compile_error"]
    if precision == "fp8":
        assert engine.quantization.mode == "fp8_dynamic_activation_weight"
    outcomes = []
    for image in images:
        params = SamplingParams(max_tokens=48, temperature=0, logprobs=2)
        plain = engine.generate(prompt, [image], params, fast=False)
        fast = engine.generate(prompt, [image], params, fast=True)
        agreement = greedy_agreement(plain, fast)
        print(precision, agreement, repr(plain.text), repr(fast.text))
        assert agreement["equal"] or agreement["near_tie"], (agreement, fast.text, plain.text)
        assert fast.text.startswith("nutrition-table(")
        outcomes.append(agreement["equal"])
    # bf16 logits tie exactly (margin 0.0) on box digits now and then: kernels that sum in another
    # order break such ties differently, so exact equality is counted, not demanded.
    print(precision, f"{sum(outcomes)} of {len(outcomes)} answers token-for-token equal")
    forced = engine.generate(prompt, [images[0]], SamplingParams(max_tokens=64, temperature=0, ignore_eos=True))
    assert forced.num_output_tokens == 64 and forced.finish_reason == "length"
    # Replays must not allocate: the graph's memory pool was set aside at capture.
    before = torch.cuda.memory_allocated()
    engine.generate(prompt, [images[1]], SamplingParams(max_tokens=32, temperature=0, ignore_eos=True))
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 64 * 2**20
