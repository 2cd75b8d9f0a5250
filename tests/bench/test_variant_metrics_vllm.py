"""Memory and server metrics per variant (issue 18, point 3), on real servers: the embedded Triton
(transformers engine, tiny checkpoint, version 1) against a real standalone ``vllm serve`` on the demo
detector (the ``openai_server`` fixture). One tiny paired run (2 measured + 1 warm-up request per
variant, 16 tokens); nothing is mocked."""

from __future__ import annotations

import psutil
import pytest

from services.bench import figures as bf
from services.bench import server_figures as sf
from services.bench.runner import run_benchmark
from services.client.openai_metrics import read_vllm_metrics
from services.compare.capacity import kv_max_concurrency
from services.compare.memory import run_memory_side
from tests.bench.test_runner import target_of
from tests.bench.test_runner import _stop_sampler_after_module, store  # noqa: F401 (fixtures)
from tests.bench.test_variant_runs_vllm import config, triton_and_vllm

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
TRITON, VLLM = "bf16-triton", "bf16-vllm"


def _tree(pid: int) -> set[int]:
    return {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}


def test_a_mixed_run_reads_memory_and_vllm_metrics_per_variant(triton_server, openai_server, store) -> None:
    outcome = run_benchmark(config(triton_and_vllm(openai_server), requests=2, max_tokens=16), store,
                            target_of(triton_server, "http"))
    assert outcome.status == "completed", outcome.reason
    run = store.get_run(outcome.run_id)
    scopes = run.manifest["memory_scopes"]
    assert {k: s["per_version"] for k, s in scopes.items()} == {
        TRITON: "attributed through the process tree", VLLM: "attributed through the process tree"}

    # memory: each variant's own process tree, each > 0, no process under two variants
    rows = store.get_samples(outcome.run_id)
    host = [r for r in rows if r.kind == "host"]
    pids = {k: {r.pid for r in host if r.version == k} for k in (TRITON, VLLM)}
    assert pids[VLLM] and pids[VLLM] <= _tree(openai_server.pid) and len(pids[VLLM]) >= 2  # API server + EngineCore
    assert pids[TRITON] and pids[TRITON] <= _tree(triton_server.pid) and not pids[TRITON] & pids[VLLM]
    for key in (TRITON, VLLM):
        assert all(r.memory_bytes > 0 for r in host if r.version == key)
    memory = bf.version_memory(store.samples_frame(outcome.run_id), [TRITON, VLLM])
    assert set(memory) == {TRITON, VLLM}
    requests = store.get_requests(outcome.run_id)
    sides = {k: run_memory_side(run, store.samples_frame(outcome.run_id), requests, k) for k in (TRITON, VLLM)}
    assert {k: s.source for k, s in sides.items()} == {TRITON: "host-process", VLLM: "host-process"}
    assert sides[VLLM].peak_bytes > sides[TRITON].peak_bytes > 0  # vllm serve's tree vs the tiny model's stub

    # the vllm serve's own vllm:* series, under its key; none under the Triton variant (transformers engine)
    vllm_rows = [r for r in rows if r.value is not None and r.kind.startswith("vllm:")]
    kinds = {r.kind for r in vllm_rows if r.version == VLLM}
    assert {"vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting"} <= kinds
    assert not any(r.version == TRITON for r in vllm_rows)

    # charts: one line per variant
    frame = store.samples_frame(outcome.run_id)
    labels = set(bf.memory_chart_frame(frame)["label"])
    assert TRITON in labels and VLLM in labels
    load = sf.server_load_figure(frame)
    assert {t.name for t in load.data} == {f"{VLLM} KV", f"{VLLM} running", f"{VLLM} waiting"}

    # server-side timings of the vllm serve variant over the measured window (its own histograms)
    timings = {(r["version"], r["metric"]): r for r in store.get_server_timings(outcome.run_id)}
    assert timings[(VLLM, "ttft")]["count"] == 2 and timings[(VLLM, "e2e")]["count"] == 2
    assert timings[(VLLM, "tpot")]["count"] == 2 * 15  # vllm:inter_token_latency_seconds: 15 gaps of 16 tokens

    # capacity: the vllm serve's KV room, as its /metrics states it
    facts = read_vllm_metrics(openai_server.metrics_url, model_name=openai_server.model_name)
    assert run.manifest["quantization"][VLLM]["kv_cache_tokens"] == facts.kv_tokens > 0
    concurrency, how = kv_max_concurrency(run.manifest, VLLM, 100.0)
    assert concurrency == pytest.approx(facts.kv_tokens / 100.0) and how.startswith("KV cache of")


def test_an_all_openai_run_reads_each_vllm_serve_through_its_own_tree(openai_server, demo_checkpoint, tmp_path,
                                                                     store) -> None:
    """Two real vllm serve processes (the session's and one of this test's): no Triton at all; each
    variant's memory and vllm:* series come from its own server."""
    from services.client.variants import parse_variant_spec, resolve_variants
    from services.serving.openai_server import start_openai_server

    other = start_openai_server(demo_checkpoint, "bf16", model_name="demo-detector-other", workdir=tmp_path / "b")
    try:
        variants = resolve_variants([
            parse_variant_spec(f"kind=openai,url={s.base_url},model={s.model_name},label={label}")
            for s, label in ((openai_server, "a"), (other, "b"))])
        outcome = run_benchmark(config(variants, requests=2, max_tokens=16), store)
        assert outcome.status == "completed", outcome.reason
        rows = store.get_samples(outcome.run_id)
        pids = {k: {r.pid for r in rows if r.kind == "host" and r.version == k} for k in "ab"}
        assert pids["a"] and pids["a"] <= _tree(openai_server.pid)
        assert pids["b"] and pids["b"] <= _tree(other.pid) and not pids["a"] & pids["b"]
        assert all(r.memory_bytes > 0 for r in rows if r.kind == "host")
        running = {r.version for r in rows if r.kind == "vllm:num_requests_running"}
        assert running == {"a", "b"}
        timings = {(r["version"], r["metric"]): r["count"] for r in store.get_server_timings(outcome.run_id)}
        assert timings[("a", "ttft")] == timings[("b", "ttft")] == 2
        quantization = store.get_run(outcome.run_id).manifest["quantization"]
        assert quantization["a"]["kv_cache_tokens"] > 0 and quantization["b"]["kv_cache_tokens"] > 0
    finally:
        other.stop()
