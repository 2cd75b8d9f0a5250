"""Tests of services.client.triton_client against the real embedded Triton server (tests/conftest.py).

Every transport (HTTP generate, HTTP generate_stream, gRPC stream) is run against both versions of
``qwen``; errors are caused for real (unknown version, corrupt image, closed port, unknown host,
killed server, missing input, tiny timeout). What belongs to one transport alone is tested beside
its module: tests/client/test_http_generate.py (faults inside a 200 stream),
tests/client/test_grpc_stream.py (the stream pool, the ModelReady check). The test that gives up on requests and kills the server uses ``own_triton_server``:
the embedded model does not survive a stream cancelled mid-generation (its version's worker thread
dies), so no cancelled stream may touch the shared server.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
import uuid

import pytest
import requests

from services.core.prompt import build_prompt
from services.client.errors import (
    BadRequest,
    InferenceError,
    RequestTimeout,
    ServerUnreachable,
    VersionNotReady,
)
from services.client.results import Completion
from services.client.triton_client import TritonClient, parse_url
from tests.ports import closed_port

pytestmark = pytest.mark.timeout(120)

# (protocol, stream): the three transports of detect
TRANSPORTS = {
    "http-generate": ("http", False),
    "http-generate_stream": ("http", True),
    "grpc-stream": ("grpc", True),
}
VERSIONS = ("1", "2")
EXACT = {"ignore_eos": True}  # forces exactly max_tokens tokens, so counts can be asserted exactly


@pytest.fixture(scope="module")
def clients(triton_server, image_b64):
    """One client per protocol on the shared server, each version warmed up once."""
    made = {
        "http": TritonClient(triton_server.http_url, protocol="http"),
        "grpc": TritonClient(f"grpc://{triton_server.grpc_url}"),
    }
    for version in VERSIONS:
        made["http"].detect(image_b64, version=version, max_tokens=2)
    made["grpc"].detect(image_b64, max_tokens=2, stream=True)  # opens the pool's first stream
    yield made
    for client in made.values():
        client.close()


def detect(clients, transport: str, image_b64, **kwargs) -> Completion:
    protocol, stream = TRANSPORTS[transport]
    return clients[protocol].detect(image_b64, stream=stream, **kwargs)


# --------------------------------------------------------------------------- URLs and bodies


def test_parse_url_accepts_the_three_forms_and_refuses_conflicts():
    assert parse_url("127.0.0.1:8000") == ("127.0.0.1:8000", "http")
    assert parse_url("localhost:8001", "grpc") == ("localhost:8001", "grpc")
    assert parse_url("http://triton:8000/") == ("triton:8000", "http")
    assert parse_url("grpc://triton:8001") == ("triton:8001", "grpc")
    assert parse_url("GRPC://triton:8001", "grpc") == ("triton:8001", "grpc")
    for bad, protocol in (("grpc://h:1", "http"), ("https://h:1", None), ("h:1/v2", None), ("", None),
                          ("h:1", "websocket")):
        with pytest.raises(ValueError):
            parse_url(bad, protocol)


def test_request_body_always_carries_max_tokens_and_the_return_flags(image_b64):
    import json

    client = TritonClient("127.0.0.1:1")
    body = client.request_body(image_b64, stream=True, extra_sampling={"top_p": 0.9})
    assert body["text_input"] == build_prompt()
    assert body["image"] == [image_b64]
    assert json.loads(body["sampling_parameters"]) == {"max_tokens": 128, "temperature": 0.0, "top_p": 0.9}
    assert body["stream"] is True and body["exclude_input_in_output"] is True
    assert all(body[f] is True for f in ("return_finish_reason", "return_num_input_tokens",
                                         "return_num_output_tokens"))
    assert "image" not in client.request_body(None) and "<|image_pad|>" not in client.request_body(None)["text_input"]
    with pytest.raises(ValueError):
        client.request_body(image_b64, extra_sampling={"max_tokens": 5})
    with pytest.raises(ValueError):
        client.request_body(image_b64, max_tokens=0)
    with pytest.raises(TypeError):
        client.request_body(b"raw bytes")  # type: ignore[arg-type]




# --------------------------------------------------------------------------- server and versions


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_info_versions_and_config(clients, triton_server, protocol):
    client = clients[protocol]
    info = client.server_info()
    expected = requests.get(f"http://{triton_server.http_url}/v2", timeout=5).json()
    assert info.live and info.ready
    assert info.name == "triton" and info.version == expected["version"]
    assert "model_repository" in info.extensions
    states = client.versions()
    assert [(v.model, v.version, v.state) for v in states] == [("qwen", "1", "READY"), ("qwen", "2", "READY")]
    assert all(v.ready for v in states)
    assert client.is_model_ready("1") and client.is_model_ready("2") and not client.is_model_ready("3")
    config = client.model_config()
    assert config["name"] == "qwen"
    assert config["model_transaction_policy"]["decoupled"] is True
    assert {i["name"] for i in config["input"]} >= {"text_input", "image", "sampling_parameters"}
    with pytest.raises(VersionNotReady, match="version 3"):
        client.model_config("3")


def test_from_settings_reads_the_url_and_protocol(triton_server, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", f"grpc://{triton_server.grpc_url}")
    monkeypatch.setenv("QWEN_TRITON_PROTOCOL", "http")  # the URL's scheme decides
    with TritonClient.from_settings(timeout_s=10) as client:
        assert client.url == f"grpc://{triton_server.grpc_url}" and client.timeout_s == 10
        assert client.server_info().ready
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)  # bare host:port is the HTTP address
    monkeypatch.setenv("QWEN_TRITON_GRPC_URL", triton_server.grpc_url)
    monkeypatch.setenv("QWEN_TRITON_PROTOCOL", "grpc")
    with TritonClient.from_settings() as client:
        assert client.url == f"grpc://{triton_server.grpc_url}" and client.versions()
    monkeypatch.setenv("QWEN_TRITON_URL", f"http://{triton_server.http_url}")
    monkeypatch.setenv("QWEN_TRITON_PROTOCOL", "http")
    with TritonClient.from_settings() as client:
        assert client.url == f"http://{triton_server.http_url}" and client.is_model_ready("2")


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_detect_returns_text_and_counts(clients, image_b64, transport, version):
    done = detect(clients, transport, image_b64, version=version, max_tokens=6)
    protocol, stream = TRANSPORTS[transport]
    assert isinstance(done.text, str) and done.text
    assert done.version == version and done.protocol == protocol and done.stream == stream
    assert done.num_input_tokens and done.num_input_tokens > 0
    assert done.finish_reason in ("length", "stop")
    if done.finish_reason == "length":
        assert done.num_output_tokens == 6
    else:
        assert 1 <= done.num_output_tokens <= 6
    assert done.send_ns < done.recv_ns and done.latency_ms > 0
    if stream:
        # one token per streamed response: the sum of deltas equals the responses that carried tokens
        assert done.token_responses == done.num_output_tokens == len(done.chunk_ns)
        assert done.chunk_ns == sorted(done.chunk_ns) and done.send_ns < done.chunk_ns[0]
        assert done.chunk_ns[-1] <= done.recv_ns
        assert done.ttft_ms is not None and 0 < done.ttft_ms <= done.latency_ms
        assert len(done.itl_ms) == done.token_responses - 1
    else:
        assert done.ttft_ms is None and done.first_token_ns is None and done.token_responses == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_tokens_is_honoured(clients, image_b64, transport):
    for max_tokens in (3, 9):
        done = detect(clients, transport, image_b64, max_tokens=max_tokens, extra_sampling=EXACT)
        assert done.finish_reason == "length"
        assert done.num_output_tokens == max_tokens
        if TRANSPORTS[transport][1]:
            assert done.token_responses == max_tokens


def test_default_max_tokens_is_sent_not_vllms_16(clients):
    done = clients["http"].detect(None, extra_sampling=EXACT)  # text only: 128 steps stay cheap
    assert done.num_output_tokens == 128 and done.finish_reason == "length"


def test_temperature_zero_is_deterministic_across_transports(clients, image_b64):
    for version in VERSIONS:
        texts = {(t, i): detect(clients, t, image_b64, version=version, max_tokens=8).text
                 for t in TRANSPORTS for i in range(2)}
        assert len(set(texts.values())) == 1, texts


def test_grpc_non_streaming_gets_one_response(clients, image_b64):
    done = clients["grpc"].detect(image_b64, version="2", max_tokens=5, stream=False, extra_sampling=EXACT)
    assert done.responses == 1 and done.token_responses == 1
    assert done.num_output_tokens == 5 and done.ttft_ms is None and done.stream is False


def test_grpc_request_id_is_the_one_given(clients, image_b64):
    rid = f"mine-{uuid.uuid4().hex[:8]}"
    assert clients["grpc"].detect(image_b64, max_tokens=2, request_id=rid).request_id == rid


# --------------------------------------------------------------------------- errors from the server


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_version_is_version_not_ready(clients, image_b64, transport):
    with pytest.raises(VersionNotReady) as caught:
        detect(clients, transport, image_b64, version="3", max_tokens=2)
    assert caught.value.version == "3"
    assert "version 3" in str(caught.value) and "is not found" in str(caught.value)




@pytest.mark.parametrize("transport", TRANSPORTS)
def test_corrupt_image_is_an_inference_error_and_the_server_keeps_serving(clients, image_b64, transport):
    protocol = TRANSPORTS[transport][0]
    opened = clients[protocol].grpc_streams_opened
    corrupt = base64.b64encode(os.urandom(2048)).decode("ascii")
    with pytest.raises(InferenceError) as caught:
        detect(clients, transport, corrupt, max_tokens=2)
    assert not isinstance(caught.value, (VersionNotReady, BadRequest))
    assert "image" in str(caught.value)
    done = detect(clients, transport, image_b64, max_tokens=3, extra_sampling=EXACT)
    assert done.num_output_tokens == 3
    assert clients[protocol].grpc_streams_opened == opened  # the gRPC stream survived the error


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_non_image_and_non_base64_are_inference_errors(clients, transport):
    text_file = base64.b64encode(b"Nutrition facts: energy 250 kcal, fat 3 g\n" * 10).decode()
    with pytest.raises(InferenceError, match="not a recognised image"):
        detect(clients, transport, text_file, max_tokens=2)
    with pytest.raises(InferenceError, match="image is not valid base64"):
        detect(clients, transport, "this is not base64 at all!", max_tokens=2)


@pytest.mark.parametrize("protocol, stream", [("http", False), ("http", True), ("grpc", True)])
def test_missing_text_input_is_a_bad_request(clients, image_b64, protocol, stream):
    body = clients[protocol].request_body(image_b64, max_tokens=2, stream=stream)
    del body["text_input"]
    with pytest.raises(BadRequest) as caught:
        clients[protocol].generate_raw(body, stream=stream)
    assert "text_input" in str(caught.value)
    if protocol == "http":
        assert caught.value.status == 400
    with pytest.raises(BadRequest, match="missing required input"):  # Triton's own check (no inputs)
        clients[protocol].generate_raw({}, stream=stream)


def test_stream_flag_on_the_single_response_endpoint_is_a_bad_request(clients, image_b64):
    body = clients["http"].request_body(image_b64, max_tokens=3, stream=True)
    with pytest.raises(BadRequest, match="exactly 1 response"):  # an error body under HTTP 200
        clients["http"].generate_raw(body, stream=False)


# --------------------------------------------------------------------------- an unreachable server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_closed_port_is_server_unreachable(image_b64, protocol):
    port = closed_port()
    with TritonClient(f"127.0.0.1:{port}", protocol=protocol, timeout_s=5) as client:
        calls = [client.server_info, client.versions, lambda: client.is_model_ready("1"), client.model_config,
                 lambda: client.detect(image_b64, max_tokens=2),
                 lambda: client.detect(image_b64, max_tokens=2, stream=True)]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(ServerUnreachable) as caught:
                call()
            assert time.monotonic() - started < 4.0
            assert str(caught.value).startswith(f"The Triton server at {protocol}://127.0.0.1:{port} is not reachable")
            assert "refused" in str(caught.value).lower()


def test_unknown_host_is_server_unreachable(image_b64):
    for protocol in ("http", "grpc"):
        with TritonClient("no-such-host.invalid:8000", protocol=protocol, timeout_s=5) as client:
            with pytest.raises(ServerUnreachable):
                client.detect(image_b64, max_tokens=2)
            with pytest.raises(ServerUnreachable):
                client.server_info()


def test_tiny_timeout_then_a_server_that_dies(own_triton_server, image_b64):
    """On a server of the test's own (one start for both faults): clients that give up raise
    RequestTimeout, quickly; then the server is killed, as a crash would, while the patient gRPC
    client holds an open pooled stream: every call raises ServerUnreachable, quickly."""
    http = TritonClient(own_triton_server.http_url, protocol="http", timeout_s=30)
    grpc = TritonClient(own_triton_server.grpc_url, protocol="grpc", timeout_s=30)
    try:
        assert http.detect(image_b64, max_tokens=2).text and http.detect(image_b64, max_tokens=2, stream=True).text
        assert grpc.detect(image_b64, max_tokens=2, stream=True).text
        assert grpc._pool is not None and grpc._pool.idle == 1  # the stream stays open for the next call

        threads_before = threading.active_count()
        for transport, version in (("http-generate", "1"), ("http-generate_stream", "2"), ("grpc-stream", "1")):
            protocol, stream = TRANSPORTS[transport]
            with TritonClient(own_triton_server.url(protocol), protocol=protocol, timeout_s=0.02) as hasty:
                started = time.monotonic()
                with pytest.raises(RequestTimeout) as caught:
                    hasty.detect(image_b64, version=version, max_tokens=48, stream=stream, extra_sampling=EXACT)
                assert time.monotonic() - started < 2.0, transport
                assert "0.02 s" in str(caught.value) and caught.value.version == version
            if transport == "http-generate":  # a non-streaming request given up on leaves the server serving
                assert http.detect(image_b64, version=version, max_tokens=2).text
        time.sleep(0.5)
        assert threading.active_count() <= threads_before + 1  # the cancelled gRPC stream left no thread behind

        os.killpg(os.getpgid(own_triton_server.pid), signal.SIGKILL)
        own_triton_server.process.wait(timeout=10)
        for call in (lambda: http.detect(image_b64, max_tokens=2), lambda: http.detect(image_b64, stream=True),
                     lambda: grpc.detect(image_b64, max_tokens=2, stream=True), http.server_info, grpc.server_info,
                     grpc.versions):
            started = time.monotonic()
            with pytest.raises(ServerUnreachable):
                call()
            assert time.monotonic() - started < 5.0
    finally:
        http.close()
        grpc.close()
        own_triton_server.stop()
