"""torch's CUDA memory counters on Triton's metrics port, per model version (needs an NVIDIA GPU).

The embedded server is started with ``device="cuda"``: each version's model process publishes
``qwen_engine_torch_memory_bytes{version, kind}`` with kind ``allocated``, ``reserved`` and
``max_allocated`` (torch.cuda.memory_allocated / memory_reserved / max_memory_allocated of its
device), set after load and refreshed after each request, and records the after-load reading in its
``engine_report.json`` (``torch_memory_after_load``). What was allocated after load holds the
weights, so it is at least the ``qwen_engine_weight_bytes{part="model"}`` gauge. On a machine without
CUDA the whole module is skipped (``tests/test_triton_backend_model.py`` covers the CPU side).
"""

from __future__ import annotations

import base64

import pytest
import requests

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs an NVIDIA GPU: torch.cuda.is_available() is False on this machine"),
]

TORCH_GAUGE = "qwen_engine_torch_memory_bytes"
KINDS = ("allocated", "reserved", "max_allocated")
VERSIONS = ("1", "2")


def gauges(server) -> dict[tuple[str, str, str], float]:
    """{(family, version, kind or part): value} of the model's own gauges."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    text = requests.get(server.metrics_url, timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name in (TORCH_GAUGE, "qwen_engine_weight_bytes"):
            for s in family.samples:
                out[(family.name, s.labels["version"], s.labels.get("kind") or s.labels.get("part"))] = s.value
    return out


@pytest.fixture(scope="module")
def cuda_server(tmp_path_factory, tiny_checkpoint):
    from services.serving.embedded_triton import start_embedded_triton

    server = start_embedded_triton(tiny_checkpoint, workdir=tmp_path_factory.mktemp("triton-cuda"),
                                   ports={"http": None, "grpc": None, "metrics": None}, device="cuda")
    yield server
    server.stop()


def test_torch_memory_gauges_are_published_per_version_after_load(cuda_server):
    found = gauges(cuda_server)
    for version in VERSIONS:
        report = cuda_server.engine_report(version)
        assert report["device"].startswith("cuda")
        after_load = report["torch_memory_after_load"]
        assert set(after_load) == set(KINDS)
        assert all(isinstance(after_load[k], int) and after_load[k] > 0 for k in KINDS)
        assert after_load["reserved"] >= after_load["allocated"]
        assert after_load["max_allocated"] >= after_load["allocated"]
        for kind in KINDS:
            assert found[(TORCH_GAUGE, version, kind)] > 0, (version, kind)
        weights = found[("qwen_engine_weight_bytes", version, "model")]
        # The weights live in what torch allocated after load (plus buffers, caches, graph pools).
        assert after_load["allocated"] >= weights > 0
        assert found[(TORCH_GAUGE, version, "allocated")] >= weights


def test_torch_memory_gauges_are_refreshed_after_requests(cuda_server, label_image_bytes):
    from services.client.triton_client import TritonClient

    image = base64.b64encode(label_image_bytes).decode()
    with TritonClient(cuda_server.http_url, protocol="http") as client:
        for version in VERSIONS:
            done = client.detect(image, version=version, max_tokens=4)
            assert done.num_output_tokens >= 1
    found = gauges(cuda_server)
    for version in VERSIONS:
        after_load = cuda_server.engine_report(version)["torch_memory_after_load"]
        now = {kind: found[(TORCH_GAUGE, version, kind)] for kind in KINDS}
        # The peak can only grow, and a request's activations (the image's vision tokens) add to it.
        assert now["max_allocated"] >= after_load["max_allocated"]
        assert now["max_allocated"] >= now["allocated"] > 0
        assert now["reserved"] >= now["allocated"]
