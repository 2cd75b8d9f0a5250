"""Tests of services.client.grpc_stream against the real embedded Triton server: the pool of gRPC
streams (concurrency, reuse, idle close, interpreter exit) and the ModelReady check that keeps an
unknown version off a stream (Triton 2.51 aborts otherwise). The other gRPC tests run every
transport at once in tests/client/test_triton_client.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.client.errors import VersionNotReady
from services.client.results import Completion
from services.client.triton_client import TritonClient

pytestmark = pytest.mark.timeout(120)

VERSIONS = ("1", "2")
EXACT = {"ignore_eos": True}  # forces exactly max_tokens tokens, so counts can be asserted exactly


def test_unknown_versions_after_served_requests_on_one_grpc_stream_leave_the_server_up(own_triton_server, image_b64):
    # Triton 2.51 aborts (proto_buffer_writer.h: !byte_buffer->Valid()) when a stream request for an
    # unknown version follows a served one on the same stream; before the client checked versions
    # first, this loop killed the server within 2 to 91 pairs. One stream: the calls run one at a time.
    with TritonClient(own_triton_server.grpc_url, protocol="grpc", max_streams=1) as client:
        for _ in range(120):
            assert client.detect(image_b64, version="1", max_tokens=1, stream=True).num_output_tokens == 1
            with pytest.raises(VersionNotReady, match="is not found"):
                client.detect(image_b64, version="3", max_tokens=1, stream=True)
        assert own_triton_server.process.poll() is None
        assert client.detect(image_b64, version="2", max_tokens=1).num_output_tokens == 1


def test_concurrent_grpc_calls_complete_with_their_own_ids(triton_server):
    with TritonClient(triton_server.grpc_url, protocol="grpc") as client:
        def one(i: int) -> tuple[str, Completion]:
            rid = f"req-{i}-{uuid.uuid4().hex[:6]}"
            return rid, client.detect(None, version=VERSIONS[i % 2], max_tokens=3 + i % 4, stream=True,
                                      extra_sampling=EXACT, request_id=rid)  # text only: cheap

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(one, range(16)))
        assert len({done.request_id for _, done in results}) == 16
        for i, (rid, done) in enumerate(results):
            assert done.request_id == rid and done.version == VERSIONS[i % 2]
            assert done.num_output_tokens == done.token_responses == 3 + i % 4
            assert done.ttft_ms is not None and done.ttft_ms <= done.latency_ms
        opened = client.grpc_streams_opened
        assert 1 <= opened <= 16 and client._pool.idle == opened
        with ThreadPoolExecutor(max_workers=4) as pool:
            assert all(d.num_output_tokens == 2 for d in pool.map(
                lambda i: client.detect(None, max_tokens=2, stream=True, extra_sampling=EXACT), range(8)))
        assert client.grpc_streams_opened == opened  # idle streams are reused


def test_idle_grpc_streams_are_closed(triton_server, image_b64):
    with TritonClient(triton_server.grpc_url, protocol="grpc", idle_close_s=0.2) as client:
        client.detect(image_b64, max_tokens=2, stream=True)
        assert client._pool.idle == 1
        deadline = time.monotonic() + 5
        while client._pool.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client._pool.idle == 0
        assert client.detect(image_b64, max_tokens=2, stream=True).num_output_tokens == 2  # reopens one
        assert client.grpc_streams_opened == 2


def test_an_unclosed_grpc_client_does_not_block_interpreter_exit(triton_server, image_b64):
    script = (
        "import sys; from services.client.triton_client import TritonClient\n"
        f"c = TritonClient('grpc://{triton_server.grpc_url}')\n"
        "d = c.detect(None, max_tokens=2, stream=True)\n"
        "print(d.num_output_tokens, c._pool.idle)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "1"]  # an idle stream was open at exit
    assert time.monotonic() - started < 20
