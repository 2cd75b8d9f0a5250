"""The one place that talks to Triton: server state, the model's versions, and detection requests.

``TritonClient`` speaks to one Triton server over HTTP or gRPC and turns every answer into a plain
dataclass (``ServerInfo``, ``VersionState``, ``Completion``) and every failure into a subclass of
``TritonClientError`` whose message can be shown to the user as it is.

Transports for ``detect`` (the version is always addressed explicitly):

* ``protocol="http", stream=False``: ``POST /v2/models/{m}/versions/{v}/generate`` (one response).
* ``protocol="http", stream=True``: ``POST .../generate_stream`` (server-sent events).
* ``protocol="grpc"``: ``ModelStreamInfer`` through ``tritonclient.grpc`` (``start_stream`` /
  ``async_stream_infer``); the model is decoupled, so gRPC always uses the stream; with
  ``stream=False`` the ``stream`` tensor is false and exactly one response comes back.

Why ``urllib3`` for the HTTP generate endpoints: ``tritonclient.http`` has no API for Triton's
generate extension (``/generate``, ``/generate_stream``), and its ``infer`` (``/infer``) is refused
for decoupled models such as the vLLM backend's (HTTP 501). Those two endpoints are therefore
called through a ``urllib3`` connection pool (the server-sent events read chunk by chunk as they
arrive); every other call (health, metadata, repository index, model config, gRPC inference) goes
through ``tritonclient``. ``requests`` (which wraps ``urllib3``) cost about 0.4 ms more per request
on this project's CPU machines, a fifth of the 2 ms that Triton may add; and like ``tritonclient``,
the pool does not read proxy settings from the environment.

gRPC concurrency: a ``tritonclient.grpc`` client holds one stream and is not thread-safe for
streaming, and an error response on a stream carries no request id (tritonclient hands the callback
only the message), so several requests on one stream cannot be told apart when one fails. The client
therefore keeps a pool of streams, each used by one request at a time: a call borrows an idle stream
(or opens one, up to ``max_streams``), and gives it back when its final response has arrived. A
stream whose request timed out is closed with its pending request cancelled, so no late response can
reach the next borrower. Opening a stream costs a channel and a thread; reusing one costs nothing.

A version that is not ready is never sent down a stream. Triton 2.51 (the embedded server) aborts
with ``proto_buffer_writer.h: ASSERTION FAILED: !byte_buffer->Valid()`` when a stream request for an
unknown or unavailable version follows a served request on the same stream: it writes the error
while the previous response's write is still pending (reproduced: a few pairs suffice). So before a
stream request for a version not checked in the last ``VERSION_RECHECK_S`` seconds, the client asks
the unary ModelReady (and, for a version that is not ready, ModelMetadata for the server's own
message). A version unloaded within that window can still reach the stream.

Example::

    client = TritonClient("127.0.0.1:8001", protocol="grpc")
    print(client.server_info().version, [v.state for v in client.versions()])
    done = client.detect(base64.b64encode(png_bytes).decode(), version="2", max_tokens=128)
    print(done.text, done.num_output_tokens, done.ttft_ms, done.latency_ms)
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import re
import socket
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import urllib3
from tritonclient.utils import InferenceServerException
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from services.core import settings
from services.core.prompt import build_prompt

log = logging.getLogger(__name__)

Protocol = Literal["http", "grpc"]
PROTOCOLS = ("http", "grpc")
DEFAULT_MODEL = settings.MODEL_NAME
RETURN_FLAGS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")
VERSION_RECHECK_S = 5.0  # how long a version found ready goes without a new check before gRPC stream requests
_JSON_HEADERS = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- errors


class TritonClientError(RuntimeError):
    """Base of every error this module raises; ``str(error)`` is a message fit for the user.

    Attributes: ``url`` (the server), ``version`` (the model version, when a request named one),
    ``server_message`` (the server's own words, when it sent any) and ``status`` (the HTTP status
    or gRPC status code, when known).
    """

    def __init__(self, message: str, *, url: str = "", version: str | None = None,
                 server_message: str | None = None, status: str | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.version = version
        self.server_message = server_message
        self.status = status


class ServerUnreachable(TritonClientError):
    """No connection to the server: refused, unknown host, reset or closed."""


class VersionNotReady(TritonClientError):
    """The model version is unknown to the server, not loaded, or not in the READY state."""


class RequestTimeout(TritonClientError):
    """The request did not finish within the client's timeout."""


class BadRequest(TritonClientError):
    """The server rejected the request as malformed (HTTP 400: missing input, unparseable body...)."""


class InferenceError(TritonClientError):
    """The model failed on this request (e.g. an image it cannot decode)."""


class StreamError(InferenceError):
    """An error inside a stream that had started: an error event or body under HTTP 200, a gRPC
    error after responses of the request had arrived, a connection or gRPC stream that broke
    mid-response, or an HTTP stream that ended without any response."""


# Triton's and the vLLM backend's own words, most specific first (see _classify).
_VERSION_PATTERNS = (
    re.compile(r"unknown model", re.I),
    re.compile(r"is not at ready state", re.I),
    re.compile(r"has no available versions", re.I),
    re.compile(r"model '.*' (version \d+ )?is not (found|ready)", re.I),
)
_BAD_REQUEST_PATTERNS = (
    re.compile(r"missing required input|input '[^']+'.* is required", re.I),
    # The vLLM backend reads text_input without checking it is there: a missing input surfaces as
    # "Error generating stream: 'NoneType' object has no attribute 'as_numpy'".
    re.compile(r"'NoneType' object has no attribute 'as_numpy'"),
    re.compile(r"unable to parse|failed to parse", re.I),
    re.compile(r"unexpected inference input|unexpected shape|expected number of inputs", re.I),
    re.compile(r"generate expects model to produce exactly 1 response", re.I),
)
_MODEL_ERROR_PREFIX = "Error generating stream"


