"""The sidebar tells the user when the gRPC / metrics addresses are another server's (issue 14): the
app in AppTest with QWEN_TRITON_URL naming one real server and QWEN_TRITON_GRPC_URL another."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_the_sidebar_warns_when_the_grpc_address_is_another_servers(triton_server, own_triton_server, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    monkeypatch.setenv("QWEN_TRITON_GRPC_URL", own_triton_server.grpc_url)
    monkeypatch.setenv("QWEN_TRITON_METRICS_URL", triton_server.metrics_url)
    monkeypatch.delenv("QWEN_TRITON_PROTOCOL", raising=False)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.sidebar.warning]
    assert any("do not belong to the server at the HTTP address" in w and str(own_triton_server.pid) in w
               for w in warnings), warnings

    monkeypatch.setenv("QWEN_TRITON_GRPC_URL", triton_server.grpc_url)  # now all one server's
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert not any("do not belong" in w.value for w in at.sidebar.warning)
