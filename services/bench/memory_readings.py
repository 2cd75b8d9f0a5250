"""Memory readings of the serving processes: GPUs through NVML and host memory through psutil.

- :class:`NvmlReader`: every GPU (name, used/total memory, utilization) and the used GPU memory of
  each compute process.
- :class:`HostProcessReader`: the resident memory of the serving processes, shared pages counted
  once (the proportional set size, PSS: a page shared by n processes counts 1/n in each, so the sum
  over the processes that share it counts it once; read in full every 2 s, see
  :class:`SharedPages`): a configured root pid (the tritonserver pid)
  and its descendants, or the processes named in ``process_names`` and their descendants. This
  gives a true live memory chart where there is no GPU (the embedded CPU demo).
- :class:`ProcessAttribution`: a process is attributed to the Triton model version it serves
  through the process tree: each Python-backend model instance is a ``triton_python_backend_stub``
  process whose command line carries ``<repo>/<model>/<version>/model.py``
  (:func:`attribute_cmdline`), and every descendant of a stub serves that version too (vLLM's
  ``VLLM::EngineCore`` / ``VLLM::Worker`` processes, which hold the weights and the KV cache, are
  children of the stub and name no model); ``tritonserver`` (or the configured root) is
  ``"server"``. :meth:`ProcessAttribution.in_scope` tells whether a process belongs to the
  configured server at all (NVML lists every process on the GPU, other servers' included).

The sampler (:mod:`services.bench.sampler`) calls these in its thread, each source in its own
``try``/``except``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import psutil

_MODEL_PY = re.compile(r"(?:^|/)([^/]+)/(\d+)/model\.py$")

Attribute = Callable[[psutil.Process], "tuple[str | None, str | None, str]"]


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML sees it at one tick."""

    index: int
    name: str
    uuid: str | None
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_pct: float | None


@dataclass(frozen=True)
class ProcessReading:
    """The memory of one serving (or GPU compute) process at one tick.

    ``kind`` is ``"gpu"`` (GPU memory from NVML; ``gpu`` is the GPU index) or ``"host"`` (resident
    memory from psutil: the proportional set size, shared pages counted once over the processes
    that share them; the resident set size where the PSS cannot be read, ``measure`` says which).
    ``model``/``version`` come from the process tree: ``("qwen", "2")`` for a stub serving
    ``.../qwen/2/model.py`` and every descendant of it, ``("server", None)`` for tritonserver (or
    the configured root process), ``(None, None)`` when unknown.
    """

    pid: int
    kind: str
    model: str | None
    version: str | None
    memory_bytes: int
    gpu: int | None = None
    name: str = ""
    measure: str = ""  # "nvml" (GPU), "pss" or "rss" (host)


