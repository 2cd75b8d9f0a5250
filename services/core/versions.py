"""The model's versions and how the dashboard names them: ``"1"`` is bf16, ``"2"`` is fp8 (or, with
the vLLM engine on a machine without GPU, the int8 W8A8 stand-in: ``settings.version_precisions``)."""

from __future__ import annotations

from services.core import settings

VERSION_LABELS: dict[str, str] = settings.version_precisions()  # {"1": "bf16", "2": "fp8"}


def version_label(version: str) -> str:
    """``"bf16 (v1)"`` for a known version, ``"version 7"`` for any other number; any other key is a
    variant's own label (``services.client.variants``: ``"bf16-vllm"``) and is shown as it is."""
    if not str(version).isdigit():
        return str(version)
    name = VERSION_LABELS.get(str(version))
    return f"{name} (v{version})" if name else f"version {version}"
