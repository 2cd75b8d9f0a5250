"""Whose memory a benchmark measures: the processes of the one server it talks to, or, where those
cannot be known, the whole GPU with the split per version unknown.

- The embedded server: its tritonserver pid and that process's tree.
- An external server on this machine: the process listening on the HTTP port of its URL (psutil's
  ``net_connections``) and that process's tree. Other tritonservers on the machine never count.
- An external server whose process cannot be known (a remote host, a listener owned by another
  user): no per-process reading at all. Memory is the whole GPU's (Triton's
  ``nv_gpu_memory_used_bytes`` from its metrics page; on this machine also NVML's device total) and
  the split per version is unknown.

:func:`memory_scope` decides; :meth:`MemoryScope.sampler_config` gives the sampler's settings and
:meth:`MemoryScope.describe` the run manifest's ``memory_scope`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.client.address_check import is_local_host, listening_pid
from services.client.server_target import ServerTarget, split_host_port

SERVER_TREE = "server-tree"
WHOLE_GPU = "whole-gpu"


@dataclass(frozen=True)
class MemoryScope:
    """``kind``: :data:`SERVER_TREE` (``root_pid`` and its descendants, attributed per version)
    or :data:`WHOLE_GPU` (no per-process reading; ``local`` says whether this machine's GPUs are
    the server's, so NVML's device totals count). ``why``: how it was decided, in words."""

    kind: str
    root_pid: int | None
    local: bool
    why: str

    @property
    def per_version_known(self) -> bool:
        return self.kind == SERVER_TREE

    def sampler_config(self) -> dict[str, Any]:
        """Settings of :meth:`services.bench.sampler.Sampler.configure` for this scope: no
        process found by name, ever (that would sum every tritonserver of the machine)."""
        if self.kind == SERVER_TREE:
            return {"root_pid": self.root_pid, "process_names": (), "host_memory": True, "nvml": True}
        return {"root_pid": None, "process_names": (), "host_memory": False, "nvml": self.local}

    def describe(self) -> dict[str, Any]:
        """The run manifest's record of what the memory readings cover."""
        return {
            "kind": self.kind,
            "server_pid": self.root_pid,
            "local": self.local,
            "per_version": "attributed through the process tree" if self.per_version_known else "unknown",
            "memory": ("the server's processes (GPU: NVML per process; host: PSS)"
                       if self.per_version_known else "the whole GPU's (every process on it)"),
            "why": self.why,
        }


def memory_scope(target: ServerTarget) -> MemoryScope:
    """Whose memory the readings of a run against ``target`` cover (see the module docstring)."""
    if target.server_pid is not None:
        return MemoryScope(SERVER_TREE, target.server_pid, True,
                           f"the {'embedded' if target.embedded else 'given'} server's pid {target.server_pid}")
    try:
        host, port = split_host_port(target.http_url, 8000)
    except ValueError as exc:  # an address the client refuses too: the run fails at its preflight
        return MemoryScope(WHOLE_GPU, None, False, str(exc))
    if not is_local_host(host):
        return MemoryScope(WHOLE_GPU, None, False,
                           f"{host} is not this machine: its processes cannot be read from here")
    pid = listening_pid(port)
    if pid is None:
        return MemoryScope(WHOLE_GPU, None, True,
                           f"no process of this user is seen listening on port {port}")
    return MemoryScope(SERVER_TREE, pid, True, f"pid {pid} listens on port {port}")
