"""Memory readings of the serving processes: GPUs through NVML and host memory through psutil.

- :class:`NvmlReader`: every GPU (name, used/total memory, utilization) and the used GPU memory of
  each compute process.
- :class:`HostProcessReader`: the resident set size of the serving processes: a configured root pid
  (the tritonserver pid) and its descendants, or the processes named in ``process_names`` and
  their descendants. This gives a true live memory chart where there is no GPU (the embedded CPU
  demo).
- :class:`ProcessAttribution`: a process is attributed to the Triton model version it serves
  through its command line (:func:`attribute_cmdline`): each Python-backend model instance is a
  ``triton_python_backend_stub`` process whose command line carries
  ``<repo>/<model>/<version>/model.py``; ``tritonserver`` (or the configured root) is ``"server"``.

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
    set size from psutil). ``model``/``version`` come from the command line: ``("qwen", "2")`` for a
    stub serving ``.../qwen/2/model.py``, ``("server", None)`` for tritonserver (or the configured
    root process), ``(None, None)`` when unknown.
    """

    pid: int
    kind: str
    model: str | None
    version: str | None
    memory_bytes: int
    gpu: int | None = None
    name: str = ""


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
    """Which model version each process serves, cached (used in the sampling thread only)."""

    def __init__(self) -> None:
        self._attribution: dict[tuple[int, float], tuple[str | None, str | None, str]] = {}
        self._unresolved: dict[tuple[int, float], tuple[tuple[str, ...], tuple[str | None, str | None, str]]] = {}

    def forget_unresolved(self) -> None:
        """Drop the answers that are not a stub's ("server" answers depend on the root pid)."""
        self._unresolved.clear()

    def __call__(self, proc: psutil.Process, root_pid: int | None) -> tuple[str | None, str | None, str]:
        """``(model, version, name)`` of a process (``root_pid``: the configured server, named "server").

        Stub attributions (model and version found) are cached per (pid, create time). Other
        answers ("server", unknown) are not final: a process seen between fork and exec still shows
        its parent's command line, and exec keeps pid and create time; so its command line is read
        again each time, and only when it has changed are the name and the answer looked up again.
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
        if model is None and proc.pid == root_pid:
            model = "server"
        if len(self._attribution) > 4096 or len(self._unresolved) > 4096:
            self._attribution.clear()
            self._unresolved.clear()
        if version is None:
            self._unresolved[key] = (cmdline, (model, version, name))
            return model, version, name
        self._unresolved.pop(key, None)
        self._attribution[key] = (model, version, name)
        return model, version, name


class NvmlReader:
    """GPU memory and utilization through NVML (``pynvml`` from nvidia-ml-py), initialised on the
    first read; ``attribute(process)`` gives a compute process's ``(model, version, name)``."""

    def __init__(self, attribute: Attribute) -> None:
        self._attribute = attribute
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
                    model, version, pname = self._attribute(psutil.Process(p.pid))
                except (psutil.Error, OSError):
                    model, version, pname = None, None, ""  # pid of another namespace
                procs.append(ProcessReading(p.pid, "gpu", model, version, int(used), i, pname))
        return gpus, procs


class HostProcessReader:
    """The resident set size (psutil) of the serving processes: a root pid and its descendants, or
    the processes named in ``process_names`` and theirs (see :meth:`_discover`); ``attribute(process)``
    gives each one's ``(model, version, name)``. Used in the sampling thread only."""

    def __init__(self, attribute: Attribute) -> None:
        self._attribute = attribute
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
                rss = p.memory_info().rss
                model, version, name = self._attribute(p)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # ended since discovery
            alive.append(p)
            out.append(ProcessReading(p.pid, "host", model, version, int(rss), None, name))
        self._procs = alive
        if not out:
            self._next_discovery = 0.0
            raise LookupError("the serving processes have ended")
        return out

