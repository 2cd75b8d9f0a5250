"""Shared fixtures: a real embedded Triton server, started once per test session."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# Tests never write into the project's own data folder.
_TEST_DATA = Path(os.environ.get("QWEN_TEST_DATA_DIR", "/tmp/qwen-test-data"))
os.environ["QWEN_DATA_DIR"] = str(_TEST_DATA)
os.environ.pop("QWEN_TRITON_URL", None)
os.environ.pop("QWEN_CHECKPOINT", None)
os.environ.pop("QWEN_ENGINE", None)  # the fixtures name their engine

FREE_PORTS = {"http": None, "grpc": None, "metrics": None}


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """The deterministic tiny random-weight checkpoint (fast: protocol tests need no real answers)."""
    from services.serving.checkpoint_builder import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory, tiny_checkpoint):
    """A real tritonserver serving qwen versions 1 (bf16) and 2 (fp8) on free ports."""
    from services.serving.embedded_triton import start_embedded_triton

    server = start_embedded_triton(tiny_checkpoint, workdir=tmp_path_factory.mktemp("triton"), ports=FREE_PORTS)
    yield server
    server.stop()


@pytest.fixture
def own_triton_server(tmp_path, tiny_checkpoint):
    """A server of the test's own, for tests that stop or kill it."""
    from services.serving.embedded_triton import start_embedded_triton

    server = start_embedded_triton(tiny_checkpoint, workdir=tmp_path / "triton", ports=FREE_PORTS)
    yield server
    server.stop()


def require_vllm() -> None:
    """Skip without vLLM, except in CI, whose scripts/test.sh installs it: there its absence fails."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    message = "vLLM is not installed: scripts/setup.sh --vllm installs it"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI installs it (scripts/test.sh), so its absence is a failure here")
    pytest.skip(message)


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    """The bundled demo detector (head_dim 64: vLLM's CPU attention cannot run the tiny checkpoint's 16)."""
    from services.core import settings

    path = settings.PROJECT_ROOT / "models" / "demo-detector"
    if not (path / "model.safetensors").exists():
        pytest.skip(f"the demo detector is missing ({path})")
    return path


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, demo_checkpoint):
    """A real tritonserver in vllm mode (the real vLLM engine): versions 1 (bf16) and 2 (fp8, or on
    the CPU its int8 W8A8 stand-in), the demo detector, on free ports; one per test session."""
    require_vllm()
    from services.serving.embedded_triton import EmbeddedTritonError, start_embedded_triton

    started = time.monotonic()
    try:
        server = start_embedded_triton(demo_checkpoint, workdir=tmp_path_factory.mktemp("triton-vllm"),
                                       ports=FREE_PORTS, engine="vllm")
    except EmbeddedTritonError as exc:  # once: the load stall that load_stalled_s detects (see there)
        if "did not finish loading" not in str(exc):
            raise
        print(f"\n[vllm_server] {str(exc).splitlines()[0]}: starting again")
        server = start_embedded_triton(demo_checkpoint, workdir=tmp_path_factory.mktemp("triton-vllm"),
                                       ports=FREE_PORTS, engine="vllm")
    print(f"\n[vllm_server] ready in {time.monotonic() - started:.0f} s")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def label_image_bytes() -> bytes:
    """A small PNG standing in for a label photo (protocol tests only)."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (640, 480), (240, 235, 220))
    draw = ImageDraw.Draw(img)
    draw.rectangle((300, 120, 560, 420), fill=(255, 255, 255), outline=(0, 0, 0), width=4)
    for y in range(150, 400, 24):
        draw.line((310, y, 550, y), fill=(0, 0, 0), width=2)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- GPU tests


def _gpu_unavailable_reason() -> str | None:
    """Why tests marked ``gpu`` cannot run here (None when torch sees a CUDA device)."""
    try:
        import torch  # imported only when a collected test needs a GPU
    except ImportError as exc:
        return f"needs an NVIDIA GPU: torch does not import here ({exc})"
    if not torch.cuda.is_available():
        return ("needs an NVIDIA GPU: torch.cuda.is_available() is False on this machine "
                "(these tests run on the GPU machine: `bash scripts/gpu_run.sh tests`)")
    return None


# Fixtures that start or use a real Triton server: a test that asks for one is marked ``server``.
SERVER_FIXTURES = {"triton_server", "own_triton_server"}
# Fixtures that load the trained demo detector into engines on the CPU (minutes on 2 cores): ``slow``.
SLOW_FIXTURES = {"demo_engines"}


def _mark_server_tests(items) -> None:
    """Mark ``server`` every test that uses a server fixture or drives the browser (``e2e``).

    Tests that start servers, apps or subprocesses by themselves carry ``pytest.mark.server``
    themselves; tests that load the trained detector into engines are marked ``slow``.
    `pytest -m "not server and not slow"` is the fast subset.
    """
    for item in items:
        uses_server = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses_server or item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.server)
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_collection_modifyitems(config, items):
    """Mark the server tests; skip the tests marked ``gpu`` where there is no CUDA device, saying so."""
    _mark_server_tests(items)
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in gpu_items:
        item.add_marker(skip)


# --------------------------------------------------------------------------- OpenAI-compatible server


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory, demo_checkpoint):
    """A real standalone ``vllm serve`` (OpenAI-compatible API) on the demo detector, bf16, on a free
    port; one per test session (about a minute to be ready on an idle machine, minutes on a loaded one)."""
    require_vllm()
    from services.serving.openai_server import start_openai_server

    started = time.monotonic()
    server = start_openai_server(demo_checkpoint, "bf16", workdir=tmp_path_factory.mktemp("vllm-serve"))
    print(f"\n[openai_server] {server.model_name} ready on {server.base_url} in {time.monotonic() - started:.0f} s")
    yield server
    server.stop()


SERVER_FIXTURES.add("openai_server")
