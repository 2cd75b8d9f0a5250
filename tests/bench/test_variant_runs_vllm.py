"""Runs on a Triton variant against a ``vllm serve`` variant: the real embedded Triton (tiny checkpoint,
version 1) and a real standalone vLLM server on the demo detector (the ``openai_server`` fixture of
tests/conftest.py). Detect on both side by side, a paired benchmark compared by label, a short sweep, and
a model name the vLLM server does not serve. Nothing is mocked.
"""

from __future__ import annotations

import pytest

from services.bench.runner import BenchmarkConfig, run_benchmark
from services.bench.sweep import SweepConfig, run_sweep
from services.client.variants import VariantClients, parse_variant_spec, resolve_variants
from services.compare.comparison import compare_run
from services.detect.detection import DetectionOptions, run_batch, sample_inputs
from services.image_sets.image_set import ImageSetSpec
from tests.bench.test_runner import IMAGES, target_of
from tests.bench.test_runner import _stop_sampler_after_module, store  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
TOKENS = 4


def triton_and_vllm(openai_server, model: str | None = None) -> tuple:
    return resolve_variants([
        parse_variant_spec("version=1,label=bf16-triton"),
        parse_variant_spec(f"kind=openai,url={openai_server.base_url},model={model or openai_server.model_name},"
                           "label=bf16-vllm")])


def config(variants, **kw) -> BenchmarkConfig:
    base = dict(variants=variants, image_set=ImageSetSpec(kind="uploaded", images=IMAGES, max_side=160),
                requests=3, warmup=1, max_tokens=TOKENS, extra_sampling={"ignore_eos": True}, timeout_s=120.0)
    return BenchmarkConfig(**{**base, **kw})


def test_detect_asks_both_variants_side_by_side(triton_server, openai_server) -> None:
    variants = triton_and_vllm(openai_server)
    with VariantClients(variants, target_of(triton_server, "http"), timeout_s=120.0) as clients:
        batch = run_batch(clients, sample_inputs(["us_portrait"]),
                          DetectionOptions(versions=tuple(v.key for v in variants), max_tokens=64))
    (image,) = batch.images
    assert list(image.versions) == ["bf16-triton", "bf16-vllm"]
    assert all(v.ok for v in image.versions.values()), [v.error for v in image.versions.values()]
    vllm = image.versions["bf16-vllm"]
    assert vllm.grid_boxes and vllm.truth_iou is not None, vllm.text  # the demo detector answers with a box
    assert image.versions_iou is not None  # the two were compared


def test_a_paired_run_of_triton_against_vllm_serve_is_compared_by_label(triton_server, openai_server, store) -> None:
    outcome = run_benchmark(config(triton_and_vllm(openai_server)), store, target_of(triton_server, "http"))
    assert outcome.status == "completed", outcome.reason
    rows = store.get_requests(outcome.run_id)
    assert [r.version for r in rows] == ["bf16-triton", "bf16-vllm"] * 4
    assert all(r.ok and r.output_tokens == TOKENS and r.ttft_ms is not None for r in rows), [r.error for r in rows]
    assert all(r.input_tokens for r in rows if r.version == "bf16-vllm")  # the server's streamed usage
    manifest = store.get_run(outcome.run_id).manifest
    vllm = next(v for v in manifest["variants"] if v["key"] == "bf16-vllm")
    assert (vllm["kind"], vllm["model"], vllm["url"]) == ("openai", openai_server.model_name, openai_server.base_url)
    assert vllm["preflight"]["model_ready"] is True and vllm["target"]["label"].startswith("OpenAI-compatible")
    c = compare_run(store, outcome.run_id)
    assert (c.a.label, c.b.label) == ("bf16-triton", "bf16-vllm")
    assert c.paired and (c.measured_a, c.measured_b) == (3, 3)


def test_a_short_sweep_on_the_two_variants(triton_server, openai_server, store) -> None:
    sweep = SweepConfig(bench=config(triton_and_vllm(openai_server), requests=2, warmup=1), levels=(1, 2))
    outcome = run_sweep(sweep, store, target_of(triton_server, "http"))
    assert outcome.status == "completed", outcome.reason
    levels = outcome.summary["sweep"]["levels"]
    assert {(lv["version"], lv["value"]) for lv in levels} >= {("bf16-vllm", 1.0), ("bf16-triton", 1.0)}
    assert {r.version for r in store.get_requests(outcome.run_id)} == {"bf16-triton", "bf16-vllm"}


def test_a_model_the_vllm_server_does_not_serve_fails_the_run_before_its_first_request(triton_server, openai_server,
                                                                                      store) -> None:
    outcome = run_benchmark(config(triton_and_vllm(openai_server, model="not-served")), store,
                            target_of(triton_server, "http"))
    assert outcome.status == "failed"
    assert outcome.reason.startswith("variant bf16-vllm: model 'not-served' is not served ready"), outcome.reason
    assert openai_server.model_name in outcome.reason  # it says what the server does serve
    assert store.get_requests(outcome.run_id) == []
