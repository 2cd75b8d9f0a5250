"""The one place that talks to Triton: server state, the model's versions, and detection requests.

``TritonClient`` speaks to one Triton server over HTTP or gRPC and turns every answer into a plain
dataclass (``ServerInfo``, ``VersionState``, ``Completion``: services.client.results) and every
failure into a subclass of ``TritonClientError`` (services.client.errors) whose message can be shown
to the user as it is.

Transports for ``detect`` (the version is always addressed explicitly):

* ``protocol="http", stream=False``: ``POST /v2/models/{m}/versions/{v}/generate`` (one response).
* ``protocol="http", stream=True``: ``POST .../generate_stream`` (server-sent events).
  Both: services.client.http_generate, which says why they go through ``urllib3``.
* ``protocol="grpc"``: ``ModelStreamInfer`` through ``tritonclient.grpc`` (``start_stream`` /
  ``async_stream_infer``); the model is decoupled, so gRPC always uses the stream; with
  ``stream=False`` the ``stream`` tensor is false and exactly one response comes back.
  services.client.grpc_stream holds the pool of streams and the ModelReady check made before a
  version goes down a stream (Triton 2.51 aborts otherwise; that module's docstring says how).

Every other call (health, metadata, repository index, model config) goes through ``tritonclient``
here, in ``TritonClient`` itself.

Example::

    client = TritonClient("127.0.0.1:8001", protocol="grpc")
    print(client.server_info().version, [v.state for v in client.versions()])
    done = client.detect(base64.b64encode(png_bytes).decode(), version="2", max_tokens=128)
    print(done.text, done.num_output_tokens, done.ttft_ms, done.latency_ms)
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Literal

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import urllib3
from tritonclient.utils import InferenceServerException

from services.client.errors import (
    VERSION_PATTERNS,
    RequestTimeout,
    ServerUnreachable,
    TritonClientError,
    classify_error,
    describe_answer,
    not_triton,
)
from services.client.grpc_stream import GrpcStreamPool, GrpcStreamTransport
from services.client.http_generate import HttpGenerateTransport
from services.client.results import Completion, ServerInfo, VersionState
from services.core import settings
from services.core.prompt import build_prompt

Protocol = Literal["http", "grpc"]
PROTOCOLS = ("http", "grpc")
DEFAULT_MODEL = settings.MODEL_NAME
RETURN_FLAGS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")


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


class TritonClient(HttpGenerateTransport, GrpcStreamTransport):
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
        self._pool: GrpcStreamPool | None = None
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
        except (ValueError, KeyError) as exc:  # a body that is not Triton's JSON (rapidjson.JSONDecodeError...)
            raise self._what_answers(exc) from exc
        except OSError as exc:  # refused, reset, DNS (socket.gaierror)
            raise ServerUnreachable(f"The Triton server at {self.url} is not reachable: {exc}",
                                    url=self.url, server_message=str(exc)) from exc
        except Exception as exc:
            if type(exc).__name__ == "HTTPParseError":  # geventhttpclient: the answer is not HTTP/1.x
                raise self._what_answers(exc) from exc
            if type(exc).__name__ == "Timeout" and type(exc).__module__.startswith("gevent"):
                raise RequestTimeout(f"The Triton server at {self.url} did not answer within {self.timeout_s:g} s",
                                     url=self.url) from exc
            raise

    def _from_tritonclient(self, exc: InferenceServerException, version: str | None = None) -> TritonClientError:
        status = exc.status()
        message = exc.message() or str(exc)
        if "exception occurred in the client while decoding the response" in message:  # not JSON
            return self._what_answers(exc)
        if self.protocol == "grpc" and ("http1.x server" in message or (
                status == "StatusCode.UNAVAILABLE" and self._first_bytes()[:7] == b"HTTP/1.")):  # an HTTP port
            return not_triton(self.url, "gRPC with HTTP/1.x, as a web server or Triton's HTTP port does "
                                        "(Triton's gRPC port is 8001 by default)")
        if status == "StatusCode.UNAVAILABLE" and not any(p.search(message) for p in VERSION_PATTERNS):
            return ServerUnreachable(f"The Triton server at {self.url} is not reachable: {message}",
                                     url=self.url, server_message=message, status=status)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return RequestTimeout(f"The Triton server at {self.url} did not answer within {self.timeout_s:g} s",
                                  url=self.url, server_message=message, status=status)
        try:
            status = int(status) if status is not None else None
        except (TypeError, ValueError):
            pass
        return classify_error(message, url=self.url, model=self.model, version=version, status=status)

    def _what_answers(self, exc: BaseException | None = None) -> TritonClientError:
        """The error for answers that are not Triton's: what answers ``GET /v2`` here, in a sentence."""
        if self.protocol == "grpc":
            return not_triton(self.url, f"gRPC with something that is not Triton's API ({type(exc).__name__})")
        try:
            answer = self._http_pool().urlopen("GET", "/v2", timeout=min(self.timeout_s, 5.0))
        except Exception:  # noqa: BLE001 - not HTTP/1.x: what its first bytes are
            return not_triton(self.url, "GET /v2 with " + self._first_bytes_say())
        try:
            meta = json.loads(answer.data)
        except ValueError:
            meta = None
        if answer.status == 200 and isinstance(meta, dict) and {"name", "version", "extensions"} <= meta.keys():
            return TritonClientError(f"The Triton server at {self.url} sent an answer this client cannot read: "
                                     f"{type(exc).__name__}: {str(exc)[:200]}", url=self.url)
        return not_triton(self.url, "GET /v2 with " + describe_answer(answer.status, answer.data,
                                                                       answer.headers.get("Content-Type", "")))

    def _first_bytes(self) -> bytes:
        """The first bytes of the answer to an HTTP/1.1 ``GET /v2`` (empty if none came)."""
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=min(self.timeout_s, 5.0)) as sock:
                sock.sendall(f"GET /v2 HTTP/1.1\r\nHost: {self.address}\r\n\r\n".encode("ascii"))
                return sock.recv(64)
        except (OSError, ValueError):
            return b""

    def _first_bytes_say(self) -> str:
        """What the first bytes answered to an HTTP/1.1 request say: HTTP/2 frames (a gRPC port), or other."""
        first = self._first_bytes()
        if len(first) >= 9 and first[3] == 0x04:  # an HTTP/2 SETTINGS frame: a gRPC server
            return "HTTP/2 frames, as a gRPC port does (Triton's HTTP port is 8000 by default)"
        return f"{len(first)} bytes that are not HTTP" if first else "nothing (the connection was closed)"

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
        if not isinstance(meta, dict) or not {"name", "version", "extensions"} <= meta.keys():
            raise self._what_answers()
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
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self._what_answers()
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

    def _timeout(self, version: str | None) -> RequestTimeout:
        return RequestTimeout(f"The request to the Triton server at {self.url} (model '{self.model}' version "
                              f"{version}) took longer than {self.timeout_s:g} s", url=self.url, version=version)
