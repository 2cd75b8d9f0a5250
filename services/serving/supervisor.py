"""Keep the embedded Triton server up: start it, watch it, restart it when it dies, clean up after it.

``Supervisor`` runs one embedded server (``services.serving.embedded_triton``) from a thread of its
own and says at any moment, in a ``Snapshot``, what is going on: starting (with progress: which
versions have loaded), ready, down and restarting after a back-off, or failed for good (after
``max_attempts`` failures in a row) with the last lines of the server's log that say why.

It watches, every ``poll_s`` seconds, the tritonserver process (``Popen.poll``: a dead server is
reaped, never left a zombie that looks alive) and each version's model process (the stub whose
command line names ``qwen/<version>/model.py``; a zombie counts as dead). When either dies, the
server is stopped (its process tree killed, its shared-memory files and its folder removed: see
``EmbeddedTriton.stop``) and started again after ``backoff_s``. ``restart()`` starts over after a
failure (the dashboard's Restart button).

``sweep_stale()`` removes what servers of owners that no longer run left behind in this data folder
(folders ``embedded_triton/server-<pid>-*``, the processes that still use them, and
``/dev/shm/qwen_triton_p<pid>_*``): the owner was killed before it could stop its server.

No streamlit here: ``ui.state`` holds the process's one supervisor and ``ui.sidebar`` shows it.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import psutil

from services.core import settings
from services.core.versions import version_label
from services.serving import embedded_triton
from services.serving.embedded_triton import EmbeddedTriton

log = logging.getLogger(__name__)

STARTING, READY, DOWN, FAILED, STOPPED = "starting", "ready", "down", "failed", "stopped"
LOG_LINES = 20  # the end of the server's log kept with a failure
_LOADED = re.compile(r"successfully loaded '([^']+)' version (\d+)")
_STUB_SCRIPT = re.compile(r"/([^/\s]+)/(\d+)/model\.py")


@dataclass(frozen=True)
class Snapshot:
    """What the supervisor knows now. ``generation`` grows at every change of phase or server."""

    phase: str
    message: str  # one sentence for the user
    server: EmbeddedTriton | None = None  # the running server (READY only)
    progress: float | None = None  # 0..1 while starting
    attempt: int = 0  # failures in a row so far
    max_attempts: int = 0
    retry_at: float | None = None  # time.time() of the next start (DOWN only)
    reason: str = ""  # why the server is down or failed
    log_tail: str = ""  # the end of its log, for a failure
    generation: int = 0

    @property
    def ready(self) -> bool:
        return self.phase == READY and self.server is not None


@dataclass
class _Starting:
    began: float = field(default_factory=time.monotonic)
    loaded: set[str] = field(default_factory=set)


def model_processes(server: EmbeddedTriton) -> dict[str, psutil.Process]:
    """version -> the model process (Python-backend stub) serving it, among the server's children."""
    found: dict[str, psutil.Process] = {}
    for proc in embedded_triton.process_tree(server.pid)[1:]:
        try:
            match = _STUB_SCRIPT.search(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
        if match and match.group(1) == settings.MODEL_NAME:
            found[match.group(2)] = proc
    return found


def _dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


class Supervisor:
    """One embedded server, kept up. ``start()`` begins (returns at once); ``snapshot()`` says how it goes.

    ``start_kwargs`` go to ``start_embedded_triton`` (checkpoint, ports, versions, device...).
    ``backoff_s``: seconds to wait before the 1st, 2nd... restart; ``max_attempts`` failures in a
    row (a start that fails, or a server that dies before it has run ``stable_s``) end in FAILED.
    """

    def __init__(self, start_kwargs: dict | None = None, *, poll_s: float = 1.0,
                 backoff_s: tuple[float, ...] = (2.0, 5.0, 10.0), max_attempts: int = 3, stable_s: float = 120.0,
                 start: Callable[..., EmbeddedTriton] = embedded_triton.start_embedded_triton) -> None:
        self.start_kwargs = dict(start_kwargs or {})
        self.versions = dict(self.start_kwargs.get("versions") or settings.VERSIONS)
        self.poll_s, self.backoff_s, self.max_attempts, self.stable_s = poll_s, backoff_s, max_attempts, stable_s
        self._start_server = start
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: EmbeddedTriton | None = None
        self._models: dict[str, psutil.Process] = {}
        self._ready_since = 0.0
        self._snap = Snapshot(STARTING, "Starting the embedded Triton server.", progress=0.0,
                              max_attempts=max_attempts)

    # ------------------------------------------------------------------ the API

    def start(self) -> "Supervisor":
        _ALL.add(self)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
                self._thread.start()
        return self

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snap

    def restart(self) -> None:
        """Start over: a failed supervisor tries again (``max_attempts`` more); a running server is replaced."""
        with self._lock:
            self._restart_asked = True
            if self._snap.phase == FAILED:  # said at once, so that the page that asked shows it
                self._snap = Snapshot(STARTING, "Starting the embedded Triton server again.", progress=0.0,
                                      max_attempts=self.max_attempts, generation=self._snap.generation + 1)
        self._wake.set()

    def stop(self) -> None:
        """Stop watching and stop the server (nothing of it left behind)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        self._stop_server()
        self._set(STOPPED, "The embedded Triton server was stopped.", server=None)

    def wait_ready(self, timeout: float) -> Snapshot:
        """Wait until READY (or FAILED, or ``timeout`` seconds); the snapshot then."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if snap.phase in (READY, FAILED):
                return snap
            time.sleep(0.2)
        return self.snapshot()

    # ------------------------------------------------------------------ the thread

    _restart_asked = False

    def _run(self) -> None:
        try:
            sweep_stale()
        except Exception:  # noqa: BLE001 - a sweep that fails must not keep the server from starting
            log.exception("could not sweep what dead embedded servers left behind")
        attempt = 0
        while not self._stopping.is_set():
            reason, tail = self._serve_once()
            if self._stopping.is_set():
                return
            stable = self._ready_since and time.monotonic() - self._ready_since >= self.stable_s
            attempt = 1 if stable else attempt + 1
            self._ready_since = 0.0
            if attempt >= self.max_attempts:
                self._set(FAILED, f"The embedded Triton server failed {attempt} times in a row and is not restarted "
                          f"by itself: {reason}.", reason=reason, log_tail=tail, attempt=attempt)
                self._wait_for_restart()
                attempt = 0
                continue
            delay = self.backoff_s[min(attempt, len(self.backoff_s)) - 1]
            self._set(DOWN, f"The embedded Triton server is down ({reason}); restarting it in {delay:g} s "
                      f"(attempt {attempt + 1} of {self.max_attempts}).", reason=reason, log_tail=tail,
                      attempt=attempt, retry_at=time.time() + delay)
            self._sleep(delay)

    def _serve_once(self) -> tuple[str, str]:
        """Start a server and watch it until it dies; (why it ended, the end of its log)."""
        with self._lock:
            self._restart_asked = False
        progress = _Starting()
        self._set(STARTING, self._starting_message(progress), progress=0.0, attempt=self._snap.attempt)
        try:
            server = self._start_server(on_wait=lambda s: self._on_wait(s, progress), **self.start_kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to start is a reason, shown to the user
            log.warning("the embedded Triton server could not start: %s", exc)
            text = str(exc)
            return text.splitlines()[0].rstrip(".") if text else type(exc).__name__, text
        self._server, self._models = server, model_processes(server)
        self._ready_since = time.monotonic()
        self._set(READY, f"The embedded Triton server is ready (pid {server.pid}).", server=server)
        while not self._stopping.is_set():
            reason = self._fault(server)
            if reason is None and self._restart_asked:
                reason = "a restart was asked for"
            if reason is not None:
                tail = server.log_tail(LOG_LINES)
                log.warning("the embedded Triton server is down: %s", reason)
                self._set(DOWN, f"The embedded Triton server is down ({reason}); cleaning up.", reason=reason,
                          log_tail=tail)
                self._stop_server()
                return reason, tail
            self._wake.wait(self.poll_s)
            self._wake.clear()
        return "stopped", ""

    def _fault(self, server: EmbeddedTriton) -> str | None:
        """Why this server can no longer serve, or None."""
        if not server.alive():
            return f"tritonserver {server.exit_reason()}"
        for version, proc in self._models.items():
            if _dead(proc):
                return f"the {version_label(version)} model process (pid {proc.pid}) died"
        missing = [v for v in self.versions if v not in self._models]
        if missing:
            return f"no model process for {', '.join(version_label(v) for v in missing)}"
        return None

    def _on_wait(self, server: EmbeddedTriton, progress: _Starting) -> None:
        if self._stopping.is_set():
            raise embedded_triton.EmbeddedTritonError("the supervisor was stopped while the server started")
        for model, version in _LOADED.findall(server.log_tail(400)):
            if model == settings.MODEL_NAME:
                progress.loaded.add(version)
        done = len(progress.loaded & set(self.versions))
        with self._lock:
            self._snap = replace(self._snap, message=self._starting_message(progress),
                                  progress=min(0.95, (1 + done) / (2 + len(self.versions))))

    def _starting_message(self, progress: _Starting) -> str:
        parts = [f"{version_label(v)} {'loaded' if v in progress.loaded else 'loading'}" for v in self.versions]
        elapsed = time.monotonic() - progress.began
        return (f"Starting the embedded Triton server: {', '.join(parts)} ({elapsed:.0f} s; "
                "the first start takes about a minute on a busy machine).")

    def _stop_server(self) -> None:
        server, self._server, self._models = self._server, None, {}
        if server is not None:
            server.stop()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and not self._restart_asked and time.monotonic() < deadline:
            self._wake.wait(deadline - time.monotonic())
            self._wake.clear()

    def _wait_for_restart(self) -> None:
        while not self._stopping.is_set() and not self._restart_asked:
            self._wake.wait(1.0)
            self._wake.clear()

    def _set(self, phase: str, message: str, **values) -> None:
        with self._lock:
            values.setdefault("max_attempts", self.max_attempts)
            self._snap = Snapshot(phase, message, generation=self._snap.generation + 1, **values)


_ALL: "weakref.WeakSet[Supervisor]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """At exit, stop watching first (registered after embedded_triton's, so run before it): a
    supervisor must not restart a server that the exit is stopping."""
    for sup in list(_ALL):
        sup.stop()


# --------------------------------------------------------------------------- leftovers of dead owners


_OWNED_FOLDER = re.compile(rf"^{re.escape(embedded_triton.WORKDIR_PREFIX)}(\d+)-")
_OWNED_SHM = re.compile(rf"^{re.escape(embedded_triton.SHM_PREFIX)}(\d+)_")


def _owner_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def sweep_stale(data_dir: Path | None = None) -> list[str]:
    """Remove what embedded servers of owners that no longer run left behind; what was removed.

    A folder ``<data>/embedded_triton/server-<pid>-*`` whose owner ``pid`` is gone: the processes
    whose command line names it (a tritonserver or stub that outlived its owner) are killed and the
    folder removed. A ``/dev/shm/qwen_triton_p<pid>_*`` file whose owner is gone is removed.
    """
    removed: list[str] = []
    root = (data_dir or settings.data_dir()) / "embedded_triton"
    stale = [p for p in (root.iterdir() if root.is_dir() else [])
             if (m := _OWNED_FOLDER.match(p.name)) and not _owner_alive(int(m.group(1)))]
    if stale:
        names = [str(p) for p in stale]
        procs = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                line = " ".join(proc.info["cmdline"] or [])
            except psutil.Error:
                continue
            if proc.pid != os.getpid() and any(n + "/" in line for n in names):
                procs.append(proc)
        for proc in procs:
            try:
                proc.kill()
                removed.append(f"process {proc.pid}")
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=5)
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    if embedded_triton.SHM_DIR.is_dir():
        for path in embedded_triton.SHM_DIR.iterdir():
            m = _OWNED_SHM.match(path.name)
            if m and not _owner_alive(int(m.group(1))):
                try:
                    path.unlink()
                    removed.append(str(path))
                except OSError:
                    pass
    if removed:
        log.info("removed what dead embedded servers left behind: %s", removed)
    return removed
