"""Choosing the server: external URLs in every accepted form, and the embedded default."""

from __future__ import annotations

import pytest

from services.client.server_target import current_target, external_target, split_host_port


@pytest.mark.parametrize("url, expected", [
    ("gpu-host", ("gpu-host", 8000)), ("gpu-host:9000", ("gpu-host", 9000)),
    ("http://10.0.0.5:8000", ("10.0.0.5", 8000)), ("grpc://gpu:8001", ("gpu", 8001)),
])
def test_addresses(url, expected):
    assert split_host_port(url, 8000) == expected


def test_external_target_derives_grpc_and_metrics(monkeypatch):
    monkeypatch.delenv("QWEN_TRITON_GRPC_URL", raising=False)
    monkeypatch.delenv("QWEN_TRITON_METRICS_URL", raising=False)
    t = external_target("http://gpu-host:8000")
    assert (t.http_url, t.grpc_url, t.metrics_url) == ("gpu-host:8000", "gpu-host:8001", "http://gpu-host:8002/metrics")
    assert not t.embedded and t.checkpoint is None
    g = external_target("grpc://gpu-host:9001")
    assert g.protocol == "grpc" and g.grpc_url == "gpu-host:9001"


def test_bad_address_is_refused():
    with pytest.raises(ValueError, match="not a server address"):
        split_host_port("http://", 8000)


def test_env_url_wins_over_embedded(monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", "remote:8000")
    assert current_target().http_url == "remote:8000"
