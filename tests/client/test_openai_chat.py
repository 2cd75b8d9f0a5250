"""The OpenAI-compatible client (services.client.openai_chat) and a vLLM server's metrics
(services.client.openai_metrics).

The tests marked ``vllm`` talk to a real standalone ``vllm serve`` on the demo detector (the
``openai_server`` fixture of tests/conftest.py, one per session); the others to real HTTP servers
that are not OpenAI-compatible (tests/other_http_server.py) or to a closed port.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import jinja2
import pytest

from services.bench.sampler import Sampler
from services.client.errors import (
    BadRequest,
    ModelNotServed,
    NotOpenAIServer,
    RequestTimeout,
    ServerUnreachable,
    TritonClientError,
    VersionNotReady,
)
from services.client.openai_chat import OpenAIChatClient, chat_messages, normalize_base_url
from services.compare.capacity import kv_max_concurrency
from services.client.openai_metrics import MetricsUnreadable, read_vllm_metrics, vllm_metrics_from_series
from services.core.prompt import SYSTEM_PROMPT, USER_PROMPT, build_prompt
from services.detect.detection import DetectionOptions, detect_image, sample_inputs
from tests.other_http_server import ANSWERS, other_http_server
from tests.ports import closed_port

DEMO_TEMPLATE = Path(__file__).resolve().parents[2] / "models" / "demo-detector" / "chat_template.jinja"


# --------------------------------------------------------------------------- the request


def rendered(messages: list[dict]) -> str:
    """The messages through the demo detector's chat template, image parts as vLLM hands them to it."""
    parts_as_given = [
        {**m, "content": [{"type": "image"} if isinstance(p, dict) and p.get("type") == "image_url" else p
                          for p in m["content"]]} if isinstance(m["content"], list) else m
        for m in messages]
    template = jinja2.Environment().from_string(DEMO_TEMPLATE.read_text())
    return template.render(messages=parts_as_given, add_generation_prompt=True)


def test_the_messages_render_to_the_fine_tune_s_own_prompt():
    messages = chat_messages("iVBORw0KGgo=")
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert messages[1]["content"][0]["image_url"]["url"] == "data:image/png;base64,iVBORw0KGgo="
    assert messages[1]["content"][1] == {"type": "text", "text": USER_PROMPT}
    assert rendered(messages) == build_prompt()


def test_a_full_prompt_is_split_into_its_turns_with_the_image_where_its_placeholder_stood():
    prompt = build_prompt(user="Find the table.", system="Be brief.")
    messages = chat_messages("/9j/4AAQ", prompt)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert rendered(messages) == prompt
    # plain text is the user's words under the fine-tune's system prompt
    assert chat_messages(None, "Hello") == [{"role": "system", "content": SYSTEM_PROMPT},
                                            {"role": "user", "content": "Hello"}]


def test_the_body_streams_with_usage_and_refuses_clashing_extras():
    client = OpenAIChatClient("http://127.0.0.1:1/v1", "m")
    body = client.request_body("iVBOR", max_tokens=32, stream=True, extra_sampling={"seed": 3})
    assert body["model"] == "m" and body["max_tokens"] == 32 and body["seed"] == 3 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in client.request_body("iVBOR")
    with pytest.raises(ValueError, match="model"):
        client.request_body("iVBOR", extra_sampling={"model": "other"})
    assert normalize_base_url("host:81") == "http://host:81"
    assert normalize_base_url("https://h/v1/") == "https://h"
    with pytest.raises(ValueError):
        normalize_base_url("grpc://host:81")


# --------------------------------------------------------------------------- servers that are not it


@pytest.mark.parametrize("mode, says", [("text", "text that is not JSON"),
                                        ("json", "JSON that is not the OpenAI API's (keys: status, uptime)"),
                                        ("html404", "HTML page titled '404 Not Found'")])
def test_a_server_that_is_not_openai_compatible_is_named_as_such(mode, says):
    with other_http_server(mode) as server, OpenAIChatClient(f"127.0.0.1:{server.server_port}", "m",
                                                             timeout_s=10) as client:
        for call in (lambda: client.detect("iVBOR"), lambda: client.detect("iVBOR", stream=True),
                     client.server_info, client.versions):
            with pytest.raises(NotOpenAIServer, match="is not an OpenAI-compatible server") as caught:
                call()
            assert says in str(caught.value)


def test_a_json_404_without_a_model_listing_is_not_taken_for_a_missing_model(monkeypatch):
    # Triton's HTTP port answers an unknown path so: a JSON error, but no /v1/models behind it
    monkeypatch.setitem(ANSWERS, "triton404", (404, "application/json", b'{"error":"Not Found"}'))
    with other_http_server("triton404") as server:
        with pytest.raises(NotOpenAIServer, match=r"GET /v1/models with HTTP 404"):
            OpenAIChatClient(f"127.0.0.1:{server.server_port}", "m", timeout_s=10).detect("iVBOR")


def test_no_server_is_unreachable():
    with pytest.raises(ServerUnreachable, match="not reachable: Connection refused"):
        OpenAIChatClient(f"127.0.0.1:{closed_port()}", "m", timeout_s=5).detect("iVBOR", stream=True)
    with pytest.raises(MetricsUnreadable, match="could not be read"):
        read_vllm_metrics(f"127.0.0.1:{closed_port()}")


def test_metrics_without_the_cache_configuration_leave_the_kv_room_unknown():
    reading = vllm_metrics_from_series({'vllm:num_requests_running{engine="0",model_name="a"}': 2.0,
                                        'vllm:num_requests_running{engine="0",model_name="b"}': 5.0}, model_name="a")
    assert reading.requests_running == 2.0
    assert reading.requests_waiting is None and reading.kv_cache_usage is None
    assert reading.kv_tokens is None and reading.kv_tokens_used is None


