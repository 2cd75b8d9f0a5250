"""The memory-bandwidth floor of decode: the GPU table, the floor by hand, the run's GPU."""

from __future__ import annotations

import pytest

from services.compare.decode_floor import decode_floor, known_gpu, run_gpu


def test_known_gpus_match_the_most_specific_entry():
    assert known_gpu("NVIDIA H100 80GB HBM3").measured_bytes_per_s == 3.0e12
    assert known_gpu("NVIDIA H100 80GB HBM3").datasheet_bytes_per_s == 3.35e12
    assert known_gpu("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert known_gpu("NVIDIA A100-SXM4-80GB").name == "A100 SXM 80GB"
    assert known_gpu("NVIDIA L40S").name == "L40S"
    assert known_gpu("NVIDIA L4").name == "L4"
    assert known_gpu("Some Future GPU") is None and known_gpu(None) is None


def test_decode_floor_by_hand():
    f = decode_floor([11.0, 11.2, 11.1], 16_600_000_000, 13_000_000_000, "NVIDIA H100 80GB HBM3", True)
    assert f.applicable is True
    assert f.bandwidth_bytes_per_s == 3.0e12 and "measured" in f.bandwidth_source
    assert f.floor_ms == pytest.approx(16.6e9 / 3.0e12 * 1e3)  # 5.533 ms
    assert f.measured_tpot_ms == pytest.approx(11.1)
    assert f.fraction == pytest.approx(5.5333 / 11.1, rel=1e-4)
    assert f.lower_floor_ms == pytest.approx(13e9 / 3e12 * 1e3)
    recorded = decode_floor([10.0], 16.6e9, None, "NVIDIA H100 80GB HBM3", True, measured_bandwidth=2.5e12)
    assert recorded.floor_ms == pytest.approx(6.64) and "manifest" in recorded.bandwidth_source


def test_decode_floor_not_applicable_on_cpu_and_unknown_without_gpu_or_weights():
    cpu = decode_floor([50.0], 1_000_000, None, None, False)
    assert cpu.applicable is False and cpu.reason.startswith("not applicable") and cpu.floor_ms is None
    unknown_gpu = decode_floor([5.0], 16e9, None, None, None)
    assert unknown_gpu.applicable is None and "GPU was not recorded" in unknown_gpu.reason
    odd_gpu = decode_floor([5.0], 16e9, None, "Mystery X1", True)
    assert "Mystery X1 is not in the table" in odd_gpu.reason and odd_gpu.fraction is None
    no_weights = decode_floor([5.0], None, None, "NVIDIA H200", True)
    assert no_weights.applicable is None and "weight bytes" in no_weights.reason


def test_run_gpu_reads_the_manifest():
    h100 = {"target": {"embedded": True}, "gpu": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}}
    assert run_gpu(h100, "1") == ("NVIDIA H100 80GB HBM3", True)
    assert run_gpu({"target": {"embedded": True}, "gpu": "none"}, "1") == (None, False)
    assert run_gpu({"quantization": {"1": {"device": "cpu"}}}, "1") == (None, False)
    # an external server: the benchmark host's GPUs say nothing about the server's
    assert run_gpu({"target": {"embedded": False}, "gpu": "none"}, "1") == (None, None)
    remote = {"target": {"embedded": False, "http_url": "gpu-host:8000"}, "gpu": "none", "client": {"host": "vm"}}
    assert run_gpu(remote, "1") == (None, None)
    # ...unless it listens on this very host (a CLI run with --url localhost:8000 on a CPU machine)
    for url in ("127.0.0.1:8000", "http://localhost:8000", "vm:8000"):
        local = {"target": {"embedded": False, "http_url": url}, "gpu": "none", "client": {"host": "vm"}}
        assert run_gpu(local, "1") == (None, False), url
    local_gpu = {"target": {"embedded": False, "http_url": "127.0.0.1:8000"}, "client": {"host": "vm"},
                 "gpu": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}}
    assert run_gpu(local_gpu, "1") == ("NVIDIA H100 80GB HBM3", True)
