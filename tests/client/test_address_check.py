"""Derived addresses checked to belong to one server (issue 14): two real embedded servers on
different ports, their HTTP, gRPC and metrics ports mixed."""

from __future__ import annotations

import base64

from services.client.address_check import (
    DIFFERENT,
    SAME,
    UNVERIFIED,
    AddressCheck,
    _protocol_checks,
    _read_protocols,
    check_addresses,
)
from services.client.server_target import ServerTarget
from services.client.triton_client import TritonClient


def _target(http, grpc, metrics) -> ServerTarget:
    return ServerTarget(http.http_url, grpc.grpc_url, metrics.metrics_url, "http", embedded=False,
                        checkpoint=None, repository=None, server_pid=None)


def test_mixed_ports_of_two_real_servers_are_told_apart(triton_server, own_triton_server, label_image_bytes):
    a, b = triton_server, own_triton_server
    same = check_addresses(_target(a, a, a))
    assert same.verdict == SAME and f"pid {a.pid}" in same.message
    for mixed in (_target(a, b, b), _target(a, a, b), _target(a, b, a)):
        check = check_addresses(mixed)
        assert check.verdict == DIFFERENT, check
        assert str(b.pid) in check.message and "QWEN_TRITON_GRPC_URL" in check.message

    # as for a remote host, where no listener can be seen: the models and counters tell them apart
    # once one of them has served a request
    with TritonClient(a.http_url, protocol="http", timeout_s=60) as client:
        client.detect(base64.b64encode(label_image_bytes).decode("ascii"), version="1", max_tokens=1)
    by_counters = AddressCheck(UNVERIFIED)
    assert _protocol_checks(_read_protocols(_target(a, b, b), 5.0), by_counters)
    assert by_counters.problems and any("over gRPC's address" in p for p in by_counters.problems)
    assert any("metrics page counts" in p for p in by_counters.problems)
    agreeing = AddressCheck(UNVERIFIED)
    assert _protocol_checks(_read_protocols(_target(a, a, a), 5.0), agreeing)
    assert agreeing.problems == [] and len(agreeing.evidence) == 2


def test_an_embedded_target_is_not_checked_and_an_unreachable_one_is_unverified():
    embedded = ServerTarget("127.0.0.1:1", "127.0.0.1:2", "", "http", embedded=True, checkpoint=None,
                            repository=None, server_pid=None)
    assert check_addresses(embedded).verdict == SAME
    gone = ServerTarget("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3/metrics", "http", embedded=False,
                        checkpoint=None, repository=None, server_pid=None)
    check = check_addresses(gone, timeout_s=1.0)
    assert check.verdict == UNVERIFIED and "could not all be read" in check.message
