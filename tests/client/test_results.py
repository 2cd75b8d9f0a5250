"""Tests of services.client.results: how the responses of one request add up to a ``Completion``."""

from __future__ import annotations

from services.client.results import ResponseCollector


def test_first_token_is_the_first_response_carrying_a_token_even_without_visible_text():
    """A random-weight or special first token decodes to no text; TTFT must still start there."""
    c = ResponseCollector()
    c.add(100, None, 1316, None, None)  # a response with no token (e.g. input count only)
    c.add(200, b"", 1316, 1, None)  # first token, no visible text
    c.add(300, b"nutrition", 1316, 1, None)
    c.add(400, b"", 1316, 1, "length")
    done = c.completion(version="1", protocol="grpc", stream=True, request_id="r", send_ns=0, recv_ns=400)
    assert done.first_token_ns == 200 and done.ttft_ms == 200 / 1e6
    assert done.num_output_tokens == 3 and done.chunk_ns == [200, 300, 400]
    assert done.tpot_ms == (400 - 200) / 1e6 / 2