def _memory_info(pynvml, handle):
    """Device memory as nvidia-smi reports it: NVML's v2 reading, whose ``used`` leaves out the
    memory the driver reserves (v1's ``used`` counts it: +480 MiB on the H100, 1.6% of 29 GiB).
    Falls back to v1 where the driver or binding lacks v2."""
    version = getattr(pynvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except (pynvml.NVMLError, TypeError):
            pass
    return pynvml.nvmlDeviceGetMemoryInfo(handle)


def attribute_cmdline(cmdline: Sequence[str], name: str = "") -> tuple[str | None, str | None]:
    """``(model, version)`` served by a process, from its command line and name.

    A Python-backend stub carries ``<repo>/<model>/<version>/model.py``: that gives e.g.
    ``("qwen", "2")``. tritonserver gives ``("server", None)``; anything else ``(None, None)``.
    """
    for arg in cmdline:
        m = _MODEL_PY.search(arg)
        if m:
            return m.group(1), m.group(2)
    exe = os.path.basename(cmdline[0]) if cmdline else ""
    if "tritonserver" in (name, exe):
        return "server", None
    return None, None


class ProcessAttribution:
    """Which model version each process serves, and whether it is the configured server's, cached
    (used in the sampling thread only)."""

    _MAX_CACHED = 4096

    def __init__(self) -> None:
        self._attribution: dict[tuple[int, float], tuple[str | None, str | None, str]] = {}
        self._unresolved: dict[tuple[int, float], tuple[tuple[str, ...], tuple[str | None, str | None, str]]] = {}
        self._scope: dict[tuple[int, float, int | None], bool] = {}

    def forget_unresolved(self) -> None:
        """Drop the answers that are not a stub's ("server" answers and the scope depend on the
        root pid)."""
        self._unresolved.clear()
        self._scope.clear()

    def _trim(self) -> None:
        if max(len(self._attribution), len(self._unresolved), len(self._scope)) > self._MAX_CACHED:
            self._attribution.clear()
            self._unresolved.clear()
            self._scope.clear()

    def __call__(self, proc: psutil.Process, root_pid: int | None) -> tuple[str | None, str | None, str]:
        """``(model, version, name)`` of a process (``root_pid``: the configured server, named "server").

        A stub's own command line names its version; any other process takes the version of the
        nearest stub among its ancestors below the root (vLLM's engine processes). These answers
        are final and cached per (pid, create time). Other answers ("server", unknown) are not: a
        process seen between fork and exec still shows its parent's command line, and exec keeps
        pid and create time; so its command line is read again each time, and only when it has
        changed are the name and the answer looked up again.
        """
        key = (proc.pid, proc.create_time())
        hit = self._attribution.get(key)
        if hit is not None:
            return hit
        try:
            cmdline = tuple(proc.cmdline())
        except psutil.AccessDenied:
            cmdline = ()
        seen = self._unresolved.get(key)
        if seen is not None and seen[0] == cmdline:
            return seen[1]
        name = proc.name()
        model, version = attribute_cmdline(cmdline, name)
        if version is None and proc.pid != root_pid:
            model, version = self._stub_ancestor(proc, root_pid) or (model, version)
        if model is None and proc.pid == root_pid:
            model = "server"
        self._trim()
        if version is None:
            self._unresolved[key] = (cmdline, (model, version, name))
            return model, version, name
        self._unresolved.pop(key, None)
        self._attribution[key] = (model, version, name)
        return model, version, name

    def _stub_ancestor(self, proc: psutil.Process, root_pid: int | None) -> tuple[str, str] | None:
        """``(model, version)`` of the nearest ancestor that is a stub, not looking above the root."""
        try:
            parents = proc.parents()
        except psutil.Error:
            return None
        for parent in parents:
            if parent.pid == root_pid or parent.pid <= 1:
                return None
            try:
                known = self._attribution.get((parent.pid, parent.create_time()))
                if known is not None:
                    return known[0], known[1]  # type: ignore[return-value]
                model, version = attribute_cmdline(parent.cmdline(), parent.name())
            except psutil.Error:
                continue
            if version is not None:
                return model, version  # type: ignore[return-value]
        return None

    def in_scope(self, proc: psutil.Process, root_pid: int | None, any_process: bool) -> bool:
        """Whether a process is the configured server's: the root or one of its descendants. With
        no root: every process when ``any_process`` (processes found by name), else none."""
        if root_pid is None:
            return any_process
        if proc.pid == root_pid:
            return True
        key = (proc.pid, proc.create_time(), root_pid)
        hit = self._scope.get(key)
        if hit is None:
            try:
                hit = any(p.pid == root_pid for p in proc.parents())
            except psutil.Error:
                hit = False
            self._trim()
            self._scope[key] = hit
        return hit


class NvmlReader:
    """GPU memory and utilization through NVML (``pynvml`` from nvidia-ml-py), initialised on the
    first read; ``attribute(process)`` gives a compute process's ``(model, version, name)`` and
    ``keep(process)`` (None: every process) whether its reading belongs to the configured server:
    NVML lists every compute process on the GPU, other servers' and other users' included."""

    def __init__(self, attribute: Attribute, keep: Callable[[psutil.Process | None], bool] | None = None) -> None:
        self._attribute = attribute
        self._keep = keep
        self._ready = False
        self._names: dict[int, tuple[str, str | None]] = {}

    def shutdown(self) -> None:
        """Release NVML (it is initialised again by the next :meth:`read`)."""
        if self._ready:
            self._ready = False
            self._names.clear()
            try:
                import pynvml

                pynvml.nvmlShutdown()
            except Exception:
                pass  # the library is gone or was never loaded: nothing to release

    def read(self) -> tuple[list[GpuReading], list[ProcessReading]]:
        """Every GPU, and the GPU memory of each compute process with what it serves."""
        import pynvml  # from nvidia-ml-py; an ImportError is reported like any NVML failure

        if not self._ready:
            pynvml.nvmlInit()
            self._ready = True
        gpus: list[GpuReading] = []
        procs: list[ProcessReading] = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            if i not in self._names:
                name = pynvml.nvmlDeviceGetName(h)
                uuid = pynvml.nvmlDeviceGetUUID(h)
                self._names[i] = (
                    name.decode() if isinstance(name, bytes) else str(name),
                    uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                )
            name, uuid = self._names[i]
            mem = _memory_info(pynvml, h)
            try:
                util: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
            except pynvml.NVMLError:  # not supported (e.g. MIG): memory still counts
                util = None
            gpus.append(GpuReading(i, name, uuid, int(mem.used), int(mem.total), util))
            try:
                running = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            except pynvml.NVMLError:
                running = []
            for p in running:
                used = getattr(p, "usedGpuMemory", None)
                if used is None:
                    continue  # NVML could not tell this process's memory (e.g. under MIG/WDDM)
                try:
                    proc: psutil.Process | None = psutil.Process(p.pid)
                    if self._keep is not None and not self._keep(proc):
                        continue
                    model, version, pname = self._attribute(proc)  # type: ignore[arg-type]
                except (psutil.Error, OSError):
                    if self._keep is not None and not self._keep(None):
                        continue  # pid of another namespace: not known to be the server's
                    model, version, pname = None, None, ""
                procs.append(ProcessReading(p.pid, "gpu", model, version, int(used), i, pname, "nvml"))
        return gpus, procs


PSS_INTERVAL_S = 2.0  # how often each process's proportional set size is read in full


def resident_bytes(proc: psutil.Process) -> tuple[int, int | None]:
    """``(rss, pss)``: the process's resident set size, and its proportional set size
    (``/proc/<pid>/smaps_rollup`` through psutil's ``memory_full_info``): its private pages plus
    its share of each shared page, so that summing the processes that share a page (a forked
    engine, the libraries every stub maps) counts it once. ``pss`` is None where it cannot be read
    (another user's process). The PSS costs the kernel a walk of the page tables (~40 ms for a
    process with torch loaded, on a busy 2-core machine), the RSS nothing."""
    try:
        full = proc.memory_full_info()
        return int(full.rss), int(full.pss)
    except (psutil.AccessDenied, AttributeError):
        return int(proc.memory_info().rss), None


class SharedPages:
    """Resident memory with shared pages counted once, at every tick without reading the PSS at
    every tick: the PSS of each process is read every ``interval_s``; in between, its RSS is read
    (cheap) and the shared part last measured (RSS - PSS) taken off. What a process allocates or
    frees shows at once; what it newly shares, at the next full read."""

    def __init__(self, interval_s: float = PSS_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._shared: dict[tuple[int, float], tuple[int, float]] = {}  # (pid, ctime) -> (rss - pss, next read)

    def read(self, proc: psutil.Process, now: float) -> tuple[int, str]:
        """``(bytes, measure)``: ``"pss"`` (read now, or RSS less the shared part read within
        ``interval_s``) or ``"rss"`` where the PSS cannot be read."""
        key = (proc.pid, proc.create_time())
        known = self._shared.get(key)
        if known is not None and now < known[1]:
            return max(0, int(proc.memory_info().rss) - known[0]), "pss"
        rss, pss = resident_bytes(proc)
        if pss is None:
            return rss, "rss"
        if len(self._shared) > 4096:
            self._shared.clear()
        self._shared[key] = (rss - pss, now + self.interval_s)
        return pss, "pss"


class HostProcessReader:
    """The resident memory, shared pages counted once (:class:`SharedPages`), of the serving processes: a root pid and its descendants, or
    the processes named in ``process_names`` and theirs (see :meth:`_discover`); ``attribute(process)``
    gives each one's ``(model, version, name)``. Used in the sampling thread only."""

    def __init__(self, attribute: Attribute) -> None:
        self._attribute = attribute
        self._resident = SharedPages()
        self._procs: list[psutil.Process] = []
        self._seen_pids: set[int] | None = None  # every pid at the last discovery
        self._next_discovery = 0.0

    def reset(self) -> None:
        """Forget the processes found: the next :meth:`read` looks for them again."""
        self._procs = []
        self._next_discovery = 0.0

    def _discover(self, root_pid: int | None, process_names: Sequence[str]) -> list[psutil.Process]:
        """The serving processes: the root pid or the named processes, and their descendants.

        Under a root pid, after a first walk of every process, only the pids that are new since the
        last discovery are looked at: a process joins the tree by being forked from one of it (a
        new pid, whose parent is known from the moment it exists, exec or not), so the parentage
        of the others need not be read again (psutil's ``children(recursive=True)`` reads every
        process's ``/proc/<pid>/stat``). Processes that ended are dropped by :meth:`read`; a
        tree without its root (ended, or changed by ``Sampler.configure``) and a burst of new pids
        (half the machine's) are walked in full again. By name, every discovery walks every process (a
        process that takes the name by exec keeps its pid).
        """
        pids = set(psutil.pids())  # before the walk: a process forked during it is new next time
        known, self._seen_pids = self._seen_pids, pids
        found = {p.pid: p for p in self._procs}
        if (root_pid is None or known is None or root_pid not in found
                or 2 * len(pids - known) > len(pids)):
            # the root's end is reported by the walk (NoSuchProcess)
            return self._discover_all(root_pid, process_names)
        parent_of: dict[int, tuple[psutil.Process, int]] = {}
        for pid in pids - known - found.keys():
            try:
                proc = psutil.Process(pid)
                parent_of[pid] = (proc, proc.ppid())
            except psutil.Error:
                continue  # ended already
        added = True
        while added:  # children before or after their parents in pid order (pids wrap around)
            added = False
            for pid, (proc, ppid) in list(parent_of.items()):
                if ppid in found:
                    found[pid] = proc
                    del parent_of[pid]
                    added = True
        return list(found.values())

    def _discover_all(self, root_pid: int | None, process_names: Sequence[str]) -> list[psutil.Process]:
        """:meth:`_discover` by walking every process."""
        if root_pid is not None:
            roots = [psutil.Process(root_pid)]  # NoSuchProcess is this source's error
        else:
            wanted = set(process_names)
            roots = []
            for p in psutil.process_iter(["name", "cmdline"]):
                cmd = p.info.get("cmdline") or []
                exe = os.path.basename(cmd[0]) if cmd else ""
                if p.info.get("name") in wanted or exe in wanted:
                    roots.append(p)
            if not roots:
                raise LookupError(f"no process named {sorted(wanted)} is running")
        found: dict[int, psutil.Process] = {}
        for root in roots:
            found.setdefault(root.pid, root)
            try:
                for child in root.children(recursive=True):
                    found.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def read(self, now: float, root_pid: int | None, process_names: Sequence[str],
             discovery_interval_s: float) -> list[ProcessReading]:
        """The resident memory of each serving process; looks for them again every
        ``discovery_interval_s`` (``now``: ``time.perf_counter()``). LookupError when none is left."""
        if now >= self._next_discovery or not self._procs:
            self._procs = self._discover(root_pid, process_names)
            self._next_discovery = now + discovery_interval_s
        out: list[ProcessReading] = []
        alive: list[psutil.Process] = []
        for p in self._procs:
            try:
                resident, measure = self._resident.read(p, now)
                model, version, name = self._attribute(p)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # ended since discovery
            alive.append(p)
            out.append(ProcessReading(p.pid, "host", model, version, resident, None, name, measure))
        self._procs = alive
        if not out:
            self._next_discovery = 0.0
            raise LookupError("the serving processes have ended")
        return out