def _classify(server_message: str, *, url: str, model: str, version: str | None,
              status: str | int | None = None, in_stream: bool = False,
              missing: list[str] | None = None) -> TritonClientError:
    """The typed error for an error the server reported.

    The class is chosen from the message first, because gRPC stream errors carry no status code
    and the HTTP status does not separate a malformed request from a failed generation (both are
    400 under the vLLM backend); so the same fault gives the same class on every transport.
    ``in_stream``: the error came after the stream had started (HTTP status 200, or a gRPC error
    after responses of the request): unless it names a version or malformed request, it is a
    ``StreamError``. ``missing``: required inputs the request lacked (any error is then a
    ``BadRequest`` naming them).
    """
    msg = (server_message or "").strip() or "(no message)"
    where = f"the Triton server at {url}"
    common = dict(url=url, version=version, server_message=server_message, status=status)
    if any(p.search(msg) for p in _VERSION_PATTERNS) or status == 404:
        which = f"Version {version} of model '{model}'" if version else f"Model '{model}'"
        return VersionNotReady(f"{which} is not loaded and ready on {where}: {msg}", **common)
    if status in ("StatusCode.UNAVAILABLE",):
        return ServerUnreachable(f"The Triton server at {url} is not reachable: {msg}", **common)
    if status in ("StatusCode.DEADLINE_EXCEEDED",):
        return RequestTimeout(f"The request to {where} timed out: {msg}", **common)
    if missing or any(p.search(msg) for p in _BAD_REQUEST_PATTERNS) or (
            status == 400 and not msg.startswith(_MODEL_ERROR_PREFIX)) or status == "StatusCode.INVALID_ARGUMENT":
        hint = f" (required input missing: {', '.join(missing)})" if missing else ""
        return BadRequest(f"{where[0].upper() + where[1:]} rejected the request as malformed{hint}: {msg}", **common)
    if in_stream:
        return StreamError(f"The response stream from {where} failed (model '{model}' version {version}): {msg}",
                           **common)
    return InferenceError(f"Model '{model}' version {version} could not answer this request: {msg}", **common)


# --------------------------------------------------------------------------- results


@dataclass
class ServerInfo:
    """What the server says about itself."""

    url: str
    protocol: str
    live: bool
    ready: bool
    name: str
    version: str
    extensions: list[str] = field(default_factory=list)


@dataclass
class VersionState:
    """One version of the model as the repository index lists it (state READY, UNAVAILABLE, LOADING...)."""

    model: str
    version: str
    state: str
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "READY"


@dataclass
class Completion:
    """One finished detection request, with its timings (``time.perf_counter_ns``).

    ``num_output_tokens`` is the sum of the per-response counts (the server's count for the whole
    answer when there is one response); ``token_responses`` counts the responses that carried
    tokens or text, and ``chunk_ns`` holds their arrival times (for inter-token latency).
    ``first_token_ns``/``ttft_ms`` are those of the first response carrying a token (counted by
    the server, or visible as text: a token that decodes to nothing yet, such as a special token
    or part of a multi-byte character, is still the first token), and ``None`` when the request
    did not stream.
    """

    text: str
    num_input_tokens: int | None
    num_output_tokens: int
    finish_reason: str | None
    version: str
    protocol: str
    stream: bool
    request_id: str
    send_ns: int
    recv_ns: int
    first_token_ns: int | None = None
    chunk_ns: list[int] = field(default_factory=list)
    token_responses: int = 0
    responses: int = 0

    @property
    def latency_ms(self) -> float:
        return (self.recv_ns - self.send_ns) / 1e6

    @property
    def ttft_ms(self) -> float | None:
        if not self.stream or self.first_token_ns is None:
            return None
        return (self.first_token_ns - self.send_ns) / 1e6

    @property
    def itl_ms(self) -> list[float]:
        """Gaps between consecutive chunks (ms)."""
        return [(b - a) / 1e6 for a, b in zip(self.chunk_ns, self.chunk_ns[1:])]

    @property
    def tpot_ms(self) -> float | None:
        """(latency - TTFT) / (output tokens - 1), or None where undefined."""
        ttft = self.ttft_ms
        if ttft is None or self.num_output_tokens < 2:
            return None
        return (self.latency_ms - ttft) / (self.num_output_tokens - 1)


