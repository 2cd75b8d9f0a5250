"""Settings read from the environment, in one place.

| variable | meaning | default |
|---|---|---|
| ``QWEN_TRITON_URL`` | a running Triton server (``host:port`` of HTTP, or ``http://...``/``grpc://...``); unset: the embedded server | unset |
| ``QWEN_TRITON_PROTOCOL`` | ``http`` or ``grpc`` | ``http`` |
| ``QWEN_CHECKPOINT`` | checkpoint folder the embedded server serves (e.g. the real fine-tune) | the bundled demo detector, else a tiny random-weight one |
| ``QWEN_DATA_DIR`` | where results, built checkpoints and the embedded model repository live | ``<project>/data`` |
| ``QWEN_GPU_PRICE_PER_HOUR`` | price of one GPU-hour (dollars), for the cost per 1,000 images of a sweep | unset: cost unknown |
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "qwen"
VERSIONS = {"1": "bf16", "2": "fp8"}


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