# --------------------------------------------------------------------------- a real vllm serve


@pytest.mark.vllm
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("stream", [False, True])
def test_detect_on_a_vllm_serve_target_finds_the_table(openai_server, stream):
    sample = sample_inputs(["us_portrait"])[0]
    with openai_server.client() as client:
        result = detect_image(client, sample, DetectionOptions(versions=("1",), stream=stream, max_tokens=64))
    answer = result.versions["1"]
    assert answer.ok, answer.error
    assert answer.grid_boxes, f"no box in {answer.text!r}"
    assert result.versions_iou is None and answer.truth_iou is not None


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_streamed_chunks_carry_arrival_times_and_the_server_s_token_counts(openai_server, image_b64):
    with openai_server.client() as client:
        whole = client.detect(image_b64, max_tokens=64)
        streamed = client.detect(image_b64, max_tokens=64, stream=True, version="7")
    assert streamed.text == whole.text and streamed.finish_reason == whole.finish_reason == "stop"
    assert streamed.num_output_tokens == whole.num_output_tokens > 5
    assert streamed.num_input_tokens == whole.num_input_tokens > 100  # the image's tokens counted
    assert streamed.version == "7" and streamed.protocol == "openai"
    assert 3 < streamed.token_responses <= streamed.num_output_tokens  # a chunk per step, text merged at most
    assert streamed.chunk_ns == sorted(streamed.chunk_ns) and len(streamed.chunk_ns) == streamed.token_responses
    assert 0 < streamed.ttft_ms < streamed.latency_ms and streamed.tpot_ms > 0
    assert whole.ttft_ms is None and whole.token_responses == 1


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_a_model_it_does_not_serve_is_named_with_what_it_serves(openai_server, image_b64):
    with OpenAIChatClient(openai_server.base_url, "qwen-fp8", timeout_s=60) as client:
        for stream in (False, True):
            with pytest.raises(ModelNotServed) as caught:
                client.detect(image_b64, stream=stream)
            assert isinstance(caught.value, VersionNotReady)
            assert caught.value.served == [openai_server.model_name]
            assert f"does not serve a model named 'qwen-fp8' (it serves: '{openai_server.model_name}')" \
                   in str(caught.value)
        assert not client.is_model_ready()
        [state] = client.versions()
        assert state.state == "UNAVAILABLE" and openai_server.model_name in state.reason
        with pytest.raises(ModelNotServed):
            client.model_config()
    with openai_server.client() as client:
        info = client.server_info()
        assert info.live and info.ready and info.name == "vllm" and info.version
        assert [v.state for v in client.versions()] == ["READY"]
        assert client.model_config()["max_model_len"] == 4096


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_metrics_give_the_kv_room_and_see_a_request_running(openai_server, image_b64):
    idle = read_vllm_metrics(openai_server.metrics_url, model_name=openai_server.model_name)
    config = next(k for k in idle.series if k.startswith("vllm:cache_config_info"))
    assert idle.num_gpu_blocks > 0 and idle.block_size > 0
    assert idle.kv_tokens == idle.num_gpu_blocks * idle.block_size
    assert f'kv_cache_size_tokens="{idle.kv_tokens}"' in config  # vLLM's own product agrees
    assert idle.max_concurrency > 0
    tokens, how = kv_max_concurrency({"quantization": {"1": idle.cache_facts()}}, "1", 500.0)
    assert tokens == idle.kv_tokens / 500.0 and "(run manifest)" in how  # what capacity would show
    # the benchmark's sampler, pointed at the server, keeps the same series and the server's memory
    sample = Sampler(metrics_url=openai_server.metrics_url, root_pid=openai_server.pid, nvml=False).sample_once()
    assert vllm_metrics_from_series(sample.metrics, model_name=openai_server.model_name).kv_tokens == idle.kv_tokens
    measured = {p.pid for p in sample.processes if p.kind == "host" and p.memory_bytes > 0}
    tree = {p.pid for p in openai_server.engine_procs} | {openai_server.pid}
    assert openai_server.pid in measured and len(measured & tree) >= 2  # the API server and its EngineCore
    errors: list[BaseException] = []

    def long_request() -> None:
        try:
            with openai_server.client() as client:
                client.detect(image_b64, max_tokens=3000, stream=True, extra_sampling={"ignore_eos": True})
        except TritonClientError as exc:
            errors.append(exc)

    worker = threading.Thread(target=long_request)
    worker.start()
    seen = []
    deadline = time.monotonic() + 300
    while worker.is_alive() and time.monotonic() < deadline:
        reading = read_vllm_metrics(openai_server.metrics_url, model_name=openai_server.model_name)
        seen.append(reading)
        if reading.requests_running:
            break  # seen generating: let it finish
    worker.join()
    assert not errors, errors
    assert any(r.requests_running == 1 and r.kv_cache_usage > 0 and r.kv_tokens_used > 0 for r in seen), \
        [(r.requests_running, r.kv_cache_usage) for r in seen]


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_a_request_too_long_for_the_model_or_the_timeout_is_typed(openai_server, image_b64):
    with openai_server.client() as client:
        with pytest.raises(BadRequest, match="rejected the request to model 'demo-detector-bf16' as malformed") as caught:
            client.detect(image_b64, max_tokens=10_000)  # beyond max_model_len 4096
        assert caught.value.status == 400 and caught.value.server_message
    with openai_server.client(timeout_s=0.3) as client:
        for stream in (False, True):
            with pytest.raises(RequestTimeout, match=r"took longer than 0.3 s"):
                client.detect(image_b64, max_tokens=3000, stream=stream, extra_sampling={"ignore_eos": True})