class _Collector:
    """Accumulates the responses of one request into a ``Completion``."""

    def __init__(self) -> None:
        self.text = bytearray()
        self.num_input_tokens: int | None = None
        self.num_output_tokens = 0
        self.finish_reason: str | None = None
        self.first_token_ns: int | None = None
        self.chunk_ns: list[int] = []
        self.token_responses = 0
        self.responses = 0
        self.version: str | None = None

    def add(self, t_ns: int, text: bytes | None, n_in: int | None, n_out: int | None,
            finish_reason: str | None, version: str | None = None) -> None:
        self.responses += 1
        if version:
            self.version = str(version)
        if n_in is not None:
            self.num_input_tokens = int(n_in)
        if text:
            self.text += text
        if n_out:
            self.num_output_tokens += int(n_out)
        if text or n_out:
            if self.first_token_ns is None:  # a token counts even when its text is not visible yet
                self.first_token_ns = t_ns
            self.token_responses += 1
            self.chunk_ns.append(t_ns)
        if finish_reason not in (None, "", "None"):
            self.finish_reason = finish_reason

    def completion(self, *, version: str, protocol: str, stream: bool, request_id: str, send_ns: int,
                   recv_ns: int) -> Completion:
        return Completion(
            text=self.text.decode("utf-8", errors="replace"),
            num_input_tokens=self.num_input_tokens,
            num_output_tokens=self.num_output_tokens,
            finish_reason=self.finish_reason,
            version=self.version or version,
            protocol=protocol,
            stream=stream,
            request_id=request_id,
            send_ns=send_ns,
            recv_ns=recv_ns,
            first_token_ns=self.first_token_ns if stream else None,
            chunk_ns=self.chunk_ns,
            token_responses=self.token_responses,
            responses=self.responses,
        )


def _scalar(value: Any) -> Any:
    """A generate-extension value: scalars stay, one-element lists unwrap, string lists join."""
    if isinstance(value, list):
        if len(value) == 1:
            return value[0]
        if all(isinstance(v, str) for v in value):
            return "".join(value)
    return value


# --------------------------------------------------------------------------- URLs


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """Split ``host:port``, ``http://host:port`` or ``grpc://host:port`` into (host:port, protocol).

    A scheme in the URL decides the protocol; ``protocol`` must then agree with it. Without a
    scheme, ``protocol`` (default ``http``) decides.
    """
    text = (url or "").strip()
    if not text:
        raise ValueError("the Triton URL is empty")
    scheme = None
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", text)
    if match:
        scheme, text = match.group(1).lower(), match.group(2)
        if scheme not in PROTOCOLS:
            raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}: use host:port, http://host:port "
                             "or grpc://host:port")
    text = text.rstrip("/")
    if not text or "/" in text:
        raise ValueError(f"the Triton URL {url!r} must be host:port (no path)")
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
    if scheme and protocol and scheme != protocol:
        raise ValueError(f"the URL {url!r} says {scheme} but protocol={protocol!r} was asked for")
    return text, scheme or protocol or "http"


# --------------------------------------------------------------------------- gRPC stream pool


