"""A client of an OpenAI-compatible server (``vllm serve``, SGLang, TGI, NIM): the same facade as
``TritonClient`` (``detect``, ``server_info``, ``versions``, ``is_model_ready``, ``model_config``,
``url``, ``model``, ``protocol``, ``close``), the same results (services.client.results) and the
same typed errors (services.client.errors, with ``NotOpenAIServer`` and ``ModelNotServed`` added),
so that Detect, the benchmark runner and Compare take either kind of target.

A detection request is ``POST /v1/chat/completions`` with the fine-tune's prompt as chat messages:
the system prompt, then one user message holding the image (a base64 ``data:`` URI in an
``image_url`` part) followed by the user text, the order ``services.core.prompt.build_prompt``
puts them in. The system message is always sent: Qwen2-VL's chat template otherwise inserts its
own ("You are a helpful assistant."), which the fine-tune never saw. ``stream=True`` asks for
server-sent events with ``stream_options: {"include_usage": true}``: each chunk's arrival time goes
into ``Completion.chunk_ns``, the token counts come from the ``usage`` of the last chunk.

There is no model version on such a server: each served model name is one variant. The client's
``version`` (default ``"1"``) is the label ``versions()`` and ``is_model_ready`` report for its
model; ``detect(version=...)`` only labels the result (``Completion.version``), as the runner
records per version, and never changes which model is asked.

Transport: a ``urllib3`` pool, as ``services.client.http_generate`` uses for Triton's generate
endpoints (no retries: a generation must not run twice; no proxy settings read).

Example::

    client = OpenAIChatClient("http://127.0.0.1:8100", model="demo-detector-bf16")
    done = client.detect(base64.b64encode(png_bytes).decode(), stream=True, max_tokens=64)
    print(done.text, done.num_output_tokens, done.ttft_ms, done.latency_ms)
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from services.client.errors import (
    BadRequest,
    InferenceError,
    ModelNotServed,
    RequestTimeout,
    ServerUnreachable,
    StreamError,
    TritonClientError,
    VersionNotReady,
    describe_answer,
    not_openai,
)
from services.client.http_generate import _reason, _sse_events
from services.client.results import Completion, ResponseCollector, ServerInfo, VersionState
from services.core.prompt import IMAGE_PLACEHOLDER, SYSTEM_PROMPT, USER_PROMPT

PROTOCOL = "openai"
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
OPENAI_JSON = "the OpenAI API's"
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(?:<\|im_end\|>|\Z)", re.S)


def normalize_base_url(base_url: str) -> str:
    """``host:port``, ``http(s)://host:port`` or ``.../v1`` to ``http(s)://host:port`` (no ``/v1``)."""
    text = (base_url or "").strip().rstrip("/")
    if not text:
        raise ValueError("the OpenAI-compatible server's URL is empty")
    parsed = urlparse(text if "://" in text else f"http://{text}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"not an http(s) server address: {base_url!r} (use host:port or http://host:port)")
    path = parsed.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parsed.scheme}://{parsed.netloc}{path}"


def chat_messages(image_b64: str | None, prompt: str | None = None) -> list[dict[str, Any]]:
    """The chat messages of one detection request (see the module docstring).

    ``prompt``: ``None`` for the fine-tune's prompt; a full Qwen chat text (``<|im_start|>`` turns,
    as ``TritonClient`` takes it) is split into its turns, the image going where the user turn's
    ``<|image_pad|>`` placeholder stood (else first); any other text is the user text under the
    fine-tune's system prompt.
    """
    turns = [(role, body) for role, body in _TURN.findall(prompt or "") if role != "assistant" or body.strip()]
    if not turns:
        turns = [("system", SYSTEM_PROMPT), ("user", USER_PROMPT if prompt is None else prompt)]
    messages: list[dict[str, Any]] = []
    image_placed = image_b64 is None
    image_part = None if image_b64 is None else {
        "type": "image_url", "image_url": {"url": f"data:{image_mime(image_b64)};base64,{image_b64}"}}
    for role, body in turns:
        if role == "user" and not image_placed:
            before, found, after = body.partition(IMAGE_PLACEHOLDER)
            parts = [{"type": "text", "text": before}] if found and before else []
            parts.append(image_part)
            rest = (after if found else body).replace(IMAGE_PLACEHOLDER, "")
            if rest:
                parts.append({"type": "text", "text": rest})
            messages.append({"role": role, "content": parts})
            image_placed = True
        else:
            messages.append({"role": role, "content": body.replace(IMAGE_PLACEHOLDER, "")})
    if not image_placed:
        messages.append({"role": "user", "content": [image_part]})
    return messages


def image_mime(image_b64: str) -> str:
    """The MIME type of a base64 image from its first bytes (PNG, JPEG, WebP, GIF; else PNG)."""
    head = image_b64[:16]
    for prefix, mime in (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("UklGR", "image/webp"),
                         ("R0lGOD", "image/gif")):
        if head.startswith(prefix):
            return mime
    return "image/png"


class OpenAIChatClient:
    """A client of one OpenAI-compatible server and one model name it serves.

    Parameters
    ----------
    base_url : str
        ``host:port``, ``http://host:port`` or ``http://host:port/v1``.
    model : str
        The served model name (``GET /v1/models`` lists them; ``vllm serve --served-model-name``).
    timeout_s : float
        Time limit of each call, connection included (``RequestTimeout`` beyond it).
    version : str
        The label this model answers to in ``versions()`` / ``is_model_ready`` (see the module doc).
    max_streams : int
        At most this many connections kept open (requests in flight).

    Safe to share between threads; ``close()`` (or ``with``) releases its connections.
    """

    protocol = PROTOCOL

    def __init__(self, base_url: str, model: str, timeout_s: float = 60.0, version: str = "1",
                 max_streams: int = 64) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if not model:
            raise ValueError("the model name is empty (GET /v1/models lists what the server serves)")
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.timeout_s = float(timeout_s)
        self.version = str(version)
        self._max_streams = max_streams
        self._lock = threading.Lock()
        self._http: urllib3.HTTPConnectionPool | None = None

    @property
    def url(self) -> str:
        return self.base_url

    def __repr__(self) -> str:
        return f"OpenAIChatClient({self.url!r}, model={self.model!r})"

    def __enter__(self) -> "OpenAIChatClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def _pool(self) -> urllib3.HTTPConnectionPool:
        with self._lock:
            if self._http is None:
                self._http = urllib3.connectionpool.connection_from_url(
                    self.base_url, maxsize=self._max_streams, block=False, retries=False,
                    timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s))
            return self._http

    def _path(self, path: str) -> str:
        return urlparse(self.base_url).path + path

    # ------------------------------------------------------------------ plain calls

    def _get(self, path: str, timeout_s: float | None = None) -> urllib3.BaseHTTPResponse:
        """``GET path``; connection failures and timeouts as typed errors."""
        try:
            return self._pool().urlopen("GET", self._path(path), timeout=timeout_s or self.timeout_s)
        except NewConnectionError as exc:
            raise self._unreachable(exc) from exc
        except (ConnectTimeoutError, ReadTimeoutError, socket.timeout) as exc:
            raise RequestTimeout(f"The server at {self.url} did not answer GET {path} within "
                                 f"{timeout_s or self.timeout_s:g} s", url=self.url) from exc
        except HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException, version: str | None = None) -> ServerUnreachable:
        return ServerUnreachable(f"The OpenAI-compatible server at {self.url} is not reachable: {_reason(exc)}",
                                 url=self.url, version=version, server_message=str(exc))

    def served_models(self) -> list[dict[str, Any]]:
        """The entries of ``GET /v1/models`` (``id``, ``owned_by``, ``max_model_len`` on vLLM...)."""
        answer = self._get(MODELS_PATH)
        try:
            listing = json.loads(answer.data)
        except (ValueError, UnicodeDecodeError):
            listing = None
        data = listing.get("data") if isinstance(listing, dict) else None
        if answer.status != 200 or not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m
                                                                         for m in data):
            raise not_openai(self.url, f"GET {MODELS_PATH} with " + describe_answer(
                answer.status, answer.data, answer.headers.get("Content-Type", ""), whose=OPENAI_JSON))
        return data

    def served_model_names(self) -> list[str]:
        return [str(m["id"]) for m in self.served_models()]

    def server_info(self) -> ServerInfo:
        """Live (``/v1/models`` answers), ready (it lists this model), name (``owned_by``, e.g. vllm),
        the server's version (``GET /version``, vLLM's; empty elsewhere) and, as ``extensions``, the
        served model names."""
        models = self.served_models()
        names = [str(m["id"]) for m in models]
        mine = next((m for m in models if m["id"] == self.model), models[0] if models else {})
        return ServerInfo(url=self.url, protocol=PROTOCOL, live=True, ready=self.model in names,
                          name=str(mine.get("owned_by") or "openai-compatible"), version=self._server_version(),
                          extensions=names)

    def _server_version(self) -> str:
        try:
            answer = self._get("/version", timeout_s=min(self.timeout_s, 5.0))
            meta = json.loads(answer.data) if answer.status == 200 else {}
        except (TritonClientError, ValueError, UnicodeDecodeError):
            return ""
        return str(meta.get("version", "")) if isinstance(meta, dict) else ""

    def versions(self) -> list[VersionState]:
        """One entry: this model under the client's ``version`` label, READY when the server lists it."""
        names = self.served_model_names()
        if self.model in names:
            return [VersionState(model=self.model, version=self.version, state="READY")]
        return [VersionState(model=self.model, version=self.version, state="UNAVAILABLE",
                             reason=self._not_served_reason(names))]

    def is_model_ready(self, version: str | int = "") -> bool:
        return self.model in self.served_model_names()

    def model_config(self, version: str | int = "") -> dict[str, Any]:
        """The server's ``/v1/models`` entry of this model (``max_model_len``, ``root``: the checkpoint)."""
        for entry in self.served_models():
            if entry["id"] == self.model:
                return dict(entry)
        raise self._model_not_served(version=str(version) or None)

    def _not_served_reason(self, names: list[str]) -> str:
        served = ", ".join(repr(n) for n in names) or "none"
        return f"the server does not serve a model named '{self.model}' (it serves: {served})"

    def _model_not_served(self, names: list[str] | None = None, version: str | None = None,
                          server_message: str | None = None) -> ModelNotServed:
        if names is None:
            try:
                names = self.served_model_names()
            except TritonClientError:
                names = []
        return ModelNotServed(f"The OpenAI-compatible server at {self.url}: {self._not_served_reason(names)}.",
                              served=names, url=self.url, version=version, server_message=server_message,
                              status=404)

    # ------------------------------------------------------------------ detection

    def request_body(self, image_b64: str | None, prompt: str | None = None, max_tokens: int = 128,
                     temperature: float = 0.0, stream: bool = False,
                     extra_sampling: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``/v1/chat/completions`` body of a detection request."""
        if image_b64 is not None and not isinstance(image_b64, str):
            raise TypeError("image_b64 must be base64 text: base64.b64encode(file_bytes).decode('ascii')")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be non-negative, not {temperature!r}")
        extra = dict(extra_sampling or {})
        clash = {"max_tokens", "temperature", "model", "messages", "stream", "stream_options"} & extra.keys()
        if clash:
            raise ValueError(f"pass {', '.join(sorted(clash))} as arguments, not in extra_sampling")
        messages = chat_messages(image_b64, prompt)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": float(temperature), **extra, "stream": bool(stream)}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def detect(self, image_b64: str | None, prompt: str | None = None, version: str = "1",
               max_tokens: int = 128, temperature: float = 0.0, stream: bool = False,
               extra_sampling: dict[str, Any] | None = None, request_id: str | None = None) -> Completion:
        """Ask the model about one image and wait for the whole answer (as ``TritonClient.detect``).

        ``version`` only labels the result; ``extra_sampling`` adds body keys (``top_p``, ``seed``...).
        Token counts come from the server's ``usage``; a stream without one (a server that ignores
        ``stream_options``) counts its content chunks as output tokens and leaves the input unknown;
        a streamed request answered with one JSON body (a server that does not stream) is read as one.

        Raises ``ServerUnreachable``, ``NotOpenAIServer``, ``ModelNotServed``, ``RequestTimeout``,
        ``BadRequest``, ``InferenceError`` or ``StreamError`` (all ``TritonClientError``).
        """
        body = self.request_body(image_b64, prompt, max_tokens, temperature, stream, extra_sampling)
        return self.generate_raw(body, version=version, stream=stream, request_id=request_id)

    def generate_raw(self, body: dict[str, Any], version: str = "1", stream: bool = False,
                     request_id: str | None = None) -> Completion:
        """Send a chat-completions body as it is; errors are mapped as in ``detect``."""
        version, request_id = str(version), request_id or uuid.uuid4().hex
        data = json.dumps(body).encode("utf-8")
        headers = dict(_JSON_HEADERS, **{"X-Request-Id": request_id})
        send_ns = time.perf_counter_ns()
        deadline = send_ns + int(self.timeout_s * 1e9)
        try:
            response = self._pool().urlopen("POST", self._path(CHAT_PATH), body=data, headers=headers,
                                            preload_content=False)
        except NewConnectionError as exc:
            raise self._unreachable(exc, version) from exc
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise self._timeout(version) from exc
        except HTTPError as exc:
            raise self._unreachable(exc, version) from exc
        collector = ResponseCollector()
        try:
            if response.status != 200:
                raise self._error_answer(response.status, response.read(), response.headers, version)
            if stream and "event-stream" in response.headers.get("Content-Type", ""):
                recv_ns = self._read_stream(response, collector, version, deadline)
            else:
                content = response.read()
                recv_ns = time.perf_counter_ns()
                self._read_whole(content, recv_ns, collector, version)
        except TritonClientError:
            response.close()
            raise
        except (ReadTimeoutError, socket.timeout) as exc:
            response.close()
            raise self._timeout(version) from exc
        except (HTTPError, OSError) as exc:  # reset, incomplete chunked body: the server went away
            response.close()
            raise StreamError(f"The connection to the OpenAI-compatible server at {self.url} broke mid-response "
                              f"after {collector.token_responses} chunk(s) (did the server stop?): {_reason(exc)}",
                              url=self.url, version=version, server_message=str(exc)) from exc
        finally:
            response.release_conn()
        return collector.completion(version=version, protocol=PROTOCOL, stream=stream, request_id=request_id,
                                    send_ns=send_ns, recv_ns=recv_ns)

    def _read_stream(self, response: Any, collector: ResponseCollector, version: str, deadline: int) -> int:
        """Read server-sent events until ``[DONE]``; returns the time the stream ended."""
        usage: dict | None = None
        events = 0
        for data in _sse_events(response.stream(None)):
            t_ns = time.perf_counter_ns()
            events += 1
            if data.strip() == "[DONE]":
                break
            obj = self._json_event(data, first=events == 1, version=version)
            if "error" in obj:
                raise self._error_object(obj, status=200, version=version, in_stream=True)
            for choice in obj.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                collector.add(t_ns, text.encode("utf-8") if text else None, None, None, choice.get("finish_reason"))
            if isinstance(obj.get("usage"), dict):
                usage = obj["usage"]
            if t_ns > deadline:
                raise self._timeout(version)
        else:
            raise StreamError(f"The response stream from the OpenAI-compatible server at {self.url} ended "
                              f"without [DONE] after {collector.token_responses} chunk(s) (did the server stop?)",
                              url=self.url, version=version)
        recv_ns = time.perf_counter_ns()
        self._set_usage(collector, usage)
        return recv_ns

    def _read_whole(self, content: bytes, t_ns: int, collector: ResponseCollector, version: str) -> None:
        obj = self._json_event(content, first=True, version=version)
        choices = obj.get("choices") or []
        if not choices:
            raise InferenceError(f"The OpenAI-compatible server at {self.url} answered without a choice",
                                 url=self.url, version=version, server_message=str(obj)[:500])
        text = (choices[0].get("message") or {}).get("content") or ""
        collector.add(t_ns, text.encode("utf-8") if text else None, None, None, choices[0].get("finish_reason"))
        self._set_usage(collector, obj.get("usage"))

    @staticmethod
    def _set_usage(collector: ResponseCollector, usage: Any) -> None:
        if not isinstance(usage, dict):
            collector.num_output_tokens = collector.token_responses
            return
        if usage.get("prompt_tokens") is not None:
            collector.num_input_tokens = int(usage["prompt_tokens"])
        if usage.get("completion_tokens") is not None:
            collector.num_output_tokens = int(usage["completion_tokens"])

    def _json_event(self, payload: bytes | str, first: bool, version: str) -> dict[str, Any]:
        """One answer (a body or one event's data) as a dict; not JSON at first means not OpenAI."""
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            obj = None
        is_chat = isinstance(obj, dict) and ("choices" in obj or "error" in obj or "usage" in obj)
        if is_chat:
            return obj  # type: ignore[return-value]
        found = describe_answer(200, payload, whose=OPENAI_JSON)
        if first:
            raise not_openai(self.url, f"POST {CHAT_PATH} with {found}")
        raise StreamError(f"The OpenAI-compatible server at {self.url} sent an event that is not a chat chunk: "
                          f"{found}", url=self.url, version=version)

    def _error_answer(self, status: int, content: bytes, headers: Any, version: str) -> TritonClientError:
        """The typed error of a non-200 answer: not this API, a model not served, or the server's error."""
        try:
            obj = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not (isinstance(obj, dict) and ("error" in obj or obj.get("object") == "error")):
            return not_openai(self.url, f"POST {CHAT_PATH} with " + describe_answer(
                status, content, headers.get("Content-Type", ""), whose=OPENAI_JSON))
        return self._error_object(obj, status=status, version=version)

    def _error_object(self, obj: dict[str, Any], status: int, version: str,
                      in_stream: bool = False) -> TritonClientError:
        """The typed error of an OpenAI error object (``{"error": {"message", "type", "code"}}``, or
        the flat ``{"object": "error", "message"...}`` of older vLLM)."""
        err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
        message = str(err.get("message") or obj.get("error") or "(no message)")
        kind = str(err.get("type") or "")
        code = err.get("code")
        common = dict(url=self.url, version=version, server_message=message, status=status)
        if status == 404 or kind == "NotFoundError" or code == 404:
            try:
                names = self.served_model_names()
            except TritonClientError as exc:  # no model listing: not an OpenAI server after all
                return exc
            if self.model not in names:
                return self._model_not_served(names, version, message)
            return VersionNotReady(f"The OpenAI-compatible server at {self.url} refused model '{self.model}': "
                                   f"{message}", **common)
        if status in (408, 504):
            return RequestTimeout(f"The OpenAI-compatible server at {self.url} timed out: {message}", **common)
        if status in (400, 413, 422) or kind == "BadRequestError":
            return BadRequest(f"The OpenAI-compatible server at {self.url} rejected the request to model "
                              f"'{self.model}' as malformed: {message}", **common)
        if in_stream:
            return StreamError(f"The response stream from the OpenAI-compatible server at {self.url} failed "
                               f"(model '{self.model}'): {message}", **common)
        return InferenceError(f"Model '{self.model}' on the OpenAI-compatible server at {self.url} could not "
                              f"answer this request: {message}", **common)

    def _timeout(self, version: str | None) -> RequestTimeout:
        return RequestTimeout(f"The request to the OpenAI-compatible server at {self.url} (model '{self.model}') "
                              f"took longer than {self.timeout_s:g} s", url=self.url, version=version)
