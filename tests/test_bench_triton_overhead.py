"""``scripts/bench_triton_overhead.py`` end to end on the tiny checkpoint (a few rounds: the figures
themselves are the script's to print, not this test's to judge): it measures both transports against
the in-process engine and against the floor model on real Triton servers, splits the round trips with
the model's trace, and reports the fp8/bf16 weight ratio, in its closing JSON line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = ("Triton HTTP generate", "Triton gRPC stream")


def test_the_overhead_benchmark_reports_overheads_floor_and_breakdown(tiny_checkpoint):
    proc = subprocess.run(
        [sys.executable, "scripts/bench_triton_overhead.py", "--requests", "4", "--warmup", "1",
         "--checkpoint", str(tiny_checkpoint)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert set(report["medians_ms"]) == {"in-process engine", *TRANSPORTS}
    for name in TRANSPORTS:
        for figures in (report["paired_overhead_ms"], report["floor_overhead_ms"]):
            low, high = figures[name]["ci95"]
            assert math.isfinite(figures[name]["median"]) and low <= figures[name]["median"] <= high
        segments = report["breakdown_ms"][name]
        assert segments["engine"] > 0 and segments["transport in"] > 0 and segments["response"] > 0
        assert segments["cancel checks"] > 0  # asked once, before the prefill
    assert 0 < report["fp8_bf16_decoder_ratio"] < 1
    assert "the floor:" in out and "what this project's model adds to the floor" in out
    assert "Triton overhead at the median" in out
