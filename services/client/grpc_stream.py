"""The gRPC transport of ``TritonClient.detect``: ``ModelStreamInfer`` through a pool of streams.

``ModelStreamInfer`` goes through ``tritonclient.grpc`` (``start_stream`` / ``async_stream_infer``);
the model is decoupled, so gRPC always uses the stream; with ``stream=False`` the ``stream`` tensor
is false and exactly one response comes back.

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

``GrpcStreamTransport`` is a part of ``TritonClient`` (services.client.triton_client): it uses the
client's ``address``, ``url``, ``model``, ``timeout_s``, ``_max_streams``, ``_idle_close_s``,
``_lock``, ``_pool``, ``_stream_ready``, ``_version_gates``, ``is_model_ready``, ``_admin``,
``_missing_inputs`` and ``_timeout``.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from services.client.errors import (
    RequestTimeout,
    ServerUnreachable,
    StreamError,
    TritonClientError,
    VersionNotReady,
    classify_error,
)
from services.client.results import Completion, ResponseCollector

log = logging.getLogger(__name__)

VERSION_RECHECK_S = 5.0  # how long a version found ready goes without a new check before gRPC stream requests


class GrpcStream:
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


class GrpcStreamPool:
    """Streams lent to one request at a time (see the module docstring).

    Idle streams are closed after ``idle_close_s`` (an open stream keeps tritonserver from shutting
    down promptly, and tritonclient's stream thread keeps this process from exiting), and all are
    closed when the interpreter exits.
    """

    def __init__(self, url: str, max_streams: int, idle_close_s: float = 30.0) -> None:
        self.url = url
        self.max_streams = max_streams
        self.idle_close_s = idle_close_s
        self._idle: list[GrpcStream] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_streams)
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None
        self.opened = 0
        _LIVE_POOLS.add(self)

    @contextmanager
    def borrow(self, timeout: float) -> Iterator[GrpcStream]:
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
                    stream = GrpcStream(self.url)
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


def _reap(pool_ref: "weakref.ref[GrpcStreamPool]", closed: threading.Event) -> None:
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


_LIVE_POOLS: "weakref.WeakSet[GrpcStreamPool]" = weakref.WeakSet()


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


class GrpcStreamTransport:
    """``TritonClient``'s requests over gRPC: one pooled stream per request, versions checked first."""

    def _grpc_pool(self) -> GrpcStreamPool:
        with self._lock:
            if self._pool is None:
                self._pool = GrpcStreamPool(self.address, self._max_streams, self._idle_close_s)
            return self._pool

    @property
    def grpc_streams_opened(self) -> int:
        """How many gRPC streams this client has opened so far (a pool reuses them)."""
        return self._pool.opened if self._pool is not None else 0

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
        collector = ResponseCollector()
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

    def _dead_stream_error(self, grpc_stream: GrpcStream, exc: InferenceServerException,
                           version: str) -> TritonClientError:
        """The error of a stream that refused a request: the gRPC error its callback received, if any."""
        try:
            _, _, error = grpc_stream.responses.get(timeout=1.0)
        except queue.Empty:
            error = None
        if error is not None and error.status() is not None:
            return self._grpc_error(grpc_stream, error, ResponseCollector(),
                                    dict(url=self.url, model=self.model, version=version))
        return StreamError(f"The gRPC stream to the Triton server at {self.url} is broken: {exc.message() or exc}",
                           url=self.url, version=version, server_message=exc.message())

    def _grpc_error(self, grpc_stream: GrpcStream, error: InferenceServerException, collector: ResponseCollector,
                    context: dict) -> TritonClientError:
        status, message = error.status(), error.message() or str(error)
        if status is None:  # an error response for this request: the stream stays usable
            return classify_error(message, in_stream=collector.responses > 0, **context)
        grpc_stream.reusable = False  # the stream itself failed
        if status == "StatusCode.UNAVAILABLE":
            return ServerUnreachable(f"The Triton server at {self.url} is not reachable: {message}",
                                     url=self.url, version=context["version"], server_message=message, status=status)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return self._timeout(context["version"])
        return StreamError(f"The gRPC stream to the Triton server at {self.url} failed: {status} {message}",
                           url=self.url, version=context["version"], server_message=message, status=status)


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
