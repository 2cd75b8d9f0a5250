"""The Python-backend model's own reporting, on the real embedded Triton server (CPU here).

* torch's CUDA memory gauges (``qwen_engine_torch_memory_bytes{version,kind}``) exist only where the
  engine runs on CUDA: on the CPU the family is not published at all and the engine report records
  ``torch_memory_after_load: null``; requests and the other gauges are unaffected. (The CUDA side is
  ``tests/test_gpu_memory_gauges.py``.)
* The opt-in per-request trace (``QWEN_TRITON_TRACE``) that ``scripts/bench_triton_overhead.py``
  reads: its stamps are in order and on the client's clock (each request's ``execute`` stamp lies
  between the client's send and receive), and the model process's allocator tuning is logged.
"""

from __future__ import annotations

import base64
import json
import platform
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from services.core.prompt import build_prompt
from services.client.errors import TritonClientError
from services.client.triton_client import TritonClient

TORCH_GAUGE = "qwen_engine_torch_memory_bytes"
FREE_PORTS = {"http": None, "grpc": None, "metrics": None}


def families(server) -> dict[str, list]:
    text = requests.get(server.metrics_url, timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_no_torch_memory_gauges_on_the_cpu_and_nothing_breaks(triton_server, label_image_bytes):
    for version in ("1", "2"):
        report = triton_server.engine_report(version)
        assert report["device"] == "cpu"
        assert "torch_memory_after_load" in report and report["torch_memory_after_load"] is None
    image = base64.b64encode(label_image_bytes).decode()
    with TritonClient(triton_server.http_url, protocol="http") as client:
        for version in ("1", "2"):
            done = client.detect(image, version=version, max_tokens=2)
            assert done.num_output_tokens == 2
    found = families(triton_server)
    assert TORCH_GAUGE not in found
    assert not any(name.startswith(TORCH_GAUGE) for name in found)
    weights = {(s.labels["version"], s.labels["part"]) for s in found["qwen_engine_weight_bytes"]}
    assert {("1", "model"), ("2", "model")} <= weights


@pytest.mark.server
def test_trace_stamps_are_ordered_and_on_the_clients_clock(tmp_path, monkeypatch, tiny_checkpoint,
                                                            label_image_bytes):
    from services.serving.embedded_triton import start_embedded_triton

    trace_path = tmp_path / "trace.jsonl"
    monkeypatch.setenv("QWEN_TRITON_TRACE", str(trace_path))  # the server's model processes inherit it
    server = start_embedded_triton(tiny_checkpoint, workdir=tmp_path / "triton", ports=FREE_PORTS,
                                   versions={"1": "bf16"})
    image = base64.b64encode(label_image_bytes).decode()
    calls = []
    try:
        for protocol, stream in (("http", False), ("grpc", False), ("grpc", True)):
            with TritonClient(server.url(protocol), protocol=protocol) as client:
                calls.append(client.detect(image, build_prompt(), version="1", max_tokens=3, stream=stream))
                # A failing request is traced too, and its error comes back unchanged.
                with pytest.raises(TritonClientError, match="base64"):
                    client.detect("%%% not base64 %%%", version="1", max_tokens=2, stream=stream)
        log = server.log_tail(400)
    finally:
        server.stop()
    traces = [json.loads(line) for line in trace_path.read_text().splitlines()]
    assert len(traces) == 2 * len(calls)
    for failed in traces[1::2]:
        assert failed["execute"] <= failed["picked"] <= failed["done"] and "generated" not in failed
    for done, trace in zip(calls, traces[0::2]):
        assert trace["version"] == "1"
        assert done.send_ns <= trace["execute"] <= trace["picked"] <= trace["inputs"] <= trace["generated"] \
            <= trace["done"]
        assert trace["execute"] <= done.recv_ns
        assert trace["cancel_checks"] >= 1 and trace["cancel_check_ns"] > 0
        assert trace["image_decode_ns"] > 0 and trace["minor_faults"] >= 0
        if not done.stream:
            assert trace["generated"] <= trace["response_built"] <= trace["sent"] <= trace["done"]
    assert "malloc tuning" in log
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert "trim_threshold" in log and "268435456" in log  # the model process keeps its freed heap


@pytest.mark.server
def test_cancellation_is_asked_before_the_prefill_and_while_the_answer_is_unfinished(
        tmp_path, monkeypatch, tiny_checkpoint, label_image_bytes):
    """Each "was this request cancelled?" is a round trip to the server process, so the model asks only
    where it matters: once before the prefill (the request may have waited in Triton's queue), then
    between the steps of an answer but never after its last token, so a 1-token answer asks once. A
    request that waited behind another while its client gave up is never generated, and the version
    keeps serving."""
    import threading

    from services.serving.embedded_triton import start_embedded_triton
    from services.client.errors import RequestTimeout

    trace_path = tmp_path / "trace.jsonl"
    monkeypatch.setenv("QWEN_TRITON_TRACE", str(trace_path))
    server = start_embedded_triton(tiny_checkpoint, workdir=tmp_path / "triton", ports=FREE_PORTS,
                                   versions={"1": "bf16"})
    image = base64.b64encode(label_image_bytes).decode()
    forced = {"ignore_eos": True}

    def traces(count: int) -> list[dict]:
        """The first ``count`` traces; each is written just after its request's last response went out."""
        deadline = time.monotonic() + 30
        while True:
            lines = trace_path.read_text().splitlines() if trace_path.exists() else []
            if len(lines) >= count or time.monotonic() > deadline:
                return [json.loads(line) for line in lines[:count]]
            time.sleep(0.02)

    try:
        cases = (("http", False), ("http", True), ("grpc", False), ("grpc", True))
        for n, (protocol, stream) in enumerate(cases, start=1):
            with TritonClient(server.url(protocol), protocol=protocol) as client:
                done = client.detect(image, version="1", max_tokens=1, stream=stream, extra_sampling=forced)
            assert done.num_output_tokens == 1
            assert traces(n)[-1]["cancel_checks"] == 1, (protocol, stream)
        with TritonClient(server.grpc_url, protocol="grpc") as client:
            assert client.detect(image, version="1", max_tokens=50, extra_sampling=forced).num_output_tokens == 50
            assert traces(5)[-1]["cancel_checks"] >= 2

            # A long answer holds the only instance; a second request waits in Triton's queue behind it
            # until its client gives up (the gRPC stream is closed with the request cancelled).
            first: dict = {}
            worker = threading.Thread(target=lambda: first.update(
                done=client.detect(image, version="1", max_tokens=3000, extra_sampling=forced)))
            worker.start()
            time.sleep(0.5)  # the long one is being served (3000 tokens: seconds on a CPU)
            with TritonClient(server.grpc_url, protocol="grpc", timeout_s=0.5) as impatient:
                with pytest.raises(RequestTimeout):
                    impatient.detect(image, version="1", max_tokens=50, extra_sampling=forced)
            impatient_gave_up = time.perf_counter_ns()
            worker.join(timeout=120)
            assert first["done"].num_output_tokens == 3000
            long_one, waited = traces(7)[5:7]
            # It waited: its client gave up while the long one was being served, and it was handed to
            # the model only when the long one ended.
            assert impatient_gave_up < long_one["done"] <= waited["execute"]
            assert waited["cancel_checks"] == 1 and "generated" not in waited and "inputs" in waited
            assert client.detect(image, version="1", max_tokens=3, extra_sampling=forced).num_output_tokens == 3
    finally:
        server.stop()
