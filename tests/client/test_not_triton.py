"""An address where something other than Triton answers gets one clear sentence, never a traceback.

The servers are real: a tiny ``http.server`` of the test's own (plain text, other JSON, an HTML 404),
and the test Triton's own metrics and gRPC ports asked over the wrong protocol.
"""

from __future__ import annotations

import pytest

from services.client.errors import NotTritonServer, ServerUnreachable, describe_answer
from services.client.server_status import check_server
from services.client.triton_client import TritonClient
from tests.other_http_server import other_http_server

@pytest.fixture
def web_server():
    """A real HTTP server that is not Triton; set ``.mode`` to pick its answer."""
    with other_http_server() as server:
        yield server


@pytest.mark.parametrize("mode, found", [
    ("text", "HTTP 200 and text that is not JSON ('hello, I am not Triton')"),
    ("json", "HTTP 200 and JSON that is not Triton's (keys: status, uptime)"),
    ("html404", "HTTP 404 and an HTML page titled '404 Not Found'"),
])
def test_a_web_server_that_is_not_triton_is_named_in_one_sentence(web_server, mode, found):
    web_server.mode = mode
    url = f"127.0.0.1:{web_server.server_port}"
    with TritonClient(url, timeout_s=5) as client:
        for call in (client.server_info, client.versions):
            with pytest.raises(NotTritonServer) as info:
                call()
            assert str(info.value) == (f"The server at http://{url} is not a Triton server: it answered GET /v2 "
                                       f"with {found}.")
        with pytest.raises(NotTritonServer) as info:
            client.detect("aGk=", version="1")
        message = str(info.value)
        assert message.startswith(f"The server at http://{url} is not a Triton server: it answered ")
        assert found.split(" and ")[1] in message and "<html" not in message and "\n" not in message
        status = check_server(client)  # what the sidebar shows: no exception
        assert status.error == f"The server at http://{url} is not a Triton server: it answered GET /v2 with {found}."


def test_describe_answer_never_pastes_a_body():
    page = b"<!DOCTYPE html><html><body>" + b"x" * 5000 + b"</body></html>"
    assert describe_answer(502, page, "text/html") == "HTTP 502 and an HTML page"
    assert describe_answer(200, b"") == "HTTP 200 and an empty body"
    assert describe_answer(200, b"[1, 2]") == "HTTP 200 and JSON that is not Triton's (a list)"
    long_text = describe_answer(200, b"word " * 100)
    assert long_text.endswith("...)") and len(long_text) < 120


def test_wrong_ports_of_a_real_triton_are_explained(triton_server):
    metrics_port, grpc_port, http_port = (triton_server.ports[k] for k in ("metrics", "grpc", "http"))
    with TritonClient(f"127.0.0.1:{metrics_port}", timeout_s=5) as client:  # the metrics port, as HTTP
        status = check_server(client)
    # Triton's metrics server answers every path with an empty 200
    assert status.error == (f"The server at http://127.0.0.1:{metrics_port} is not a Triton server: it answered "
                            "GET /v2 with HTTP 200 and an empty body.")
    with TritonClient(f"127.0.0.1:{grpc_port}", timeout_s=5) as client:  # the gRPC port, as HTTP
        status = check_server(client)
    assert status.error == (f"The server at http://127.0.0.1:{grpc_port} is not a Triton server: it answered "
                            "GET /v2 with HTTP/2 frames, as a gRPC port does (Triton's HTTP port is 8000 by default).")
    with TritonClient(f"grpc://127.0.0.1:{http_port}", timeout_s=5) as client:  # the HTTP port, as gRPC
        status = check_server(client)
    assert status.error == (f"The server at grpc://127.0.0.1:{http_port} is not a Triton server: it answered gRPC "
                            "with HTTP/1.x, as a web server or Triton's HTTP port does (Triton's gRPC port is 8001 "
                            "by default).")


def test_a_closed_port_is_still_unreachable():
    with other_http_server() as server:
        port = server.server_port
    with TritonClient(f"127.0.0.1:{port}", timeout_s=5) as client, pytest.raises(ServerUnreachable):
        client.server_info()
