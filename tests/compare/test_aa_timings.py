"""A/A on the real vLLM engine: two versions serving the same bf16 engine (version 2's model.json is
version 1's), a short paired benchmark on unseen images, compared: no significant difference in TTFT,
TPOT or latency may be claimed, judged where the client's timings are unreliable on the server's."""

from __future__ import annotations

import time

import pytest

from services.bench import server_figures
from services.bench.runner import BenchmarkConfig, run_benchmark
from services.bench.server_timings import HISTOGRAM_METRICS
from services.bench.store import RunStore
from services.client.server_target import ServerTarget
from services.compare.comparison import compare_run
from services.compare.report import report_html
from services.compare.verdict import judged_difference
from services.core.versions import version_label
from services.image_sets.image_set import ImageSetSpec
from tests.conftest import FREE_PORTS, require_vllm

REQUESTS = 10
MAX_TOKENS = 32


@pytest.mark.vllm
@pytest.mark.server
@pytest.mark.timeout(1800)
def test_two_versions_of_one_bf16_engine_differ_in_nothing_significant(tmp_path, demo_checkpoint):
    require_vllm()
    from services.serving.embedded_triton import start_embedded_triton

    started = time.monotonic()
    server = start_embedded_triton(demo_checkpoint, workdir=tmp_path / "triton", ports=FREE_PORTS, engine="vllm",
                                   versions={"1": "bf16", "2": "bf16"})
    print(f"\n[A/A vllm server] ready in {time.monotonic() - started:.0f} s")
    try:
        model = server.repository / "qwen"
        assert (model / "1" / "model.json").read_text() == (model / "2" / "model.json").read_text()
        target = ServerTarget(server.http_url, server.grpc_url, server.metrics_url, "grpc", embedded=True,
                              checkpoint=None, repository=server.repository, server_pid=server.pid)
        config = BenchmarkConfig(versions=("1", "2"), image_set=ImageSetSpec(kind="generated", count=REQUESTS, seed=5),
                                 requests=REQUESTS, warmup=2, max_tokens=MAX_TOKENS,
                                 extra_sampling={"ignore_eos": True}, timeout_s=120.0)
        with RunStore(tmp_path / "db") as store:
            outcome = run_benchmark(config, store, target)
            assert outcome.status == "completed", outcome.reason
            run = outcome.run_id
            # the vllm:* series are stored with the samples; the server timings with the run
            assert any(r.kind.startswith("vllm:time_to_first_token_seconds_bucket") and r.value is not None
                       for r in store.get_samples(run))
            rows = {(r["version"], r["metric"]): r for r in store.get_server_timings(run)}
            assert set(rows) == {(v, m) for v in ("1", "2") for m in HISTOGRAM_METRICS}
            for v in ("1", "2"):  # exactly the measured requests: warm-up outside the window
                assert rows[(v, "ttft")]["count"] == REQUESTS and rows[(v, "e2e")]["count"] == REQUESTS
                assert rows[(v, "tpot")]["count"] == REQUESTS * (MAX_TOKENS - 1)
            requests = store.get_requests(run, include_warmup=False)
            for r in requests:  # every chunk's token count is stored; several tokens in a chunk is a burst
                assert r.chunk_tokens and len(r.chunk_tokens) == len(r.chunk_ns) and sum(r.chunk_tokens) == MAX_TOKENS
                assert r.bursty is not None
                if max(r.chunk_tokens) > 1:
                    assert r.bursty
            bursts = sum(1 for r in requests if r.bursty)
            # the Benchmark page's charts of the stored vllm:* series: tokens/s and percentiles per version
            samples = store.samples_frame(run)
            rate = server_figures.generation_rate_figure(samples)
            assert {t.name for t in rate.data} == {version_label("1"), version_label("2")}
            assert all(max(t.y) > 0 for t in rate.data)
            pct = server_figures.server_percentile_figure(samples)
            assert {t.name for t in pct.data} >= {f"{version_label(v)} p50" for v in ("1", "2")}
            for (v, m), r in sorted(rows.items()):
                print(f"[A/A] server v{v} {m}: n {r['count']}, mean {r['mean_ms']:.2f} ms, p50 {r['p50_ms']:.2f}, "
                      f"p90 {r['p90_ms']:.2f}, p99 {r['p99_ms']:.2f}")
            c = compare_run(store, run)
        print(f"[A/A] {bursts} of {len(requests)} requests arrived in bursts; "
              f"client unreliable: {c.server.client_unreliable}")
        for line in c.verdict.lines[1:4]:
            print("[A/A]", line)
        for m in c.latency:
            print(f"[A/A] client {m.metric}: {m.difference}")
        assert c.server.reason is None
        assert "id='server-timings'" in report_html(c)
        for metric in ("latency_ms", "ttft_ms", "tpot_ms"):
            d = judged_difference(c.metric(metric), c.server)
            assert d.significant is False, f"{metric}: {d}"
    finally:
        server.stop()
