"""services.compare.recommendation on a sweep stored in a real SQLite run store: the hand-made rows
make fp8 serve twice the images per second; both versions find the same tables on nine images and
differ on the tenth. Scored against its ground truth the recommendation is fp8; scored against a ground
truth altered on that one image (bf16's box becomes the truth), fp8 loses 0.1 of mean IoU, beyond the
tolerance, and the recommendation flips to bf16. Nothing is mocked: the comparison reads the rows."""

from __future__ import annotations

import pytest

from services.bench.goodput import LatencyTargets, level_stats
from services.bench.stats import RequestRecord
from services.bench.store import LevelRow, RunStore
from services.compare.capacity import capacity_table, level_table, sweep_json, sweep_result
from services.compare.recommendation import decide_run, recommend
from services.core.boxes import Box, format_answer

T1, T2, ELSEWHERE = Box(0, 0, 100, 100), Box(500, 500, 600, 600), Box(800, 800, 900, 900)
IMAGES = [f"x{i}" for i in range(10)]
TARGETS = LatencyTargets(ttft_ms=100.0, tpot_ms=50.0, e2e_ms=500.0)
LATENCY = {"1": 200.0, "2": 100.0}  # ms, one request at a time: 5 and 10 requests/s


def store_sweep(store: RunStore) -> int:
    rid = store.create_run({"versions": ["1", "2"], "model": "qwen", "image_set": {"kind": "uploaded"},
                            "sweep": {"load": "closed", "levels": [1, 2], "targets": TARGETS.to_dict()}},
                           {"gpu": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}})
    seq, idx, t = 0, 0, 0.0
    for value in (1, 2):
        for v in ("1", "2"):
            records = []
            for image in IMAGES:
                box = T2 if (v == "2" and image == "x9") else T1
                lat = LATENCY[v]
                r = RequestRecord(seq=seq, version=v, image_id=image, send_ns=int(t * 1e9),
                                  recv_ns=int((t + lat / 1e3) * 1e9), latency_ms=lat, ttft_ms=20.0, output_tokens=11,
                                  answer=format_answer([box]), level=idx)
                store.add_request(rid, r)
                records.append(r)
                seq, t = seq + 1, t + lat / 1e3
            store.add_level(LevelRow(rid, idx, v, "closed", value, 0, "completed",
                                     stats=level_stats(records, TARGETS).to_dict()))
            idx += 1
    store.finish_run(rid, "completed")
    return rid


def truth(run, ids):
    return {i: [ELSEWHERE if i == "x9" else T1] for i in ids}


def altered_truth(run, ids):  # the tenth image's truth moved onto bf16's answer
    return {i: [T1] for i in ids}


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path)
    yield s
    s.close()


def test_fp8_is_recommended_when_it_is_faster_and_finds_the_same_tables(store):
    rid = store_sweep(store)
    d = decide_run(store, rid, price_per_gpu_hour=3.6, demand_rps=25, truth=truth)
    v1, v2 = d.sweep.versions["1"], d.sweep.versions["2"]
    assert v1.capacity_rps == pytest.approx(5.0) and v2.capacity_rps == pytest.approx(10.0)
    assert v2.cost_per_1k_images == pytest.approx(0.1) and v1.cost_per_1k_images == pytest.approx(0.2)
    assert (v1.gpus_needed, v2.gpus_needed) == (5, 3)
    rec = d.recommendation
    assert rec.decision == "deploy" and rec.winner == "2" and not rec.accuracy_override
    assert rec.sentence.startswith("Deploy fp8: at your targets it serves 10.00 images/s per GPU against 5.00, "
                                   "$0.1000 against $0.2000 per 1,000 images, and finds the same tables: "
                                   "mean IoU fp8 minus bf16 +0.000")
    assert any("Capacity intervals" in n for n in rec.not_measured)
    out = sweep_json(d.sweep, rec.sentence)
    assert out["versions"]["2"]["capacity_rps"] == 10.0 and out["recommendation"] == rec.sentence
    assert len(level_table(d.sweep)[1]) == 4 and len(capacity_table(d.sweep)[1]) == 2


def test_the_recommendation_flips_when_accuracy_drops_beyond_the_tolerance(store):
    rid = store_sweep(store)
    rec = decide_run(store, rid, truth=altered_truth).recommendation
    assert rec.decision == "deploy" and rec.winner == "1" and rec.accuracy_override
    assert rec.sentence.startswith("Deploy bf16: fp8 loses accuracy beyond the tolerance of 0.020 "
                                   "(mean IoU fp8 minus bf16 -0.100")
    assert "fp8 serves 10.00 images/s against 5.00" in rec.sentence
    # a looser tolerance lets speed decide again
    assert decide_run(store, rid, truth=altered_truth, tolerance=0.2).recommendation.winner == "2"


def test_no_clear_winner_without_a_sweep_or_when_capacities_are_close(store):
    rid = store_sweep(store)
    sweep = sweep_result(store, rid)
    assert recommend(None, None).decision == "no clear winner"
    assert "capacity was not measured" in recommend(None, None).sentence
    sweep.versions["1"].capacity.rps = 9.8  # within 5% of 10: one unrepeated sweep cannot tell them apart
    rec = recommend(sweep, None)
    assert rec.decision == "no clear winner" and "within 5%" in rec.sentence
    sweep.versions["1"].capacity.rps, sweep.versions["2"].capacity.rps = 0.0, 0.0
    assert "neither version met the targets" in recommend(sweep, None).sentence


def test_the_report_leads_with_the_recommendation_then_shows_capacity_and_cost(store):
    from services.compare.capacity_report import report_decision
    from services.compare.comparison import compare_run
    from services.compare.report import report_html
    from tests.compare.support import check_self_contained

    rid = store_sweep(store)
    c = compare_run(store, rid, truth=truth)
    decision = report_decision(store, c, price_per_gpu_hour=3.6)
    assert decision[1].winner == "2"
    text = report_html(c, [], decision)
    check_self_contained(text)
    assert text.index("id='recommendation'") < text.index("id='verdict'") < text.index("Capacity and cost")
    assert "Deploy fp8: at your targets it serves 10.00 images/s per GPU against 5.00" in text
    for div in ("fig-capacity", "fig-goodput", "fig-cost"):
        assert f'id="{div}"' in text
    assert "$0.1000" in text  # fp8's cost per 1,000 images in the capacity table


def test_kv_cache_room_is_read_from_the_manifest_else_unknown():
    from services.compare.capacity import kv_max_concurrency

    gauges = {"quantization": {"1": {"source": "metrics", "kv_cache_tokens": 12000.0}}}
    assert kv_max_concurrency(gauges, "1", 400.0)[0] == pytest.approx(30.0)  # 12,000 tokens / 400 per request
    stated = {"quantization": {"1": {"kv_cache_max_concurrency": 7.5}}}
    assert kv_max_concurrency(stated, "1", 400.0)[0] == 7.5 and "states" in kv_max_concurrency(stated, "1", None)[1]
    value, note = kv_max_concurrency({"quantization": {"1": "unknown"}}, "1", 400.0)
    assert value is None and note.startswith("unknown")
