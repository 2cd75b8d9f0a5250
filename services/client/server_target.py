"""Which Triton server the dashboard talks to: an external one by URL, or the embedded default.

External (production): ``QWEN_TRITON_URL`` (HTTP, e.g. ``gpu-host:8000``), with the gRPC and metrics
addresses derived from it (ports 8001 and 8002) unless ``QWEN_TRITON_GRPC_URL`` /
``QWEN_TRITON_METRICS_URL`` say otherwise. Embedded: the process-wide server of
``services.serving.embedded_triton``, started on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from services.core import settings
from services.serving.checkpoint_catalog import CheckpointInfo, describe


@dataclass(frozen=True)
class ServerTarget:
    http_url: str  # host:port
    grpc_url: str  # host:port
    metrics_url: str  # full URL of the Prometheus endpoint
    protocol: str  # the protocol requests use: "http" or "grpc"
    embedded: bool
    checkpoint: CheckpointInfo | None  # known for the embedded server only
    repository: Path | None  # the model repository, when it is on this machine
    server_pid: int | None  # the tritonserver process, when it runs on this machine
    kind: str = "triton"  # or "openai": an OpenAI-compatible server (vllm serve), http_url its host:port

    def url(self, protocol: str | None = None) -> str:
        return self.http_url if (protocol or self.protocol) == "http" else self.grpc_url

    @property
    def label(self) -> str:
        if self.kind == "openai":
            return f"OpenAI-compatible server at http://{self.http_url}"
        kind = "embedded" if self.embedded else "external"
        return f"{kind} Triton at {self.http_url} (gRPC {self.grpc_url})"


def split_host_port(url: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``http://host:port`` or ``grpc://host:port`` to (host, port)."""
    text = url.strip()
    parsed = urlparse(text if "://" in text else f"//{text}")
    if not parsed.hostname:
        raise ValueError(f"not a server address: {url!r}")
    return parsed.hostname, parsed.port or default_port


def external_target(url: str, protocol: str | None = None, grpc_url: str | None = None,
                    metrics_url: str | None = None) -> ServerTarget:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    host, port = split_host_port(url, 8001 if scheme == "grpc" else 8000)
    if scheme == "grpc":
        derived_grpc, http_url = f"{host}:{port}", f"{host}:8000"
    else:
        http_url, derived_grpc = f"{host}:{port}", f"{host}:8001"
    grpc_url = grpc_url or os.environ.get("QWEN_TRITON_GRPC_URL", "").strip() or derived_grpc
    metrics = metrics_url or os.environ.get("QWEN_TRITON_METRICS_URL", "").strip() or f"http://{host}:8002/metrics"
    return ServerTarget(http_url, grpc_url, metrics, protocol or ("grpc" if scheme == "grpc" else settings.triton_protocol()),
                        embedded=False, checkpoint=None, repository=None, server_pid=None)


def openai_target(url: str, metrics_url: str | None = None) -> ServerTarget:
    """An OpenAI-compatible server (``http://host:port``, a ``/v1`` path allowed): its metrics at ``/metrics``."""
    host, port = split_host_port(url, 8000)
    return ServerTarget(f"{host}:{port}", "", metrics_url or f"http://{host}:{port}/metrics", "http", embedded=False,
                        checkpoint=None, repository=None, server_pid=None, kind="openai")


def embedded_target(protocol: str | None = None) -> ServerTarget:
    from services.serving.embedded_triton import shared_server

    return server_target(shared_server(), protocol)


def server_target(server, protocol: str | None = None) -> ServerTarget:
    """The target of a running embedded server (``services.serving.embedded_triton.EmbeddedTriton``)."""
    return ServerTarget(server.http_url, server.grpc_url, server.metrics_url, protocol or settings.triton_protocol(),
                        embedded=True, checkpoint=describe(server.checkpoint), repository=server.repository,
                        server_pid=server.pid)


def current_target(url: str | None = None, protocol: str | None = None) -> ServerTarget:
    """The server named by ``url`` (or ``QWEN_TRITON_URL``), else the embedded one."""
    url = url or settings.triton_url()
    return external_target(url, protocol) if url else embedded_target(protocol)
