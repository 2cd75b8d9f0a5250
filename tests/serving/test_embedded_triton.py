"""The embedded Triton server: real tritonserver, real Python-backend model, vLLM backend interface.

These tests speak to the server directly (the generate extension over HTTP with ``requests``, since
tritonclient has no API for it, and gRPC streaming through tritonclient), so they pin the server's
contract independently of the project's client.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import time
from functools import partial

import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from services.serving.embedded_triton import (
    EmbeddedTritonError,
    choose_ports,
    config_pbtxt,
    start_embedded_triton,
)
from services.core.prompt import build_prompt

VERSIONS = ("1", "2")


def body(image: bytes | None, max_tokens: int = 8, **extra) -> dict:
    out = {
        "text_input": build_prompt(num_images=1 if image is not None else 0),
        "sampling_parameters": json.dumps({"max_tokens": max_tokens, "temperature": 0}),
        "exclude_input_in_output": True,
        "return_num_output_tokens": True,
        "return_num_input_tokens": True,
        "return_finish_reason": True,
    }
    if image is not None:
        out["image"] = [base64.b64encode(image).decode()]
    out.update(extra)
    return out


def generate(server, version: str, payload: dict, timeout: float = 60) -> requests.Response:
    url = f"http://{server.http_url}/v2/models/qwen/versions/{version}/generate"
    return requests.post(url, json=payload, timeout=timeout)


def generate_stream(server, version: str, payload: dict) -> list[dict]:
    url = f"http://{server.http_url}/v2/models/qwen/versions/{version}/generate_stream"
    with requests.post(url, json=dict(payload, stream=True), stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        return [json.loads(line[len(b"data: "):]) for line in r.iter_lines() if line.startswith(b"data: ")]


def grpc_stream(server, version: str, image: bytes, max_tokens: int) -> list:
    def tensor(name, value, dtype):
        t = grpcclient.InferInput(name, [len(value)] if isinstance(value, list) else [1], dtype)
        arr = np.array(value if isinstance(value, list) else [value], dtype=object if dtype == "BYTES" else bool)
        t.set_data_from_numpy(arr)
        return t

    inputs = [
        tensor("text_input", build_prompt().encode(), "BYTES"),
        tensor("image", [base64.b64encode(image)], "BYTES"),
        tensor("stream", True, "BOOL"),
        tensor("sampling_parameters", json.dumps({"max_tokens": max_tokens, "temperature": 0}).encode(), "BYTES"),
        tensor("exclude_input_in_output", True, "BOOL"),
        tensor("return_num_output_tokens", True, "BOOL"),
        tensor("return_finish_reason", True, "BOOL"),
    ]
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), results))
    client.async_stream_infer("qwen", inputs, model_version=version, request_id="t1",
                              enable_empty_final_response=True)
    responses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result, error = results.get(timeout=60)
        assert error is None, error
        final = result.get_response().parameters["triton_final_response"].bool_param
        if result.as_numpy("text_output") is not None:
            responses.append(result)
        if final:
            break
    client.stop_stream()
    client.close()
    return responses


def test_both_versions_ready(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http_url)
    assert client.is_server_ready()
    index = {(m["name"], m.get("version")): m.get("state") for m in client.get_model_repository_index()}
    for v in VERSIONS:
        assert index[("qwen", v)] == "READY"
        assert client.is_model_ready("qwen", v)
    config = client.get_model_config("qwen")
    assert config["model_transaction_policy"]["decoupled"] is True
    assert {i["name"] for i in config["input"]} >= {"text_input", "image", "stream", "sampling_parameters",
                                                     "exclude_input_in_output", "return_num_output_tokens"}
    assert {o["name"] for o in config["output"]} == {"text_output", "finish_reason", "cumulative_logprob",
                                                      "logprobs", "num_input_tokens", "num_output_tokens"}


@pytest.mark.parametrize("version", VERSIONS)
def test_http_generate_honours_max_tokens(triton_server, label_image_bytes, version):
    for max_tokens in (1, 7):
        r = generate(triton_server, version, body(label_image_bytes, max_tokens, sampling_parameters=json.dumps(
            {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model_version"] == version
        assert out["num_output_tokens"] == max_tokens
        assert out["finish_reason"] == "length"
        assert isinstance(out["text_output"], str)
        assert out["num_input_tokens"] > 40  # the image's visual tokens are counted, as vLLM does


@pytest.mark.parametrize("version", VERSIONS)
def test_http_generate_stream_sums_to_the_whole_answer(triton_server, label_image_bytes, version):
    events = generate_stream(triton_server, version, body(label_image_bytes, 9))
    whole = generate(triton_server, version, body(label_image_bytes, 9)).json()
    assert all("error" not in e for e in events)
    assert sum(e["num_output_tokens"] for e in events) == whole["num_output_tokens"]
    assert "".join(e["text_output"] for e in events) == whole["text_output"]
    assert [e["finish_reason"] for e in events[:-1]] == ["None"] * (len(events) - 1)
    assert events[-1]["finish_reason"] in ("stop", "length")
    assert len(events) == whole["num_output_tokens"]  # one response per generated token


@pytest.mark.parametrize("version", VERSIONS)
def test_grpc_streaming(triton_server, label_image_bytes, version):
    responses = grpc_stream(triton_server, version, label_image_bytes, max_tokens=6)
    counts = [int(r.as_numpy("num_output_tokens")[0]) for r in responses]
    assert sum(counts) == len(responses) > 0
    assert responses[-1].as_numpy("finish_reason")[0].decode() in ("stop", "length")
    text = "".join(r.as_numpy("text_output")[0].decode() for r in responses)
    whole = generate(triton_server, version, body(label_image_bytes, 6)).json()
    assert text == whole["text_output"]
    assert sum(counts) == whole["num_output_tokens"]


def test_prompt_is_prepended_unless_excluded(triton_server, label_image_bytes):
    payload = body(label_image_bytes, 2)
    payload.pop("exclude_input_in_output")
    out = generate(triton_server, "1", payload).json()
    assert out["text_output"].startswith(build_prompt())
    r = requests.post(f"http://{triton_server.http_url}/v2/models/qwen/versions/1/generate_stream",
                      json=dict(payload, stream=True, exclude_input_in_output=False), timeout=30)
    assert "exclude_input_in_output" in r.text and "error" in r.text  # refused inside the stream, as vLLM does


def test_temperature_zero_is_deterministic_and_sampling_is_seeded(triton_server, label_image_bytes):
    a = generate(triton_server, "1", body(label_image_bytes, 12)).json()["text_output"]
    b = generate(triton_server, "1", body(label_image_bytes, 12)).json()["text_output"]
    assert a == b
    sampled = [generate(triton_server, "1", body(label_image_bytes, 12, sampling_parameters=json.dumps(
        {"max_tokens": 12, "temperature": 1.5, "seed": s}))).json()["text_output"] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2] or sampled[0] != a


def test_fp8_version_reports_smaller_fp8_weights(triton_server):
    text = requests.get(triton_server.metrics_url, timeout=5).text
    from prometheus_client.parser import text_string_to_metric_families

    weights = {}
    for family in text_string_to_metric_families(text):
        if family.name == "qwen_engine_weight_bytes":
            for s in family.samples:
                weights[(s.labels["version"], s.labels["part"], s.labels["mode"])] = s.value
    bf16 = weights[("1", "decoder_linear", "none")]
    fp8 = weights[("2", "decoder_linear", "fp8_weight_only")]  # weight-only on a CPU
    assert fp8 < bf16
    assert 0.45 < fp8 / bf16 < 0.6  # one byte per weight plus per-channel scales
    report = triton_server.engine_report("2")
    assert report["layers_quantized"] == report["decoder_linear_layers"] > 0
    assert "float8_e4m3fn" in report["weight_dtype_after"]
    assert triton_server.engine_report("1")["mode"] == "none"


def test_metrics_port_answers_with_inference_counters(triton_server, label_image_bytes):
    generate(triton_server, "2", body(label_image_bytes, 1))
    text = requests.get(triton_server.metrics_url, timeout=5).text
    assert 'nv_inference_request_success{model="qwen",version="2"}' in text


@pytest.mark.parametrize(
    "payload_change, expected",
    [
        ({"image": [base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(200)).decode()]}, "image"),
        ({"image": [base64.b64encode(b"just some text, not an image").decode()]}, "not a recognised image"),
        ({"image": ["%%% not base64 %%%"]}, "base64"),
        ({"sampling_parameters": "{not json"}, "not valid JSON"),
        ({"sampling_parameters": json.dumps({"max_tokens": 4, "bogus": 1})}, "unknown sampling parameter"),
    ],
)
def test_bad_requests_get_clear_errors_and_server_keeps_serving(triton_server, label_image_bytes,
                                                                 payload_change, expected):
    r = generate(triton_server, "1", {**body(label_image_bytes, 4), **payload_change})
    assert r.status_code >= 400 or "error" in r.json()
    assert expected in r.json()["error"]
    ok = generate(triton_server, "1", body(label_image_bytes, 2))
    assert ok.status_code == 200 and ok.json()["num_output_tokens"] == 2


def test_missing_text_input_is_a_400(triton_server, label_image_bytes):
    payload = body(label_image_bytes, 2)
    del payload["text_input"]
    r = generate(triton_server, "1", payload)
    assert r.status_code == 400
    assert "text_input" in r.json()["error"]


def test_placeholder_count_must_match_images(triton_server, label_image_bytes):
    payload = body(label_image_bytes, 2, text_input=build_prompt(num_images=0))
    r = generate(triton_server, "1", payload)
    assert "image placeholder" in r.json()["error"]


def test_unknown_version_is_refused(triton_server, label_image_bytes):
    r = generate(triton_server, "3", body(label_image_bytes, 2))
    assert r.status_code >= 400
    assert "version 3" in r.json()["error"] or "unknown" in r.json()["error"].lower()


def test_config_declares_the_vllm_interface():
    text = config_pbtxt({"1": "bf16", "2": "fp8"})
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.model_transaction_policy.decoupled
    assert config.version_policy.HasField("all")
    inputs = {i.name: i for i in config.input}
    assert not inputs["text_input"].optional and inputs["image"].dims == [-1]
    assert all(inputs[n].optional for n in inputs if n != "text_input")


def test_taken_ports_are_replaced_by_free_ones():
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        chosen = choose_ports({"http": taken, "grpc": None, "metrics": None})
    assert chosen["http"] != taken
    assert len(set(chosen.values())) == 3


@pytest.mark.server
def test_startup_failure_reports_the_log_error(tmp_path, tiny_checkpoint):
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a checkpoint the engine cannot load
    with pytest.raises(EmbeddedTritonError) as info:
        start_embedded_triton(broken, workdir=tmp_path / "w", ports={"http": None, "grpc": None, "metrics": None},
                              ready_timeout=120)
    message = str(info.value)
    assert "exited" in message and "qwen" in message
    assert "tritonserver.log" in message
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


def test_stop_leaves_no_process_and_no_shared_memory(own_triton_server, label_image_bytes):
    server = own_triton_server
    assert generate(server, "1", body(label_image_bytes, 2)).status_code == 200
    root = psutil.Process(server.pid)
    family = [root] + root.children(recursive=True)
    stubs = [p for p in family if "triton_python_backend_stub" in " ".join(p.cmdline())]
    assert len(stubs) == 2  # one stub per loaded version
    assert any(p.name.startswith(server.shm_prefix) for p in _shm_files())
    server.stop()  # returns once they are gone: no sleep here
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    assert not any(p.name.startswith(server.shm_prefix) for p in _shm_files())


def test_a_killed_server_is_cleaned_up(own_triton_server):
    server = own_triton_server
    os.kill(server.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    server.stop()  # stubs orphaned by the kill go too, and their shared memory
    assert not any(p.name.startswith(server.shm_prefix) for p in _shm_files())
    orphans = [p for p in psutil.process_iter(["cmdline"])
               if str(server.repository) in " ".join(p.info["cmdline"] or [])]
    assert orphans == []


def _shm_files():
    from pathlib import Path

    return list(Path("/dev/shm").iterdir())


def _serve_command(tmp_path, checkpoint) -> tuple[subprocess.Popen, dict[str, int]]:
    """``python -m services.serving.embedded_triton`` on free ports, this checkpoint and data folder."""
    env = dict(os.environ, QWEN_CHECKPOINT=str(checkpoint), QWEN_DATA_DIR=str(tmp_path))
    ports = choose_ports({"http": None, "grpc": None, "metrics": None})
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.serving.embedded_triton", f"--http-port={ports['http']}",
         f"--grpc-port={ports['grpc']}", f"--metrics-port={ports['metrics']}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    return proc, ports


@pytest.mark.server
def test_command_line_serves_until_terminated(tmp_path, tiny_checkpoint):
    proc, ports = _serve_command(tmp_path, tiny_checkpoint)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and not line.startswith("ready"):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the command exited early"
        assert line.startswith("ready") and str(ports["http"]) in line
        assert httpclient.InferenceServerClient(f"127.0.0.1:{ports['http']}").is_model_ready("qwen", "2")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.server
def test_command_line_exits_non_zero_with_the_reason_when_its_server_dies(tmp_path, tiny_checkpoint):
    proc, _ = _serve_command(tmp_path, tiny_checkpoint)
    try:
        line = ""
        while not line.startswith("ready"):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the command exited early"
        (server,) = [p for p in psutil.Process(proc.pid).children() if p.name() == "tritonserver"]
        stubs = server.children()
        server.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        out = proc.stdout.read()
        assert "qwen-serve: the server died: tritonserver killed by SIGKILL." in out
    finally:
        proc.kill()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in stubs)
    assert not list((tmp_path / "embedded_triton").glob("server-*"))  # its folder went with it


def test_backend_files_are_replaced_never_written_over(tmp_path):
    """Another server of the same data folder may be running the stub and libtriton_python.so there:
    a new copy takes their place by rename, so what a running server mapped is never changed."""
    from services.serving.embedded_triton import TritonDistribution, prepare_backend_dir

    dist = TritonDistribution.locate()
    old = tmp_path / "python" / "libtriton_python.so"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"an older build")
    with open(old, "rb") as running:  # as a running server holds it
        prepare_backend_dir(dist, tmp_path)
        assert running.read() == b"an older build"
    assert old.stat().st_size == (dist.python_backend / "libtriton_python.so").stat().st_size
    assert sorted(p.name for p in old.parent.iterdir()) == sorted(
        ["libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"])


def _kernel_segfaults(pids: set[int]) -> list[str]:
    """The kernel's "segfault" lines of these processes; skips where the kernel log cannot be read."""
    run = subprocess.run(["dmesg"], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"the kernel log cannot be read here (dmesg: {run.stderr.strip()[:100]})")
    return [line for line in run.stdout.splitlines()
            if "segfault" in line and any(f"[{pid}]: segfault" in line for pid in pids)]


