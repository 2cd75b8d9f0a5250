"""One error class per fault whatever the transport (issue 14), and the stock vLLM backend's opaque or
traceback-carrying answers explained in a sentence with the raw words behind ``detail``.

The faults are caused for real on the embedded server over HTTP and gRPC, streaming and not. The
stock backend's own words (docs/vllm-engine-notes.md) cannot be caused here without the vLLM
engine: they go through ``classify_error`` as each transport delivers them (HTTP: status 400, or an
error event under 200 in a stream; gRPC: no status)."""

from __future__ import annotations

import base64
import json

import pytest

from services.client.errors import BadRequest, InferenceError, classify_error
from services.client.triton_client import TritonClient

STOCK_BAD_JSON = ("Failed to process the request(s) for model 'qwen_0_0', message: JSONDecodeError: Expecting "
                  "property name enclosed in double quotes: line 1 column 2 (char 1)\n\nAt:\n"
                  "  /usr/lib/python3.12/json/decoder.py(353): raw_decode\n"
                  "  /opt/tritonserver/backends/vllm/model.py(512): _get_sampling_params_dict\n")
STOCK_OPAQUE = "Error generating stream: 'NoneType' object has no attribute 'lora_name'"
STOCK_IMAGES = "At most 1 image(s) may be provided in one prompt."

# how each transport delivers a server's error: (status, in_stream)
DELIVERIES = {"http": (400, False), "http-stream": (200, True), "grpc": (None, False), "grpc-stream": (None, True)}


@pytest.mark.parametrize("raw, cause, quoted", [
    (STOCK_BAD_JSON, "not valid JSON", False),
    (STOCK_OPAQUE, "unknown key, a value out of range", False),
    (STOCK_IMAGES, "more images", True),
])
def test_stock_backend_answers_are_one_class_and_explained(raw: str, cause: str, quoted: bool) -> None:
    errors = {how: classify_error(raw, url="gpu-host:8000", model="qwen", version="2", status=status,
                                  in_stream=in_stream)
              for how, (status, in_stream) in DELIVERIES.items()}
    assert {type(e) for e in errors.values()} == {BadRequest}
    for e in errors.values():
        assert cause in str(e) and "version 2" in str(e)
        assert "At:" not in str(e) and "decoder.py" not in str(e)  # no traceback in the message
        assert (raw in str(e)) is quoted
        assert e.detail == raw  # the raw words behind the message


def test_an_unknown_model_failure_keeps_its_class_and_words() -> None:
    raw = "Error generating stream: CUDA out of memory"
    e = classify_error(raw, url="h:1", model="qwen", version="1", status=None)
    assert type(e) is InferenceError and raw in str(e) and e.detail == raw


def _faults(image_b64: str, client: TritonClient) -> dict[str, dict]:
    base = client.request_body(image_b64, max_tokens=2)
    return {
        "bad JSON": {**base, "sampling_parameters": "{max_tokens: 2"},
        "unknown key": {**base, "sampling_parameters": json.dumps({"max_tokens": 2, "bogus": 1})},
        "negative temperature": {**base, "sampling_parameters": json.dumps({"max_tokens": 2, "temperature": -1})},
        "n=2": {**base, "sampling_parameters": json.dumps({"max_tokens": 2, "n": 2})},
        "two images": {**base, "image": [image_b64, image_b64]},
    }


def test_each_fault_is_the_same_class_over_http_and_grpc(triton_server, label_image_bytes: bytes) -> None:
    image_b64 = base64.b64encode(label_image_bytes).decode("ascii")
    seen: dict[str, set[str]] = {}
    for protocol, url in (("http", triton_server.http_url), ("grpc", triton_server.grpc_url)):
        with TritonClient(url, protocol=protocol, timeout_s=60) as client:
            for fault, body in _faults(image_b64, client).items():
                for stream in (False, True):
                    with pytest.raises(BadRequest) as info:
                        client.generate_raw(body, version="1", stream=stream)
                    e = info.value
                    assert e.detail and e.detail.startswith("Error generating stream"), (fault, protocol)
                    assert "refused the request to model 'qwen' version 1" in str(e)
                    seen.setdefault(fault, set()).add(type(e).__name__)
    assert seen and all(classes == {"BadRequest"} for classes in seen.values())
