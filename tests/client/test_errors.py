"""Tests of services.client.errors: the server's own messages become the right typed error."""

from __future__ import annotations

import pytest

from services.client.errors import (
    BadRequest,
    InferenceError,
    RequestTimeout,
    ServerUnreachable,
    StreamError,
    TritonClientError,
    VersionNotReady,
    classify_error,
)


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
    error = classify_error(message, url="http://h:1", model="qwen", version="2", status=status, in_stream=in_stream)
    assert type(error) is expected
    assert message in str(error) and error.server_message == message


def test_every_error_is_a_triton_client_error():
    for cls in (ServerUnreachable, VersionNotReady, RequestTimeout, StreamError, InferenceError, BadRequest):
        assert issubclass(cls, TritonClientError)
    assert issubclass(StreamError, InferenceError)
