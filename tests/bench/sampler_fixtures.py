"""Shared by the sampler's tests: a real Prometheus-text HTTP server that can be stopped and restarted,
a real child process whose command line looks like a Triton Python-backend stub, and waits."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import psutil
import pytest


METRICS_BODY = """\
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-x"} 1.5e9
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-x"} 8e10
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-x"} 0.25
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="qwen",version="1"} 3
nv_inference_request_success{model="qwen",version="2"} 5
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="qwen",reason="BACKEND",version="1"} 1
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model="qwen",version="2"} 40
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model="qwen",version="2"} 1
vllm:time_to_first_token_seconds_bucket{le="+Inf",model="qwen",version="2"} 2
vllm:time_to_first_token_seconds_sum{model="qwen",version="2"} 0.3
vllm:time_to_first_token_seconds_count{model="qwen",version="2"} 2
# HELP qwen_weight_bytes Bytes of the model weights per version
# TYPE qwen_weight_bytes gauge
qwen_weight_bytes{version="2"} 1.0e10
# TYPE qwen_engine_weight_bytes gauge
qwen_engine_weight_bytes{model="qwen",part="model",precision="fp8",version="2"} 7e9
qwen_engine_weight_bytes{model="qwen",part="decoder_linear",precision="fp8",version="2"} 5e9
# TYPE nv_cpu_memory_used_bytes gauge
nv_cpu_memory_used_bytes 123456
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 5
"""


class MetricsServer:
    """A real Prometheus-text HTTP server on 127.0.0.1 that can be stopped and restarted."""

    def __init__(self, body: str = METRICS_BODY) -> None:
        self.body = body.encode()
        self.port = 0
        self.hits = 0  # GET requests answered
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        body = self.body
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = MetricsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


STUB_ARGS = ["/tmp/x/qwen/2/model.py", "triton_python_backend_shm_region_7", "1048576"]


@pytest.fixture
def fake_stub() -> Iterator[subprocess.Popen]:
    """A real child process whose command line carries a Triton stub's model path."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(30)",
                             *STUB_ARGS], stdout=subprocess.PIPE, text=True)
    try:
        # Wait until the interpreter runs (not just the exec): before that its memory is a few hundred kB.
        if proc.stdout.readline().strip() != "ready":
            pytest.fail("the stub-like child process did not start")
        if STUB_ARGS[0] not in psutil.Process(proc.pid).cmdline():
            pytest.fail("child process command line is not visible")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
