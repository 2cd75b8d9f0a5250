"""The server's timings in the comparison, the verdict and the report, on a stored run whose
vllm:* readings and burst flags are written here (synthetic: the A/A test in test_aa_timings.py
produces real ones on the vLLM engine)."""

from __future__ import annotations

from services.bench.sample_series import SampleRow
from services.bench.server_timings import server_timings, timing_rows
from services.compare.comparison import compare_run
from services.compare.export import summary_rows
from services.compare.report import report_html, server_notes, server_rows
from services.compare.verdict import judged_difference
from tests.compare.support import store_paired_run, truth_of

BOUNDS = (0.005, 0.01, 0.02, 0.04, float("inf"))


def histogram_rows(t: float, version: str, name: str, cumulative: tuple[int, ...], total: float) -> list[SampleRow]:
    rows = [SampleRow(t_wall=1000.0 + t, t_mono=t, source="triton", model="qwen", version=version, memory_bytes=None,
                      kind=f'{name}_bucket{{le="{"+Inf" if b == float("inf") else b}"}}', value=float(c))
            for b, c in zip(BOUNDS, cumulative)]
    rows.append(SampleRow(t_wall=1000.0 + t, t_mono=t, source="triton", model="qwen", version=version,
                          memory_bytes=None, kind=f"{name}_count", value=float(cumulative[-1])))
    rows.append(SampleRow(t_wall=1000.0 + t, t_mono=t, source="triton", model="qwen", version=version,
                          memory_bytes=None, kind=f"{name}_sum", value=total))
    return rows


def add_server_readings(store, run: int, after: dict[str, tuple[int, ...]]) -> None:
    """Readings at t=10 (nothing yet) and t=20 (``after`` per version, for TTFT, TPOT and e2e alike)."""
    rows = []
    for v, cum in after.items():
        for name in ("vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds",
                     "vllm:e2e_request_latency_seconds"):
            rows += histogram_rows(10.0, v, name, (0, 0, 0, 0, 0), 0.0)
            rows += histogram_rows(20.0, v, name, cum, 0.01 * cum[-1])
    store.add_samples(run, rows)
    store.set_server_timings(run, timing_rows(server_timings(store.get_samples(run, 10.0, 20.0), 10.0, 20.0)))


def mark_bursts(store, run: int, share: float) -> None:
    reqs = [r for r in store.get_requests(run) if not r.warmup and r.ok]
    store.set_bursts(run, {r.seq: i < share * len(reqs) for i, r in enumerate(reqs)})


def test_bursts_make_the_verdict_judge_ttft_and_tpot_on_the_server(store):
    run = store_paired_run(store)  # the client says v2's TTFT is 5 ms faster on every pair: significant
    mark_bursts(store, run, 0.5)
    add_server_readings(store, run, {"1": (10, 40, 40, 40, 40), "2": (10, 40, 40, 40, 40)})  # the server: the same
    c = compare_run(store, run, truth=truth_of)
    assert c.metric("ttft_ms").difference.significant is True
    assert c.server.client_unreliable and c.server.reason is None
    for metric in ("ttft_ms", "tpot_ms"):
        d = judged_difference(c.metric(metric), c.server)
        assert d.metric == f"server_{metric[:4]}" and d.diff == 0 and d.significant is False
    assert c.verdict.ttft.startswith("Median time to first token (TTFT) as the server measured it")
    assert "Judged on the server's numbers" in c.verdict.ttft and "arrived in bursts" in c.verdict.ttft
    # end-to-end latency stays the client's (its last token is when the answer was complete)
    assert judged_difference(c.metric("latency_ms"), c.server) is c.metric("latency_ms").difference
    rows = server_rows(c)
    assert [r[0] for r in rows] == ["time to first token (TTFT)", "time per output token (TPOT, inter-token)",
                                    "end-to-end latency"] and rows[0][1:3] == [40, 40]
    assert any("unreliable" in n for n in server_notes(c))
    html = report_html(c)
    assert "id='server-timings'" in html and "the verdict judges them on the server" in html
    assert sum(1 for r in summary_rows(c) if r["section"] == "server timings") == 3


def test_without_bursts_the_client_judges_and_the_server_stands_beside(store):
    run = store_paired_run(store)
    mark_bursts(store, run, 0.0)
    add_server_readings(store, run, {"1": (0, 0, 0, 40, 40), "2": (0, 40, 40, 40, 40)})  # v2 faster in the server too, buckets apart
    c = compare_run(store, run, truth=truth_of)
    assert not c.server.client_unreliable
    assert judged_difference(c.metric("ttft_ms"), c.server) is c.metric("ttft_ms").difference
    assert c.verdict.ttft.startswith("Median time to first token (TTFT): fp8 (v2) 15.0 ms vs bf16 (v1) 20.0 ms")
    assert "as the server measured it" in c.verdict.ttft and "significant: the 98.3% CI" in c.verdict.ttft
    assert c.server.metric("ttft").difference.diff < 0 and c.server.metric("ttft").difference.significant


def test_bursts_without_server_timings_say_neither_can_be_trusted(store):
    run = store_paired_run(store)  # no vllm:* readings: a transformers server, or a run from before
    mark_bursts(store, run, 0.5)
    c = compare_run(store, run, truth=truth_of)
    assert c.server.reason.startswith("unknown") and c.server.metrics == [] and server_rows(c) == []
    assert judged_difference(c.metric("ttft_ms"), c.server) is c.metric("ttft_ms").difference
    assert "Unreliable: 4 of 8 requests of bf16 (v1) and 4 of 7 of fp8 (v2) arrived in bursts" in c.verdict.ttft
    assert any("neither can be trusted" in n for n in server_notes(c))