def test_model_processes_unload_without_a_segfault(own_triton_server):
    """Each stub releases its custom metrics in finalize: left to the interpreter's exit, they made
    every stub segfault in Metric::SaveToSharedMemory when its version was unloaded."""
    server = own_triton_server
    stubs = psutil.Process(server.pid).children()
    assert len(stubs) == 2
    server.process.send_signal(signal.SIGTERM)  # a graceful stop: every version is unloaded
    server.process.wait(timeout=60)
    psutil.wait_procs(stubs, timeout=30)
    log_text = server.log_path.read_text()
    assert log_text.count("finalized") == 2
    assert _kernel_segfaults({p.pid for p in stubs}) == []


@pytest.mark.server
def test_a_folder_made_for_the_server_is_removed_when_it_stops(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN_DATA_DIR", str(tmp_path))
    server = start_embedded_triton(tiny_checkpoint, ports={"http": None, "grpc": None, "metrics": None})
    assert server.workdir.parent == tmp_path / "embedded_triton" and server.workdir.is_dir()
    assert server.shm_prefix.startswith(f"qwen_triton_p{os.getpid()}_")  # its owner: see supervisor.sweep_stale
    server.stop()
    assert not server.workdir.exists()


def test_a_cancelled_stream_leaves_the_version_serving(own_triton_server, label_image_bytes):
    """A client that gives up mid-stream (timeout: the gRPC stream is cancelled) must not break the version."""
    from services.client.errors import RequestTimeout
    from services.client.triton_client import TritonClient

    image = base64.b64encode(label_image_bytes).decode()
    impatient = TritonClient(own_triton_server.grpc_url, "grpc", timeout_s=0.05)
    try:
        with pytest.raises(RequestTimeout):
            impatient.detect(image, version="2", max_tokens=64, stream=True, extra_sampling={"ignore_eos": True})
    finally:
        impatient.close()
    time.sleep(0.5)
    with TritonClient(own_triton_server.grpc_url, "grpc", timeout_s=60) as client:
        for _ in range(2):
            done = client.detect(image, version="2", max_tokens=3, stream=True, extra_sampling={"ignore_eos": True})
            assert done.num_output_tokens == 3
    assert "Traceback" not in own_triton_server.log_tail(200) or "Response sender has been closed" not in \
        own_triton_server.log_tail(200)
