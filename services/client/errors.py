"""The errors of the Triton client (``TritonClientError`` and its subclasses) and the one function
that turns a server's error message into the right one (``classify_error``).

Every message is fit to show the user as it is; the class says what went wrong (no server, a
version that is not ready, a timeout, a malformed request, a failed generation, a broken stream),
the same class for the same fault on every transport.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


class TritonClientError(RuntimeError):
    """Base of every error the Triton client raises; ``str(error)`` is a message fit for the user.

    Attributes: ``url`` (the server), ``version`` (the model version, when a request named one),
    ``server_message`` (the server's own words, when it sent any) and ``status`` (the HTTP status
    or gRPC status code, when known). :attr:`detail` is the raw text to show behind the message
    (an expander): the server's words, where the message explains them in a sentence of its own.
    """

    def __init__(self, message: str, *, url: str = "", version: str | None = None,
                 server_message: str | None = None, status: str | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.version = version
        self.server_message = server_message
        self.status = status

    @property
    def detail(self) -> str | None:
        """The server's raw words (tracebacks included), or None when it sent none."""
        return self.server_message


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


class NotTritonServer(TritonClientError):
    """Something answers at the address, but it is not a Triton server (another web server, a wrong port)."""


class StreamError(InferenceError):
    """An error inside a stream that had started: an error event or body under HTTP 200, a gRPC
    error after responses of the request had arrived, a connection or gRPC stream that broke
    mid-response, or an HTTP stream that ended without any response."""


