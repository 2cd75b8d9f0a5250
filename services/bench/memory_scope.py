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

A run on variants (``services.client.variants``) reads one scope per server: :func:`run_watch`
gives the main (Triton) server's and one :class:`VariantServer` per OpenAI-compatible variant,
decided the same way from its URL (a ``vllm serve`` on this machine: the process listening on its
port, and that tree; a remote one: the whole GPU's, the variant's share unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from services.client.address_check import is_local_host, listening_pid
from services.client.server_target import ServerTarget, split_host_port

SERVER_TREE = "server-tree"
WHOLE_GPU = "whole-gpu"
SHARED_TREE = "shared-server-tree"  # a variant whose server serves another variant too: read once, there
SHARED_MEMORY = "the processes of a server that serves several variants, read once for all of them"


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
            "memory": ("the server's processes (GPU: NVML per process; host: PSS)" if self.per_version_known
                       else SHARED_MEMORY if self.kind == SHARED_TREE else "the whole GPU's (every process on it)"),
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


# --------------------------------------------------------------------------- one scope per variant


@dataclass(frozen=True)
class VariantServer:
    """One OpenAI-compatible variant's server as the sampler reads it: its own ``/metrics`` (the
    ``vllm:*`` series, relabelled ``model``/``version`` = the variant's model and key) and, when its
    scope is :data:`SERVER_TREE`, the memory of its process tree (API server, EngineCore, workers)
    attributed to the variant's key. A remote one has metrics only: its memory is the whole GPU's
    and its share unknown, never summed from another server's readings."""

    key: str
    model: str
    metrics_url: str | None
    scope: MemoryScope
    memory_key: str = ""  # the version its memory is stored under: its key, or "a + b" for a shared server
    metrics_key: str = ""  # the version its vllm:* series are stored under: its key, or "a + b" (same model)
    reads_metrics: bool = True  # False: another variant reads the same model's series of the same page

    @property
    def memory_version(self) -> str:
        return self.memory_key or self.key

    @property
    def metrics_version(self) -> str:
        return self.metrics_key or self.key

    @property
    def page(self) -> str | None:
        """The metrics page this variant reads (None: it is read under another variant's entry)."""
        return self.metrics_url if self.reads_metrics else None


@dataclass(frozen=True)
class RunWatch:
    """What a run on variants reads: the main server (``scope``, ``metrics_url``: Triton's, with its
    versions renamed to the variants' keys through ``version_keys``; none when every variant is an
    OpenAI server) and every OpenAI variant's server (``servers``)."""

    scope: MemoryScope | None
    metrics_url: str | None
    version_keys: dict[str, str]
    servers: tuple[VariantServer, ...]

    def sampler_config(self) -> dict[str, Any]:
        """Settings of :meth:`services.bench.sampler.Sampler.configure` for the whole run."""
        main = self.scope.sampler_config() if self.scope is not None else \
            {"root_pid": None, "process_names": (), "host_memory": False,
             "nvml": any(s.scope.local for s in self.servers)}
        return {**main, "metrics_url": self.metrics_url, "version_keys": dict(self.version_keys),
                "variant_servers": self.servers}

    def describe(self) -> dict[str, Any]:
        """The manifest's ``memory_scopes``: per variant key, what its memory readings cover."""
        out = {key: {**self.scope.describe(), "server": "main"} for key in self.version_keys.values()} \
            if self.scope is not None else {}
        for s in self.servers:
            out[s.key] = {**s.scope.describe(), "server": s.metrics_url}
            if s.memory_key:  # the first variant of a shared server: its tree holds the others' too
                out[s.key].update(per_version=f"unknown (one process tree serves {s.memory_key})",
                                  memory=SHARED_MEMORY, stored_as=s.memory_key)
            if s.metrics_key:
                out[s.key]["metrics_stored_as"] = s.metrics_key  # its series are the joint ones
            if s.scope.kind == SHARED_TREE:
                out[s.key]["stored_as"] = next(o.memory_key for o in self.servers
                                               if o.memory_key and o.scope.root_pid == s.scope.root_pid)
        return out


def run_watch(variants: Any, targets: Mapping[str, ServerTarget], main: ServerTarget) -> RunWatch:
    """The :class:`RunWatch` of a run on ``variants`` (resolved, keys set; ``targets``: each key's
    server, as ``VariantClients.targets``; ``main``: the run's Triton server). Triton variants on the
    main server are read through it; every OpenAI variant through its own server."""
    triton = [v for v in variants if v.kind == "triton" and targets[v.key] == main]
    servers = _shared_trees([VariantServer(v.key, v.model, targets[v.key].metrics_url, memory_scope(targets[v.key]))
                             for v in variants if v.kind == "openai"])
    if not triton:
        return RunWatch(None, None, {}, servers)
    keys = {v.version: v.key for v in triton}
    return RunWatch(memory_scope(main), main.metrics_url, keys, servers)


def _shared_trees(servers: list[VariantServer]) -> tuple[VariantServer, ...]:
    """Variants served by one process tree (one ``vllm serve`` under two model names or labels): its
    memory is read once, under the joint name ``"a + b"`` (the split between them is unknown); the
    others' scope says where it went (:data:`SHARED_TREE`). Each still reads its own model's metrics."""
    servers = _shared_pages(servers)
    by_root: dict[int, list[VariantServer]] = {}
    for s in servers:
        if s.scope.kind == SERVER_TREE and s.scope.root_pid is not None:
            by_root.setdefault(s.scope.root_pid, []).append(s)
    out = []
    for s in servers:
        group = by_root.get(s.scope.root_pid) if s.scope.kind == SERVER_TREE else None  # type: ignore[arg-type]
        if not group or len(group) == 1:
            out.append(s)
            continue
        joint = " + ".join(g.key for g in group)
        if s is group[0]:
            out.append(replace(s, memory_key=joint))
        else:
            out.append(replace(s, scope=MemoryScope(SHARED_TREE, s.scope.root_pid, True, (
                f"pid {s.scope.root_pid} serves {joint}: its memory is stored once, as {joint!r}; "
                "the split between them is unknown"))))
    return tuple(out)


def _shared_pages(servers: list[VariantServer]) -> list[VariantServer]:
    """Variants that are one model of one server under several labels: the page's series of that model
    cannot tell their requests apart, so they are read once and stored under the joint name ``"a + b"``."""
    groups: dict[tuple[str | None, str], list[VariantServer]] = {}
    for s in servers:
        groups.setdefault((s.metrics_url, s.model), []).append(s)
    out = []
    for s in servers:
        group = groups[(s.metrics_url, s.model)]
        if len(group) == 1:
            out.append(s)
        else:
            out.append(replace(s, metrics_key=" + ".join(g.key for g in group), reads_metrics=s is group[0]))
    return out
