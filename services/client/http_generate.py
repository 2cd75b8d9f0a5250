"""The HTTP transport of ``TritonClient.detect``: Triton's generate extension over a ``urllib3`` pool.

* ``stream=False``: ``POST /v2/models/{m}/versions/{v}/generate`` (one response).
* ``stream=True``: ``POST .../generate_stream`` (server-sent events, read chunk by chunk as they
  arrive and parsed by ``_sse_events``).

Why ``urllib3`` for the HTTP generate endpoints: ``tritonclient.http`` has no API for Triton's
generate extension (``/generate``, ``/generate_stream``), and its ``infer`` (``/infer``) is refused
for decoupled models such as the vLLM backend's (HTTP 501). Those two endpoints are therefore
called through a ``urllib3`` connection pool (the server-sent events read chunk by chunk as they
arrive); every other call (health, metadata, repository index, model config, gRPC inference) goes
through ``tritonclient``. ``requests`` (which wraps ``urllib3``) cost about 0.4 ms more per request
on this project's CPU machines, a fifth of the 2 ms that Triton may add; and like ``tritonclient``,
the pool does not read proxy settings from the environment.

``HttpGenerateTransport`` is a part of ``TritonClient`` (services.client.triton_client): it uses the
client's ``url``, ``model``, ``timeout_s``, ``http_base``, ``_max_streams``, ``_lock``, ``_http``,
``_missing_inputs`` and ``_timeout``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any, Iterable, Iterator

import numpy as np
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from services.client.errors import (
    RequestTimeout,
    ServerUnreachable,
    StreamError,
    TritonClientError,
    classify_error,
    describe_answer,
    not_triton,
)
from services.client.results import Completion, ResponseCollector

_JSON_HEADERS = {"Content-Type": "application/json"}


class HttpGenerateTransport:
    """``TritonClient``'s requests over HTTP: the generate and generate_stream endpoints."""

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

    def _http_detect(self, body: dict[str, Any], version: str, stream: bool, request_id: str) -> Completion:
        endpoint = "generate_stream" if stream else "generate"
        path = f"/v2/models/{self.model}/versions/{version}/{endpoint}"
        data = _json_body(body)
        pool = self._http_pool()
        collector = ResponseCollector()
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
                content = response.read()
                if not _is_json(content):  # Triton's errors are JSON: something else answers here
                    raise not_triton(self.url, f"POST {path} with " + describe_answer(
                        response.status, content, response.headers.get("Content-Type", "")))
                raise classify_error(_error_text(content), status=response.status, **context)
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

    def _http_event(self, payload: bytes | str, t_ns: int, collector: ResponseCollector, context: dict) -> None:
        """Add one generate response (a body, or one event's data) to ``collector``; raise its error."""
        try:
            obj = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if collector.responses == 0:  # its first answer: something other than Triton answers here
                raise not_triton(self.url, "a generate request with " + describe_answer(200, payload)) from exc
            raise StreamError(f"The Triton server at {self.url} sent a response that is not JSON: "
                              f"{describe_answer(None, payload)}", url=self.url, version=context["version"]) from exc
        if collector.responses == 0 and not (isinstance(obj, dict) and ("model_name" in obj or "error" in obj)):
            raise not_triton(self.url, "a generate request with " + describe_answer(200, payload))
        if not isinstance(obj, dict):
            raise StreamError(f"The Triton server at {self.url} sent an unexpected response: {str(obj)[:200]}",
                              url=self.url, version=context["version"])
        if "error" in obj:
            raise classify_error(str(obj["error"]), status=200, in_stream=True, **context)
        text = _scalar(obj.get("text_output"))
        n_in, n_out = _scalar(obj.get("num_input_tokens")), _scalar(obj.get("num_output_tokens"))
        collector.add(t_ns, text.encode("utf-8") if isinstance(text, str) else None,
                      int(n_in) if n_in is not None else None, int(n_out) if n_out is not None else None,
                      _scalar(obj.get("finish_reason")), obj.get("model_version"))


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


def _is_json(content: bytes) -> bool:
    """True if the body, or each ``data:`` line of an event stream, is JSON."""
    text = content.decode("utf-8", errors="replace").strip()
    candidates = [ln[5:].strip() for ln in text.splitlines() if ln.startswith("data:")] or [text]
    try:
        for candidate in candidates:
            json.loads(candidate)
    except ValueError:
        return False
    return True


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


def _scalar(value: Any) -> Any:
    """A generate-extension value: scalars stay, one-element lists unwrap, string lists join."""
    if isinstance(value, list):
        if len(value) == 1:
            return value[0]
        if all(isinstance(v, str) for v in value):
            return "".join(value)
    return value
