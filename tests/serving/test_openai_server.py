"""Standalone ``vllm serve`` (services.serving.openai_server): its options, and a real server killed
mid-stream (its own, started here: the session's ``openai_server`` stays up for the other tests)."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from services.client.errors import ServerUnreachable, StreamError, TritonClientError
from services.client.openai_metrics import read_vllm_metrics
from services.serving.embedded_triton import vllm_engine_args
from services.serving.openai_server import served_name, serve_options

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-detector"


@pytest.fixture(scope="module")
def image_b64(label_image_bytes) -> str:
    return base64.b64encode(label_image_bytes).decode("ascii")


def test_the_embedded_engine_s_arguments_become_serve_options():
    options = serve_options(vllm_engine_args(DEMO, "bf16", cuda=False))
    assert options[:2] == ["--model", str(DEMO)]
    assert "--enforce-eager" in options  # eager on the CPU, as the embedded engine
    assert options[options.index("--limit-mm-per-prompt") + 1] == '{"image": 1}'
    assert options[options.index("--max-model-len") + 1] == "4096"
    assert not any(o.startswith("--disable-log-stats") for o in options)  # False: vLLM's default kept
    cuda = serve_options({"model": "m", "quantization": "fp8", "gpu_memory_utilization": 0.45, "enforce_eager": False})
    assert cuda == ["--model", "m", "--quantization", "fp8", "--gpu-memory-utilization", "0.45"]


def test_the_served_name_says_what_is_served():
    assert served_name(DEMO, "bf16", cuda=False) == "demo-detector-bf16"
    assert served_name(DEMO, "fp8", cuda=True) == "demo-detector-fp8"
    assert served_name(DEMO, "fp8", cuda=False) == "demo-detector-int8-w8a8"  # the CPU stand-in, never "fp8"


STREAMS_AT_KILL = 6


@pytest.mark.vllm
@pytest.mark.server
@pytest.mark.timeout(1200)
def test_a_server_killed_mid_stream_gives_a_stream_error_and_stop_leaves_nothing(tmp_path, demo_checkpoint,
                                                                                 image_b64):
    from tests.conftest import require_vllm

    require_vllm()
    from services.serving.openai_server import start_openai_server

    server = start_openai_server(demo_checkpoint, "bf16", workdir=tmp_path / "serve")
    try:
        engine = list(server.engine_procs)
        assert engine, "the API server started no engine process"
        failures: list[BaseException] = []
        answers: list = []

        def long_request() -> None:
            try:
                with server.client(timeout_s=300) as client:
                    answers.append(client.detect(image_b64, max_tokens=2000, stream=True,
                                                 extra_sampling={"ignore_eos": True}))
            except BaseException as exc:  # noqa: BLE001 -- any outcome is reported by the assertions below
                failures.append(exc)

        # Several long requests at once: an idle machine decodes one 2,000-token answer in seconds
        # (a fresh-clone CI run finished it before the kill), several batched take far longer.
        workers = [threading.Thread(target=long_request) for _ in range(STREAMS_AT_KILL)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 300
        while read_vllm_metrics(server.metrics_url).requests_running < 1:  # generating
            assert time.monotonic() < deadline and any(w.is_alive() for w in workers), failures
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(server.pid, signal.SIGKILL)  # the API server, which holds the connections
        for worker in workers:
            worker.join(timeout=60)
        assert not any(w.is_alive() for w in workers)
        assert failures, f"every request was answered before the kill: {answers}"
        assert all(isinstance(f, TritonClientError) for f in failures), failures
        broken = [f for f in failures if isinstance(f, StreamError) and "broke mid-response" in str(f)]
        assert broken, [repr(f) for f in failures]
        assert all("did the server stop?" in str(f) for f in broken)
        with server.client(timeout_s=10) as client:  # and afterwards: nobody there
            with pytest.raises(ServerUnreachable):
                client.detect(image_b64)
    finally:
        server.stop()
    assert not server.alive()
    assert not [p for p in engine if p.is_running() and p.status() != "zombie"], "an engine process outlived stop()"


def test_qwen_serve_openai_says_why_it_cannot_start(tmp_path, capsys):
    from services.serving.embedded_triton import main

    assert main(["--openai", "--precision", "bf16", "--checkpoint", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qwen-serve --openai: ") and "is not a checkpoint folder (no config.json)" in err
