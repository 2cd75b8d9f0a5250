"""Tests of services.client.server_status against the real embedded Triton server (tests/conftest.py)."""

from __future__ import annotations

import re

import pytest

from services.client.server_status import check_server
from services.client.triton_client import TritonClient
from tests.ports import closed_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client(triton_server):
    with TritonClient(triton_server.http_url, timeout_s=60) as c:
        yield c


def test_check_server_reports_health_and_both_versions(client):
    status = check_server(client)
    assert status.error is None and status.live and status.ready
    assert re.fullmatch(r"\d+\.\d+\.\d+", status.server_version)
    assert [(v.version, v.state) for v in status.versions] == [("1", "READY"), ("2", "READY")]
    assert status.ready_versions == ["1", "2"]


def test_check_server_of_a_model_the_server_lacks_lists_the_versions_as_missing(triton_server):
    with TritonClient(triton_server.http_url, model="no-such-model") as c:
        status = check_server(c)
    assert status.error is None and status.ready
    assert [(v.version, v.state) for v in status.versions] == [("1", "MISSING"), ("2", "MISSING")]
    assert "not in the server's model repository index" in status.version("1").reason


def test_check_server_on_a_closed_port_keeps_the_clients_message():
    with TritonClient(f"127.0.0.1:{closed_port()}", timeout_s=5) as c:
        status = check_server(c)
    assert not status.live and status.versions == []
    assert status.error.startswith(f"The Triton server at {c.url} is not reachable")