# Triton's and the vLLM backend's own words, most specific first (see classify_error).
VERSION_PATTERNS = (
    re.compile(r"unknown model", re.I),
    re.compile(r"is not at ready state", re.I),
    re.compile(r"has no available versions", re.I),
    re.compile(r"model '.*' (version \d+ )?is not (found|ready)", re.I),
    # this project's vLLM model: a version whose engine failed to load or died (its EngineCore gone)
    re.compile(r"version \d+ is not serving|the vLLM engine of version \d+ died", re.I),
    re.compile(r"stub process '.*' is not healthy", re.I),  # the version's model process died (HTTP 400)
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


@dataclass(frozen=True)
class _KnownFault:
    """A fault recognised from the server's words, whichever transport carried them: its class and
    a sentence naming the likely cause (the raw words go behind :attr:`TritonClientError.detail`)."""

    pattern: re.Pattern[str]
    cls: type[TritonClientError]
    cause: str
    quote: bool = True  # whether the message quotes the server's words (not when they are opaque)


# The vLLM backend's opaque or traceback-carrying answers (see docs/vllm-engine-notes.md) and the
# embedded engine's own words for the same faults: each fault one class on HTTP and gRPC alike.
KNOWN_FAULTS = (
    _KnownFault(re.compile(r"JSONDecodeError|is not valid JSON", re.I), BadRequest,
                "the request's sampling_parameters text is not valid JSON", quote=False),
    _KnownFault(re.compile(r"'NoneType' object has no attribute 'lora_name'"), BadRequest,
                "the server's vLLM backend could not build the sampling parameters: most likely an unknown "
                "key, a value out of range (a negative temperature, top_p outside (0, 1]) or n other than 1",
                quote=False),
    _KnownFault(re.compile(r"unknown sampling parameter|sampling parameter \S+ (is not supported|has the "
                           r"wrong type)|(max_tokens|min_tokens|temperature|top_p) must be", re.I), BadRequest,
                "a sampling parameter is unknown to the server, of the wrong type or out of range"),
    _KnownFault(re.compile(r"At most \d+ image\(s\)|image placeholder\(s\).* image\(s\) were sent", re.I),
                BadRequest,
                "the request carries more images than its prompt or the server accepts (the prompt's "
                "<|image_pad|> placeholders; limit_mm_per_prompt in the model's model.json)"),
)
_RAW_ONLY = re.compile(r"Traceback|\bAt:\s|\n")


def _shown(msg: str) -> str:
    """The server's words as a message may quote them: none when they carry a traceback or run long."""
    return "" if _RAW_ONLY.search(msg) or len(msg) > 240 else f" (the server said: {msg})"


def _known_fault(msg: str, where: str, model: str, version: str | None,
                 common: dict) -> TritonClientError | None:
    for fault in KNOWN_FAULTS:
        if fault.pattern.search(msg):
            which = f"model '{model}' version {version}" if version else f"model '{model}'"
            return fault.cls(f"{where[0].upper() + where[1:]} refused the request to {which}: "
                             f"{fault.cause}{_shown(msg) if fault.quote else ''}.", **common)
    return None


def classify_error(server_message: str, *, url: str, model: str, version: str | None,
                   status: str | int | None = None, in_stream: bool = False,
                   missing: list[str] | None = None) -> TritonClientError:
    """The typed error for an error the server reported.

    Known faults (:data:`KNOWN_FAULTS`: bad sampling parameters, too many images) are told by
    their words and explained in a sentence naming the likely cause; the raw words stay in
    ``server_message`` (:attr:`TritonClientError.detail`). The class is chosen from the message first, because gRPC stream errors carry no status code
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
    if any(p.search(msg) for p in VERSION_PATTERNS) or status == 404:
        which = f"Version {version} of model '{model}'" if version else f"Model '{model}'"
        return VersionNotReady(f"{which} is not loaded and ready on {where}: {msg}", **common)
    if status in ("StatusCode.UNAVAILABLE",):
        return ServerUnreachable(f"The Triton server at {url} is not reachable: {msg}", **common)
    if status in ("StatusCode.DEADLINE_EXCEEDED",):
        return RequestTimeout(f"The request to {where} timed out: {msg}", **common)
    known = None if missing else _known_fault(msg, where, model, version, common)
    if known is not None:
        return known
    if missing or any(p.search(msg) for p in _BAD_REQUEST_PATTERNS) or (
            status == 400 and not msg.startswith(_MODEL_ERROR_PREFIX)) or status == "StatusCode.INVALID_ARGUMENT":
        hint = f" (required input missing: {', '.join(missing)})" if missing else ""
        return BadRequest(f"{where[0].upper() + where[1:]} rejected the request as malformed{hint}: {msg}", **common)
    if in_stream:
        return StreamError(f"The response stream from {where} failed (model '{model}' version {version}): {msg}",
                           **common)
    return InferenceError(f"Model '{model}' version {version} could not answer this request: {msg}", **common)


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


def describe_answer(status: int | str | None, body: bytes | str, content_type: str = "",
                    whose: str = "Triton's") -> str:
    """A few words on an HTTP answer that is not Triton's (never the raw body): "HTTP 404 and an HTML page
    titled '404 Not Found'", "HTTP 200 and JSON that is not Triton's (keys: status)". ``whose``: the
    API that was expected ("the OpenAI API's" for an OpenAI-compatible target)."""
    text = (body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)).strip()
    head = text[:2000].lower()
    if "html" in content_type.lower() or head.startswith(("<!doctype", "<html")) or "<body" in head:
        title = _TITLE.search(text[:5000])
        title_text = " ".join(title.group(1).split())[:80] if title else ""
        what = f"an HTML page titled {title_text!r}" if title_text else "an HTML page"
    elif not text:
        what = "an empty body"
    else:
        try:
            obj = json.loads(text)
        except ValueError:
            snippet = " ".join(text.split())[:60]
            what = f"text that is not JSON ({snippet!r}{'...' if len(text) > 60 else ''})"
        else:
            keys = ", ".join(list(obj)[:5]) if isinstance(obj, dict) else ""
            what = (f"JSON that is not {whose} (keys: {keys})" if keys
                    else f"JSON that is not {whose} (a {type(obj).__name__})")
    return f"HTTP {status} and {what}" if status is not None else what


def not_triton(url: str, found: str) -> NotTritonServer:
    """The error for an address where something other than Triton answers; ``found`` says what."""
    return NotTritonServer(f"The server at {url} is not a Triton server: it answered {found}.", url=url,
                           server_message=found)


# --------------------------------------------------------------------------- OpenAI-compatible servers


class NotOpenAIServer(TritonClientError):
    """Something answers at the address, but not the OpenAI chat API (``/v1/chat/completions``,
    ``/v1/models``): another web server, a Triton port, a wrong port."""


class ModelNotServed(VersionNotReady):
    """The OpenAI-compatible server does not serve the model name asked for; ``served`` lists the
    names it does serve (``GET /v1/models``; empty when they could not be read)."""

    def __init__(self, message: str, *, served: list[str] | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.served = list(served or [])


def not_openai(url: str, found: str) -> NotOpenAIServer:
    """The error for an address where something other than an OpenAI-compatible server answers."""
    return NotOpenAIServer(f"The server at {url} is not an OpenAI-compatible server: it answered {found}.",
                           url=url, server_message=found)
