"""Settings read from the environment, in one place.

| variable | meaning | default |
|---|---|---|
| ``QWEN_TRITON_URL`` | a running Triton server (``host:port`` of HTTP, or ``http://...``/``grpc://...``); unset: the embedded server | unset |
| ``QWEN_TRITON_PROTOCOL`` | ``http`` or ``grpc`` | ``http`` |
| ``QWEN_CHECKPOINT`` | checkpoint folder the embedded server serves (e.g. the real fine-tune) | the bundled demo detector, else a tiny random-weight one |
| ``QWEN_VERSION_LABELS`` | what an external server's versions serve (``1=bf16,2=fp8``), where the local ``model_repository/`` does not describe it; a label the server does not state is shown as unverified | unset |
| ``QWEN_DATA_DIR`` | where results, built checkpoints and the embedded model repository live | ``<project>/data`` |
| ``QWEN_GPU_PRICE_PER_HOUR`` | price of one GPU-hour (dollars), for the cost per 1,000 images of a sweep | unset: cost unknown |
| ``QWEN_ENGINE`` | the embedded server's engine: ``transformers`` (one request at a time, any machine) or ``vllm`` (the real vLLM engine: ``scripts/setup.sh --vllm``) | ``transformers`` |
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "qwen"
VERSIONS = {"1": "bf16", "2": "fp8"}
ENGINES = ("transformers", "vllm")
DEFAULT_ENGINE = "transformers"
# What version 2 serves in vllm mode without a GPU: vLLM has no CPU kernel for fp8, so the embedded
# server quantizes the checkpoint to int8 weights and activations (compressed-tensors) instead.
INT8_STANDIN = "int8 W8A8 (CPU stand-in for fp8)"


def data_dir() -> Path:
    """The data folder (created on demand)."""
    path = Path(os.environ.get("QWEN_DATA_DIR") or PROJECT_ROOT / "data")
    path.mkdir(parents=True, exist_ok=True)
    return path


def triton_url() -> str | None:
    """The URL of an external Triton server, or None for the embedded one."""
    value = os.environ.get("QWEN_TRITON_URL", "").strip()
    return value or None


def triton_protocol() -> str:
    value = os.environ.get("QWEN_TRITON_PROTOCOL", "http").strip().lower()
    if value not in ("http", "grpc"):
        raise ValueError(f"QWEN_TRITON_PROTOCOL must be 'http' or 'grpc', not {value!r}")
    return value


def checkpoint_override() -> Path | None:
    """The checkpoint folder named by ``QWEN_CHECKPOINT``, if any."""
    value = os.environ.get("QWEN_CHECKPOINT", "").strip()
    return Path(value).expanduser().resolve() if value else None


def gpu_price_per_hour() -> float | None:
    """The price of one GPU-hour from ``QWEN_GPU_PRICE_PER_HOUR`` (None when unset); ValueError when it
    is not a positive number."""
    value = os.environ.get("QWEN_GPU_PRICE_PER_HOUR", "").strip()
    if not value:
        return None
    try:
        price = float(value)
    except ValueError:
        price = float("nan")
    if not price > 0 or price == float("inf"):
        raise ValueError(f"QWEN_GPU_PRICE_PER_HOUR must be a positive number of dollars, not {value!r}")
    return price


def engine() -> str:
    """The embedded server's engine (``QWEN_ENGINE``): ``transformers`` or ``vllm``."""
    value = os.environ.get("QWEN_ENGINE", "").strip().lower() or DEFAULT_ENGINE
    if value not in ENGINES:
        raise ValueError(f"QWEN_ENGINE must be one of {', '.join(ENGINES)}, not {value!r}")
    return value


def cuda_present() -> bool:
    """Whether this machine has an NVIDIA GPU (its device files), without importing torch."""
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def _local_url(url: str) -> bool:
    host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]").lower()
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


def version_precisions() -> dict[str, str]:
    """What each version serves, as the dashboard names it: ``VERSIONS``, except that version 2 of
    a vLLM engine on a machine without GPU (the embedded server, or a ``qwen-serve --engine vllm``
    on this machine) is the int8 W8A8 stand-in, never fp8."""
    precisions = dict(VERSIONS)
    url = triton_url()
    if engine() == "vllm" and not cuda_present() and (url is None or _local_url(url)):
        precisions["2"] = INT8_STANDIN
    return precisions
