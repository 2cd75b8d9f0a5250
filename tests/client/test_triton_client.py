"""Tests of services.client.triton_client against the real embedded Triton server (tests/conftest.py).

Every transport (HTTP generate, HTTP generate_stream, gRPC stream) is run against both versions of
``qwen``; errors are caused for real (unknown version, corrupt image, closed port, unknown host,
killed server, missing input, tiny timeout). The one fault the real server cannot produce on demand,
an error event or a broken connection after a 200 stream has started, is served by a small local
HTTP server in ``fake_sse_server`` (a real socket speaking server-sent events; nothing inside the
client is mocked). The test that gives up on requests and kills the server uses ``own_triton_server``:
the embedded model does not survive a stream cancelled mid-generation (its version's worker thread
dies), so no cancelled stream may touch the shared server.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from services.core.prompt import build_prompt
from services.client.triton_client import (
    BadRequest,
    Completion,
    InferenceError,
    RequestTimeout,
    ServerUnreachable,
    StreamError,
    TritonClient,
    TritonClientError,
    VersionNotReady,
    _classify,
    parse_url,
)

pytestmark = pytest.mark.timeout(120)

# (protocol, stream): the three transports of detect
TRANSPORTS = {
    "http-generate": ("http", False),
    "http-generate_stream": ("http", True),
    "grpc-stream": ("grpc", True),
}
VERSIONS = ("1", "2")
EXACT = {"ignore_eos": True}  # forces exactly max_tokens tokens, so counts can be asserted exactly


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image_b64(label_image_bytes) -> str:
    return base64.b64encode(label_image_bytes).decode("ascii")


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


@pytest.mark.parametrize("message, status, in_stream, expected", [
    ("Request for unknown model: 'qwen' version 3 is not found", 404, False, VersionNotReady),
    ("'qwen' version 2 is not at ready state", 503, False, VersionNotReady),
    ("Request for unknown model: 'qwen' has no available versions", None, False, VersionNotReady),
    ("Error generating stream: image is not a recognised image file", 400, False, InferenceError),
    ("Error generating stream: 'NoneType' object has no attribute 'as_numpy'", None, False, BadRequest),
    ("failed to parse the request JSON buffer: Invalid value. at 1", 500, False, BadRequest),
    ("some validation message", 400, False, BadRequest),
    ("Error generating stream: CUDA out of memory", 200, True, StreamError),
    ("Error generating stream: CUDA out of memory", None, False, InferenceError),
])
def test_error_classification_of_the_servers_own_messages(message, status, in_stream, expected):
    """Messages as Triton core and the vLLM backend word them (the not-ready one cannot be caused
    on the embedded server, whose versions are always loaded)."""
    error = _classify(message, url="http://h:1", model="qwen", version="2", status=status, in_stream=in_stream)
    assert type(error) is expected
    assert message in str(error) and error.server_message == message


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


# --------------------------------------------------------------------------- errors inside a 200 stream


class _SSEHandler(BaseHTTPRequestHandler):
    """Speaks generate_stream's format: one good event, then a fault chosen by the URL's version."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        good = b'data: {"model_name":"qwen","model_version":"1","text_output":"nutri","num_output_tokens":1,' \
               b'"finish_reason":"None"}\n\n'
        self.wfile.write(b"%x\r\n%s\r\n" % (len(good), good))
        self.wfile.flush()
        if "/versions/1/" in self.path:  # an error event under status 200
            bad = b'data: {"error":"Error generating stream: CUDA out of memory"}\n\n'
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(bad), bad))
        else:  # the connection drops mid-stream
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


@pytest.fixture
def fake_sse_server():
    """A local HTTP server whose streams fail after their first event (the real one cannot be made to)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SSEHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_error_event_inside_a_200_stream_is_a_stream_error(fake_sse_server, image_b64):
    with TritonClient(fake_sse_server, timeout_s=5) as client:
        with pytest.raises(StreamError, match="CUDA out of memory") as caught:
            client.detect(image_b64, version="1", stream=True)
        assert caught.value.status == 200
        with pytest.raises(StreamError, match="broke"):
            client.detect(image_b64, version="2", stream=True)


# --------------------------------------------------------------------------- concurrency


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


def test_concurrent_http_stream_calls(triton_server):
    with TritonClient(triton_server.http_url) as client, ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: client.detect(None, version=VERSIONS[i % 2], max_tokens=2 + i % 3,
                                                        stream=True, extra_sampling=EXACT), range(8)))
    for i, done in enumerate(results):
        assert done.num_output_tokens == done.token_responses == 2 + i % 3


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


def test_every_error_is_a_triton_client_error():
    for cls in (ServerUnreachable, VersionNotReady, RequestTimeout, StreamError, InferenceError, BadRequest):
        assert issubclass(cls, TritonClientError)
    assert issubclass(StreamError, InferenceError)


def test_first_token_is_the_first_response_carrying_a_token_even_without_visible_text():
    """A random-weight or special first token decodes to no text; TTFT must still start there."""
    from services.client.triton_client import _Collector

    c = _Collector()
    c.add(100, None, 1316, None, None)  # a response with no token (e.g. input count only)
    c.add(200, b"", 1316, 1, None)  # first token, no visible text
    c.add(300, b"nutrition", 1316, 1, None)
    c.add(400, b"", 1316, 1, "length")
    done = c.completion(version="1", protocol="grpc", stream=True, request_id="r", send_ns=0, recv_ns=400)
    assert done.first_token_ns == 200 and done.ttft_ms == 200 / 1e6
    assert done.num_output_tokens == 3 and done.chunk_ns == [200, 300, 400]
    assert done.tpot_ms == (400 - 200) / 1e6 / 2
