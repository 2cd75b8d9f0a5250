"""Shared by the tests of services.compare: hand-made requests and a stored paired run whose
numbers are chosen so that every expected value can be computed by hand, and the check that a report
HTML is self-contained."""

from __future__ import annotations

import re

from services.bench.sample_series import SampleRow
from services.bench.stats import RequestRecord
from services.bench.store import RunStore
from services.compare.pairing import Side
from services.core.boxes import Box, format_answer

A = Side(1, "1", "bf16 (v1)")
B = Side(1, "2", "fp8 (v2)")
T1, T2 = Box(0, 0, 10, 10), Box(20, 20, 30, 30)


def req(seq, version, image_id, latency, ttft=None, tokens=None, answer="", status="ok", warmup=False):
    return RequestRecord(seq=seq, version=version, image_id=image_id, latency_ms=latency, ttft_ms=ttft,
                         output_tokens=tokens, answer=answer if status == "ok" else None, status=status,
                         error=None if status == "ok" else "boom", warmup=warmup,
                         send_ns=seq * 10**9, recv_ns=seq * 10**9 + int(latency * 1e6))


WEIGHTS = {"1": (16_580_000_000, 13_000_000_000), "2": (10_150_000_000, 6_500_000_000)}


def store_paired_run(store: RunStore, manifest: dict | None = None) -> int:
    """A paired run: 4 images x 2 repeats; v2 is 10 ms faster on every pair; v1 finds T1 exactly,
    v2 gives half of it; image "none" has no table and both answer without a box; one v2 request
    fails. Memory: per-process GPU samples and the weight gauges."""
    rid = store.create_run({"versions": ["1", "2"], "model": "qwen", "image_set": {"kind": "uploaded"}},
                           manifest or {"target": {"embedded": True},
                                        "gpu": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}})
    seq = 0
    for v in ("1", "2"):
        store.add_request(rid, req(seq, v, "t1", 999.0, 50.0, 10, answer=format_answer([T1]), warmup=True))
        seq += 1
    images = ["t1", "t2", "t3", "none"]
    for rep in range(2):
        for i, image in enumerate(images):
            base = 100.0 + 10 * i + rep
            ans1 = "" if image == "none" else format_answer([T1])
            ans2 = "" if image == "none" else format_answer([Box(0, 0, 10, 5)])
            store.add_request(rid, req(seq, "1", image, base, 20.0, 11, answer=ans1))
            failed = rep == 1 and image == "t3"
            store.add_request(rid, req(seq + 1, "2", image, base - 10, 15.0, 11, answer=ans2,
                                        status="error" if failed else "ok"))
            seq += 2
    rows = []
    for t in range(5):
        for v, mem in (("1", 17_000_000_000 + t * 10**8), ("2", 10_500_000_000 + t * 10**8)):
            rows.append(SampleRow(t_wall=1000.0 + t, t_mono=float(t), source="nvml", kind="gpu", memory_bytes=mem,
                                  gpu="0", model="qwen", version=v, pid=int(v)))
            model_w, linear_w = WEIGHTS[v]
            for part, value in (("model", model_w), ("decoder_linear", linear_w)):
                rows.append(SampleRow(t_wall=1000.0 + t, t_mono=float(t), source="triton",
                                      kind=f'qwen_engine_weight_bytes{{mode="x",part="{part}",precision="p"}}',
                                      memory_bytes=value, model="qwen", version=v))
        rows.append(SampleRow(t_wall=1000.0 + t, t_mono=float(t), source="nvml", kind="device",
                              memory_bytes=30_000_000_000, gpu="0"))
    store.add_samples(rid, rows)
    store.finish_run(rid, "completed")
    return rid


def truth_of(run, ids):
    return {i: ([] if i == "none" else [T1]) for i in ids}


def check_self_contained(text: str) -> None:
    """One inline copy of plotly.js, no script or stylesheet fetched from anywhere."""
    assert text.count("<script") >= 2
    assert len(re.findall(r"plotly\.js v\d", text)) == 1  # the library's banner, inlined exactly once
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"<link[^>]+href=", text)
    assert not re.search(r"""<img[^>]+src=["']?http""", text)
