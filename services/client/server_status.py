"""What the dashboard knows about the server: health, its version and each model version's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from services.client.errors import TritonClientError
from services.client.results import VersionState
from services.client.triton_client import TritonClient
from services.core.versions import VERSION_LABELS


@dataclass
class ServerStatus:
    """What the sidebar and the home page show about the server (collected by :func:`check_server`)."""

    url: str
    live: bool = False
    ready: bool = False
    server_version: str = ""
    versions: list[VersionState] = field(default_factory=list)
    error: str | None = None

    def version(self, version: str) -> VersionState:
        """The state of one version; ``MISSING`` when the repository index does not list it."""
        for v in self.versions:
            if v.version == str(version):
                return v
        return VersionState(model="", version=str(version), state="MISSING",
                            reason="not in the server's model repository index")

    @property
    def ready_versions(self) -> list[str]:
        return [v.version for v in self.versions if v.ready]


def check_server(client: TritonClient, versions: Sequence[str] = tuple(VERSION_LABELS)) -> ServerStatus:
    """Health, server version and the state of each model version; a failure is kept as ``error``."""
    status = ServerStatus(url=client.url)
    try:
        info = client.server_info()
        status.live, status.ready, status.server_version = info.live, info.ready, info.version
        found = client.versions()
    except TritonClientError as exc:
        status.error = str(exc)
        return status
    listed = {v.version for v in found}
    status.versions = found + [status.version(v) for v in versions if v not in listed]
    status.versions.sort(key=lambda v: (not v.version.isdigit(), int(v.version) if v.version.isdigit() else 0))
    return status