class _GrpcStream:
    """One ``tritonclient.grpc`` client with its stream open; responses land in ``responses``."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.SimpleQueue = queue.SimpleQueue()
        self.reusable = True
        self.idle_since = time.monotonic()
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result, error) -> None:
        self.responses.put((time.perf_counter_ns(), result, error))

    def stale(self) -> bool:
        """Drain what a finished request left behind; True if the stream itself has failed since."""
        broken = False
        while True:
            try:
                _, _, error = self.responses.get_nowait()
            except queue.Empty:
                return broken
            if error is not None and error.status() is not None:  # a stream-level gRPC error
                broken = True

    def close(self, cancel: bool = False) -> None:
        """End the stream: half-close it (``cancel=False``, for an idle stream) or cancel what is in
        flight (``cancel=True``: the server cancels the request)."""
        inner = getattr(self.client, "_stream", None)
        try:
            self.client.stop_stream(cancel_requests=cancel)
        except Exception:  # closing a broken stream may raise; nothing is left to release
            pass
        if cancel and inner is not None and hasattr(inner, "_request_queue"):
            # tritonclient leaves gRPC's request-consumer thread blocked on its queue after a
            # cancel; the end-of-stream marker lets it finish instead of leaking one thread per cancel.
            inner._request_queue.put(None)
        try:
            self.client.close()
        except Exception:
            pass


class _GrpcStreamPool:
    """Streams lent to one request at a time (see the module docstring).

    Idle streams are closed after ``idle_close_s`` (an open stream keeps tritonserver from shutting
    down promptly, and tritonclient's stream thread keeps this process from exiting), and all are
    closed when the interpreter exits.
    """

    def __init__(self, url: str, max_streams: int, idle_close_s: float = 30.0) -> None:
        self.url = url
        self.max_streams = max_streams
        self.idle_close_s = idle_close_s
        self._idle: list[_GrpcStream] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_streams)
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None
        self.opened = 0
        _LIVE_POOLS.add(self)

    @contextmanager
    def borrow(self, timeout: float) -> Iterator[_GrpcStream]:
        if self._closed.is_set():
            raise RuntimeError("this TritonClient is closed")
        if not self._slots.acquire(timeout=max(timeout, 0.0)):
            raise TimeoutError(f"all {self.max_streams} gRPC streams stayed busy for {timeout:g} s")
        stream = None
        try:
            while stream is None:
                with self._lock:
                    candidate = self._idle.pop() if self._idle else None
                if candidate is None:
                    stream = _GrpcStream(self.url)
                    with self._lock:
                        self.opened += 1
                elif candidate.stale():
                    candidate.close(cancel=True)
                else:
                    stream = candidate
            yield stream
        finally:
            if stream is not None:
                if stream.reusable and not self._closed.is_set():
                    stream.idle_since = time.monotonic()
                    with self._lock:
                        self._idle.append(stream)
                    self._start_reaper()
                else:
                    stream.close(cancel=True)
            self._slots.release()

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None or self.idle_close_s <= 0:
                return
            self._reaper = threading.Thread(target=_reap, args=(weakref.ref(self), self._closed),
                                            name="triton-grpc-reaper", daemon=True)
        self._reaper.start()

    def close_idle(self, older_than_s: float = 0.0) -> int:
        """Close the idle streams idle for longer than ``older_than_s``; return how many."""
        now = time.monotonic()
        with self._lock:
            old = [s for s in self._idle if now - s.idle_since >= older_than_s]
            self._idle = [s for s in self._idle if s not in old]
        for stream in old:
            stream.close(cancel=False)
        return len(old)

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        self._closed.set()
        self.close_idle()
        _LIVE_POOLS.discard(self)


def _reap(pool_ref: "weakref.ref[_GrpcStreamPool]", closed: threading.Event) -> None:
    """Close a pool's long-idle streams every few seconds until the pool is closed or gone."""
    while True:
        pool = pool_ref()
        if pool is None:
            return
        interval = max(0.05, min(5.0, pool.idle_close_s / 2))
        pool.close_idle(pool.idle_close_s)
        del pool
        if closed.wait(interval):
            return


_LIVE_POOLS: "weakref.WeakSet[_GrpcStreamPool]" = weakref.WeakSet()


def _close_pools_at_exit() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()


# tritonclient's stream thread is not a daemon: an open stream would keep the interpreter from
# exiting. threading's own exit hook (the one concurrent.futures uses) runs before non-daemon threads
# are joined, unlike atexit.
try:
    threading._register_atexit(_close_pools_at_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover - other interpreters
    atexit.register(_close_pools_at_exit)


# --------------------------------------------------------------------------- the client


class TritonClient:
    """A client of one Triton server serving the model ``model`` (default ``qwen``).

    Parameters
    ----------
    url : str
        ``host:port``, ``http://host:port`` or ``grpc://host:port``.
    protocol : str
        ``"http"`` or ``"grpc"``; ``None`` takes it from the URL's scheme, else ``"http"``.
    model : str
        The Triton model name.
    timeout_s : float
        Time limit of each call (connection included); a request that exceeds it raises
        ``RequestTimeout``.
    max_streams : int
        gRPC only: at most this many requests in flight at once (one stream each).
    idle_close_s : float
        gRPC only: an idle stream is closed after this long (reopening one costs about a millisecond).

    The client is safe to share between threads. ``close()`` (or ``with``) releases its connections.
    """

    def __init__(self, url: str, protocol: Protocol | None = None, model: str = DEFAULT_MODEL,
                 timeout_s: float = 60.0, max_streams: int = 64, idle_close_s: float = 30.0) -> None:
        self.address, self.protocol = parse_url(url, protocol)
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.http_base = f"http://{self.address}"
        self._http: urllib3.HTTPConnectionPool | None = None
        self._grpc_admin: grpcclient.InferenceServerClient | None = None
        self._pool: _GrpcStreamPool | None = None
        self._max_streams = max_streams
        self._idle_close_s = idle_close_s
        self._lock = threading.Lock()
        self._stream_ready: dict[str, float] = {}  # version -> when ModelReady last said yes (monotonic)
        self._version_gates: dict[str, threading.Lock] = {}  # version -> held while one thread asks

    @classmethod
    def from_settings(cls, **kwargs: Any) -> "TritonClient":
        """A client for the configured server (``services.client.server_target.current_target``).

        ``QWEN_TRITON_URL`` (``host:port``, ``http://host:port`` or ``grpc://host:port``) names an
        external server; the protocol is the URL's scheme, else ``QWEN_TRITON_PROTOCOL``; the gRPC
        address is derived (port 8001) unless ``QWEN_TRITON_GRPC_URL`` is set. Without
        ``QWEN_TRITON_URL`` the process's embedded server is started if needed and used.
        """
        from services.client.server_target import current_target  # imports the checkpoint catalog: only here

        target = current_target()
        url, protocol = target.url(), target.protocol
        return cls(url, protocol=protocol, **kwargs)

    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.address}"

    def __repr__(self) -> str:
        return f"TritonClient({self.url!r}, model={self.model!r})"

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session, the gRPC streams and the gRPC channel."""
        with self._lock:
            http, self._http = self._http, None
            admin, self._grpc_admin = self._grpc_admin, None
            pool, self._pool = self._pool, None
        if http is not None:
            http.close()
        if pool is not None:
            pool.close()
        if admin is not None:
            try:
                admin.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ connections

    def _http_pool(self) -> urllib3.HTTPConnectionPool:
        """Keep-alive connections to the server's HTTP port, up to ``max_streams`` kept open.

        No retries (a request is sent once: a generation must not run twice); a kept connection
        that the server closed meanwhile is noticed before use and replaced.
        """
        with self._lock:
            if self._http is None:
                self._http = urllib3.connectionpool.connection_from_url(
                    self.http_base, maxsize=self._max_streams, block=False, retries=False,
                    timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s))
            return self._http

    def _grpc_pool(self) -> _GrpcStreamPool:
        with self._lock:
            if self._pool is None:
                self._pool = _GrpcStreamPool(self.address, self._max_streams, self._idle_close_s)
            return self._pool

    @property
    def grpc_streams_opened(self) -> int:
        """How many gRPC streams this client has opened so far (a pool reuses them)."""
        return self._pool.opened if self._pool is not None else 0

    @contextmanager
    def _admin(self, version: str | None = None) -> Iterator[Any]:
        """A tritonclient client for one management call, with every failure made typed.

        HTTP: a fresh ``tritonclient.http`` client per call (it is gevent-based and not safe to
        share between threads). gRPC: one shared client (its unary calls are thread-safe).
        """
        try:
            if self.protocol == "http":
                client = httpclient.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
                try:
                    yield client
                finally:
                    client.close()
            else:
                with self._lock:
                    if self._grpc_admin is None:
                        self._grpc_admin = grpcclient.InferenceServerClient(self.address)
                    client = self._grpc_admin
                yield client
        except TritonClientError:
            raise
        except InferenceServerException as exc:
            raise self._from_tritonclient(exc, version) from exc
        except (socket.timeout, TimeoutError) as exc:
            raise RequestTimeout(f"The Triton server at {self.url} did not answer within {self.timeout_s:g} s",
                                 url=self.url) from exc
        except OSError as exc:  # refused, reset, DNS (socket.gaierror)
            raise ServerUnreachable(f"The Triton server at {self.url} is not reachable: {exc}",
                                    url=self.url, server_message=str(exc)) from exc
        except Exception as exc:
            if type(exc).__name__ == "Timeout" and type(exc).__module__.startswith("gevent"):
                raise RequestTimeout(f"The Triton server at {self.url} did not answer within {self.timeout_s:g} s",
                                     url=self.url) from exc
            raise

    def _from_tritonclient(self, exc: InferenceServerException, version: str | None = None) -> TritonClientError:
        status = exc.status()
        message = exc.message() or str(exc)
        if status == "StatusCode.UNAVAILABLE" and not any(p.search(message) for p in _VERSION_PATTERNS):
            return ServerUnreachable(f"The Triton server at {self.url} is not reachable: {message}",
                                     url=self.url, server_message=message, status=status)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return RequestTimeout(f"The Triton server at {self.url} did not answer within {self.timeout_s:g} s",
                                  url=self.url, server_message=message, status=status)
        try:
            status = int(status) if status is not None else None
        except (TypeError, ValueError):
            pass
        return _classify(message, url=self.url, model=self.model, version=version, status=status)

    # ------------------------------------------------------------------ server and versions

    def server_info(self) -> ServerInfo:
        """Liveness, readiness, name, version and extensions of the server (server metadata)."""
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        with self._admin() as client:
            live = bool(client.is_server_live(**kw))
            ready = bool(client.is_server_ready(**kw))
            if self.protocol == "grpc":
                meta = client.get_server_metadata(as_json=True, **kw)
            else:
                meta = client.get_server_metadata()
        return ServerInfo(url=self.url, protocol=self.protocol, live=live, ready=ready,
                          name=str(meta.get("name", "")), version=str(meta.get("version", "")),
                          extensions=list(meta.get("extensions", [])))

    def versions(self) -> list[VersionState]:
        """Every version of the model in the repository index, with its state and reason."""
        with self._admin() as client:
            if self.protocol == "grpc":
                index = client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
                entries = index.get("models", [])
            else:
                entries = client.get_model_repository_index()
        found = [VersionState(model=e.get("name", ""), version=str(e.get("version", "")),
                              state=str(e.get("state", "")) or "UNKNOWN", reason=str(e.get("reason", "")))
                 for e in entries if e.get("name") == self.model]
        return sorted(found, key=lambda v: (not v.version.isdigit(), int(v.version) if v.version.isdigit() else 0,
                                            v.version))

    def is_model_ready(self, version: str | int = "") -> bool:
        """True when the model (this version, if given) is loaded and ready."""
        kw = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        with self._admin() as client:
            return bool(client.is_model_ready(self.model, str(version), **kw))

    def model_config(self, version: str | int = "") -> dict[str, Any]:
        """The model's configuration as a dict (``config.pbtxt`` with the server's defaults filled in).

        Over gRPC, 64-bit integers (``dims``) come as strings, as protobuf's JSON mapping writes them.
        """
        with self._admin(str(version) or None) as client:
            if self.protocol == "grpc":
                return client.get_model_config(self.model, str(version), as_json=True,
                                               client_timeout=self.timeout_s).get("config", {})
            return client.get_model_config(self.model, str(version))

    # ------------------------------------------------------------------ detection

    def request_body(self, image_b64: str | None, prompt: str | None = None, max_tokens: int = 128,
                     temperature: float = 0.0, stream: bool = False,
                     extra_sampling: dict[str, Any] | None = None) -> dict[str, Any]:
        """The generate-extension body of a detection request (the gRPC inputs carry the same)."""
        if image_b64 is not None and not isinstance(image_b64, str):
            raise TypeError("image_b64 must be base64 text: base64.b64encode(file_bytes).decode('ascii')")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be non-negative, not {temperature!r}")
        extra = dict(extra_sampling or {})
        clash = {"max_tokens", "temperature"} & extra.keys()
        if clash:
            raise ValueError(f"pass {', '.join(sorted(clash))} as arguments, not in extra_sampling")
        sampling = {"max_tokens": max_tokens, "temperature": float(temperature), **extra}
        if prompt is None:
            prompt = build_prompt(num_images=0 if image_b64 is None else 1)
        body: dict[str, Any] = {"text_input": prompt}
        if image_b64 is not None:
            body["image"] = [image_b64]
        body.update({
            "stream": bool(stream),
            "sampling_parameters": json.dumps(sampling),
            "exclude_input_in_output": True,
            **{flag: True for flag in RETURN_FLAGS},
        })
        return body

    def detect(self, image_b64: str | None, prompt: str | None = None, version: str = "1",
               max_tokens: int = 128, temperature: float = 0.0, stream: bool = False,
               extra_sampling: dict[str, Any] | None = None, request_id: str | None = None) -> Completion:
        """Ask one version of the model about one image and wait for the whole answer.

        Parameters
        ----------
        image_b64 : str or None
            Base64 of the encoded image file (not a data: URI); ``None`` sends no image.
        prompt : str
            The full ``text_input``; default: ``services.core.prompt.build_prompt()``.
        version : str
            The model version to address (``"1"`` bf16, ``"2"`` fp8).
        max_tokens, temperature : int, float
            Sent in ``sampling_parameters`` (always: vLLM's default max_tokens is 16).
        stream : bool
            HTTP: ``generate_stream`` instead of ``generate``. gRPC always uses the stream; this
            sets the ``stream`` tensor (False: one response).
        extra_sampling : dict
            More vLLM sampling parameters (``top_p``, ``seed``...).
        request_id : str
            Default: a fresh uuid. Sent as the gRPC request id; kept client-side over HTTP.

        Returns
        -------
        Completion

        Raises
        ------
        TritonClientError
            ``ServerUnreachable``, ``VersionNotReady``, ``RequestTimeout``, ``BadRequest``,
            ``InferenceError`` or ``StreamError``.
        """
        version = str(version)
        request_id = request_id or uuid.uuid4().hex
        body = self.request_body(image_b64, prompt, max_tokens, temperature, stream, extra_sampling)
        if self.protocol == "grpc":
            return self._grpc_detect(body, version, bool(stream), request_id)
        return self._http_detect(body, version, bool(stream), request_id)

    # ------------------------------------------------------------------ HTTP generate

    def generate_raw(self, body: dict[str, Any], version: str = "1", stream: bool = False,
                     request_id: str | None = None) -> Completion:
        """Send a request body as it is (diagnostics, protocol tests); errors are mapped as in ``detect``.

        ``body`` uses the generate extension's JSON form (``{"text_input": ..., "image": [...]}``).
        HTTP: ``stream`` picks ``generate_stream`` over ``generate``. gRPC: the body's keys become
        the input tensors (bools BOOL, the rest BYTES) and ``stream`` only labels the result. The
        body's own ``stream`` key is not touched.
        """
        request_id = request_id or uuid.uuid4().hex
        if self.protocol == "grpc":
            return self._grpc_detect(dict(body), str(version), bool(stream), request_id)
        return self._http_detect(dict(body), str(version), bool(stream), request_id)

    def _missing_inputs(self, body: dict[str, Any]) -> list[str]:
        return [] if "text_input" in body else ["text_input"]

    def _http_detect(self, body: dict[str, Any], version: str, stream: bool, request_id: str) -> Completion:
        endpoint = "generate_stream" if stream else "generate"
        path = f"/v2/models/{self.model}/versions/{version}/{endpoint}"
        data = _json_body(body)
        pool = self._http_pool()
        collector = _Collector()
        context = dict(url=self.url, model=self.model, version=version, missing=self._missing_inputs(body))
        send_ns = time.perf_counter_ns()
        deadline = send_ns + int(self.timeout_s * 1e9)
        try:
            response = pool.urlopen("POST", path, body=data, headers=_JSON_HEADERS, preload_content=False)
        except NewConnectionError as exc:  # refused, no route, unknown host (a ConnectTimeoutError subclass)
            raise ServerUnreachable(f"The Triton server at {self.url} is not reachable: {_reason(exc)}",
                                    url=self.url, version=version, server_message=str(exc)) from exc
        except ConnectTimeoutError as exc:
            raise RequestTimeout(f"Connecting to the Triton server at {self.url} took longer than "
                                 f"{self.timeout_s:g} s", url=self.url, version=version) from exc
        except ReadTimeoutError as exc:
            raise self._timeout(version) from exc
        except HTTPError as exc:  # the connection was refused or dropped before an answer
            raise ServerUnreachable(f"The Triton server at {self.url} is not reachable: {_reason(exc)}",
                                    url=self.url, version=version, server_message=str(exc)) from exc
        try:
            if response.status != 200:
                raise _classify(_error_text(response.read()), status=response.status, **context)
            if stream:
                for event in _sse_events(response.stream(None)):
                    t_ns = time.perf_counter_ns()
                    self._http_event(event, t_ns, collector, context)
                    if t_ns > deadline:
                        raise self._timeout(version)
                recv_ns = time.perf_counter_ns()
                if collector.responses == 0:
                    raise StreamError(f"The response stream from the Triton server at {self.url} ended "
                                      "without any response", url=self.url, version=version)
            else:
                content = response.read()
                recv_ns = time.perf_counter_ns()
                self._http_event(content, recv_ns, collector, context)
        except TritonClientError:
            if stream and response.status == 200:
                response.close()  # the rest of the stream is not wanted
            raise
        except (ReadTimeoutError, socket.timeout) as exc:
            response.close()
            raise self._timeout(version) from exc
        except (HTTPError, OSError) as exc:  # ProtocolError (reset, incomplete chunks) and the like
            response.close()
            raise StreamError(f"The connection to the Triton server at {self.url} broke mid-response: "
                              f"{_reason(exc)}", url=self.url, version=version) from exc
        finally:
            response.release_conn()
        return collector.completion(version=version, protocol="http", stream=stream, request_id=request_id,
                                    send_ns=send_ns, recv_ns=recv_ns)

    def _http_event(self, payload: bytes | str, t_ns: int, collector: _Collector, context: dict) -> None:
        """Add one generate response (a body, or one event's data) to ``collector``; raise its error."""
        try:
            obj = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StreamError(f"The Triton server at {self.url} sent a response that is not JSON: "
                              f"{bytes(payload[:200]) if isinstance(payload, bytes) else payload[:200]!r}",
                              url=self.url, version=context["version"]) from exc
        if not isinstance(obj, dict):
            raise StreamError(f"The Triton server at {self.url} sent an unexpected response: {str(obj)[:200]}",
                              url=self.url, version=context["version"])
        if "error" in obj:
            raise _classify(str(obj["error"]), status=200, in_stream=True, **context)
        text = _scalar(obj.get("text_output"))
        n_in, n_out = _scalar(obj.get("num_input_tokens")), _scalar(obj.get("num_output_tokens"))
        collector.add(t_ns, text.encode("utf-8") if isinstance(text, str) else None,
                      int(n_in) if n_in is not None else None, int(n_out) if n_out is not None else None,
                      _scalar(obj.get("finish_reason")), obj.get("model_version"))

    def _timeout(self, version: str | None) -> RequestTimeout:
        return RequestTimeout(f"The request to the Triton server at {self.url} (model '{self.model}' version "
                              f"{version}) took longer than {self.timeout_s:g} s", url=self.url, version=version)

    # ------------------------------------------------------------------ gRPC stream

    def _grpc_inputs(self, body: dict[str, Any]) -> list[grpcclient.InferInput]:
        inputs = []
        for name, value in body.items():
            if isinstance(value, bool):
                tensor = grpcclient.InferInput(name, [1], "BOOL")
                tensor.set_data_from_numpy(np.array([value], dtype=bool))
            else:
                items = value if isinstance(value, list) else [value]
                tensor = grpcclient.InferInput(name, [len(items)], "BYTES")
                tensor.set_data_from_numpy(np.array([str(v).encode("utf-8") for v in items], dtype=np.object_))
            inputs.append(tensor)
        return inputs

    def _check_stream_version(self, version: str) -> None:
        """Raise ``VersionNotReady`` unless the version is ready: ModelReady, at most once per
        ``VERSION_RECHECK_S`` while it stays ready (the module docstring says why).

        The first check of a version is made by one thread while concurrent requests for it wait. A
        re-check is made by the one request that finds the answer stale; the others go on with the
        last answer meanwhile, so a busy server's slow ModelReady holds up one request, not all.
        """
        with self._lock:
            checked, now = self._stream_ready.get(version), time.monotonic()
            if checked is not None:
                if now - checked < VERSION_RECHECK_S:
                    return
                self._stream_ready[version] = now  # this thread re-checks; the others go on
            gate = self._version_gates.setdefault(version, threading.Lock())
        with gate:
            if checked is None:
                with self._lock:
                    if version in self._stream_ready:  # another thread has just found it ready
                        return
            ready = False
            try:
                ready = self.is_model_ready(version)
            finally:  # an error of the check itself (server gone) leaves the version unchecked
                with self._lock:
                    if ready:
                        self._stream_ready[version] = time.monotonic()
                    else:
                        self._stream_ready.pop(version, None)
            if not ready:
                with self._admin(version) as client:  # the server's own reason, as a stream error would give
                    client.get_model_metadata(self.model, version, client_timeout=self.timeout_s)
                raise VersionNotReady(f"Version {version} of model '{self.model}' is not loaded and ready on "
                                      f"the Triton server at {self.url}", url=self.url, version=version)

    def _grpc_detect(self, body: dict[str, Any], version: str, stream: bool, request_id: str) -> Completion:
        inputs = self._grpc_inputs(body)
        context = dict(url=self.url, model=self.model, version=version, missing=self._missing_inputs(body))
        self._check_stream_version(version)
        collector = _Collector()
        start_ns = time.perf_counter_ns()
        deadline = start_ns + int(self.timeout_s * 1e9)
        try:
            with self._grpc_pool().borrow(self.timeout_s) as grpc_stream:
                send_ns = time.perf_counter_ns()
                try:
                    grpc_stream.client.async_stream_infer(
                        self.model, inputs, model_version=version, request_id=request_id,
                        enable_empty_final_response=True)
                except InferenceServerException as exc:  # the stream failed before the request left
                    grpc_stream.reusable = False
                    raise self._dead_stream_error(grpc_stream, exc, version) from exc
                while True:
                    remaining = (deadline - time.perf_counter_ns()) / 1e9
                    try:
                        if remaining <= 0:
                            raise queue.Empty
                        t_ns, result, error = grpc_stream.responses.get(timeout=remaining)
                    except queue.Empty:
                        grpc_stream.reusable = False  # closed with its request cancelled
                        raise self._timeout(version) from None
                    if error is not None:
                        raise self._grpc_error(grpc_stream, error, collector, context)
                    response = result.get_response()
                    if response.id and response.id != request_id:
                        log.warning("dropping a stray response for request %s on a pooled stream", response.id)
                        continue
                    final = response.parameters["triton_final_response"].bool_param \
                        if "triton_final_response" in response.parameters else False
                    if response.outputs:
                        collector.add(t_ns, _grpc_bytes(result, "text_output"),
                                      _grpc_int(result, "num_input_tokens"), _grpc_int(result, "num_output_tokens"),
                                      _grpc_str(result, "finish_reason"), response.model_version)
                    if final:
                        recv_ns = t_ns
                        break
        except TimeoutError as exc:  # no stream could be borrowed in time
            raise RequestTimeout(f"The request to the Triton server at {self.url} waited {self.timeout_s:g} s "
                                 f"for a free gRPC stream: {exc}", url=self.url, version=version) from exc
        except (VersionNotReady, ServerUnreachable):  # unloaded, or a new server: check before the next one
            with self._lock:
                self._stream_ready.pop(version, None)
            raise
        return collector.completion(version=version, protocol="grpc", stream=stream, request_id=request_id,
                                    send_ns=send_ns, recv_ns=recv_ns)

    def _dead_stream_error(self, grpc_stream: _GrpcStream, exc: InferenceServerException,
                           version: str) -> TritonClientError:
        """The error of a stream that refused a request: the gRPC error its callback received, if any."""
        try:
            _, _, error = grpc_stream.responses.get(timeout=1.0)
        except queue.Empty:
            error = None
        if error is not None and error.status() is not None:
            return self._grpc_error(grpc_stream, error, _Collector(),
                                    dict(url=self.url, model=self.model, version=version))
        return StreamError(f"The gRPC stream to the Triton server at {self.url} is broken: {exc.message() or exc}",
                           url=self.url, version=version, server_message=exc.message())

    def _grpc_error(self, grpc_stream: _GrpcStream, error: InferenceServerException, collector: _Collector,
                    context: dict) -> TritonClientError:
        status, message = error.status(), error.message() or str(error)
        if status is None:  # an error response for this request: the stream stays usable
            return _classify(message, in_stream=collector.responses > 0, **context)
        grpc_stream.reusable = False  # the stream itself failed
        if status == "StatusCode.UNAVAILABLE":
            return ServerUnreachable(f"The Triton server at {self.url} is not reachable: {message}",
                                     url=self.url, version=context["version"], server_message=message, status=status)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return self._timeout(context["version"])
        return StreamError(f"The gRPC stream to the Triton server at {self.url} failed: {status} {message}",
                           url=self.url, version=context["version"], server_message=message, status=status)


# --------------------------------------------------------------------------- helpers


def _json_body(body: dict[str, Any]) -> bytes:
    """``json.dumps(body)`` as UTF-8, with base64 images spliced in verbatim instead of escaped.

    A label image is ~200 kB of base64, which never needs escaping; ``json.dumps`` still scans it
    character by character (0.5 to 0.8 ms per request on the project's CPU machines, a third of the
    HTTP overhead budget). An image string holding anything JSON must escape is encoded normally.
    """
    images = body.get("image")
    if not (isinstance(images, list) and images and all(isinstance(i, str) and _json_safe(i) for i in images)):
        return json.dumps(body).encode("utf-8")
    rest = json.dumps({k: v for k, v in body.items() if k != "image"})
    return (rest[:-1] + (", " if len(rest) > 2 else "") + '"image": ["' + '", "'.join(images) + '"]}').encode("ascii")


def _json_safe(text: str) -> bool:
    """True if ``text`` can stand in a JSON string as it is: ASCII, no quote, backslash or control character."""
    return (text.isascii() and '"' not in text and "\\" not in text
            and (not text or int(np.frombuffer(text.encode("ascii"), np.uint8).min()) >= 0x20))


def _grpc_bytes(result, name: str) -> bytes | None:
    array = result.as_numpy(name)
    if array is None:
        return None
    return b"".join(v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.reshape(-1))


def _grpc_int(result, name: str) -> int | None:
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    return int(array.reshape(-1).sum()) if name == "num_output_tokens" else int(array.reshape(-1)[0])


def _grpc_str(result, name: str) -> str | None:
    raw = _grpc_bytes(result, name)
    return raw.decode("utf-8", errors="replace") if raw is not None else None


def _sse_events(chunks: Iterable[bytes]) -> Iterator[str]:
    """The ``data`` of each server-sent event (data lines joined by newlines, blank line ends one).

    ``chunks`` are the body's bytes as they arrive; lines end with LF or CRLF.
    """
    data: list[str] = []
    pending = b""

    def lines() -> Iterator[bytes]:
        nonlocal pending
        for chunk in chunks:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            yield from complete
        if pending:
            yield pending

    for raw in lines():
        line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue  # a comment
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _error_text(content: bytes) -> str:
    """The ``error`` of an error body (JSON, or the SSE events of a failed stream), else the body."""
    text = content.decode("utf-8", errors="replace").strip()
    candidates = [text] + [ln[5:].strip() for ln in text.splitlines() if ln.startswith("data:")]
    for candidate in candidates:
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "error" in obj:
            return str(obj["error"])
    return text[:500] or "(empty response)"


def _reason(exc: BaseException) -> str:
    """The innermost readable cause of a urllib3 error (e.g. 'Connection refused')."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip()
    for key in ("Connection refused", "Name or service not known", "Connection reset", "Remote end closed"):
        if key in text:
            return key
    return text[:300]
