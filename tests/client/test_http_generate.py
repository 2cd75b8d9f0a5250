"""Tests of services.client.http_generate: the HTTP generate_stream transport.

The faults the real server cannot produce on demand, an error event or a broken connection after a
200 stream has started, are served by a small local HTTP server in ``fake_sse_server`` (a real
socket speaking server-sent events; nothing inside the client is mocked). The other HTTP tests run
every transport at once in tests/client/test_triton_client.py.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.client.errors import StreamError
from services.client.triton_client import TritonClient

pytestmark = pytest.mark.timeout(120)

VERSIONS = ("1", "2")
EXACT = {"ignore_eos": True}  # forces exactly max_tokens tokens, so counts can be asserted exactly


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


def test_concurrent_http_stream_calls(triton_server):
    with TritonClient(triton_server.http_url) as client, ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: client.detect(None, version=VERSIONS[i % 2], max_tokens=2 + i % 3,
                                                        stream=True, extra_sampling=EXACT), range(8)))
    for i, done in enumerate(results):
        assert done.num_output_tokens == done.token_responses == 2 + i % 3
