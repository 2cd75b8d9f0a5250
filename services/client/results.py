"""What the Triton client returns: the server (``ServerInfo``), a model version (``VersionState``) and
a finished request with its timings (``Completion``, filled response by response by
``ResponseCollector`` on every transport).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    tokens or text, ``chunk_ns`` holds their arrival times (for inter-token latency) and
    ``chunk_tokens`` the token count of each (the server's ``num_output_tokens`` of that response:
    the stock vLLM backend and both of ours send the count of new tokens per streamed response;
    None where the response carried no count).
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
    chunk_tokens: list[int | None] = field(default_factory=list)
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


class ResponseCollector:
    """Accumulates the responses of one request into a ``Completion``."""

    def __init__(self) -> None:
        self.text = bytearray()
        self.num_input_tokens: int | None = None
        self.num_output_tokens = 0
        self.finish_reason: str | None = None
        self.first_token_ns: int | None = None
        self.chunk_ns: list[int] = []
        self.chunk_tokens: list[int | None] = []
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
            self.chunk_tokens.append(None if n_out is None else int(n_out))
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
            chunk_tokens=self.chunk_tokens,
            token_responses=self.token_responses,
            responses=self.responses,
        )
