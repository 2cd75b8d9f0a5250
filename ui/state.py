"""Which server the session talks to, and the cached objects behind it (one per process).

The target kind is a sidebar choice: Triton (its versions 1 and 2, as always) or OpenAI-compatible
servers (two variants, each a URL + model name + label: ``services.client.variants``). The Triton
connection settings are three sidebar widgets (``ui.sidebar``) whose keys are below; they keep
their values across pages (``persist_state="session"``), so every page of a session talks to the
same server. The defaults come from the environment (``QWEN_TRITON_URL``, ``QWEN_TRITON_PROTOCOL``):
an empty URL means the embedded server, started and kept up by one supervisor per process
(``services.serving.supervisor``, held in ``st.cache_resource``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from services.core import settings
from services.client.address_check import AddressCheck, check_addresses
from services.client.server_status import ServerStatus, check_server
from services.client.results import VersionState
from services.client.server_target import ServerTarget, current_target, server_target
from services.client.variants import (
    Variant,
    VariantClients,
    client_for,
    default_variants,
    make_variant,
    resolve_variants,
    variant_target,
)
from services.core.versions import VERSION_LABELS
from services.serving.embedded_triton import EmbeddedTriton
from services.serving.supervisor import Snapshot, Supervisor
from services.client.triton_client import PROTOCOLS, TritonClient, parse_url

log = logging.getLogger(__name__)

# Session-state keys of the connection widgets (shared by every page).
URL_KEY = "server_url"
PROTOCOL_KEY = "server_protocol"
TIMEOUT_KEY = "server_timeout_s"
KIND_KEY = "target_kind"  # "triton" or "openai"
TARGET_KINDS = {"triton": "Triton (versions 1 and 2)", "openai": "OpenAI-compatible servers (two variants)"}
VARIANT_SLOTS = ("A", "B")  # the OpenAI variants of the sidebar
VARIANT_FIELDS = ("label", "url", "model")


def variant_key(slot: str, name: str) -> str:
    """Session-state key of one field of one OpenAI variant of the sidebar (``variant_A_url``)."""
    return f"variant_{slot}_{name}"


DEFAULT_TIMEOUT_S = 120.0  # one detection request (the CPU demo model takes tens of seconds)
STATUS_TIMEOUT_S = 5.0  # health and repository-index calls: a server that takes longer is shown as failing


def default_url() -> str:
    """The server URL from the environment; empty for the embedded server."""
    return settings.triton_url() or ""


def default_protocol() -> str:
    """``QWEN_TRITON_PROTOCOL``, or the scheme of ``QWEN_TRITON_URL``, else ``http``."""
    url = default_url()
    if "://" in url and url.split("://", 1)[0].lower() in PROTOCOLS:
        return url.split("://", 1)[0].lower()
    try:
        return settings.triton_protocol()
    except ValueError:  # a bad environment value: the sidebar shows the choice, http is the safe default
        return "http"


_SUPERVISORS: list[Supervisor] = []  # the one running, so that a cleared cache (tests) stops the old one


@st.cache_resource(show_spinner=False)
def embedded_supervisor() -> Supervisor:
    """The process's supervised embedded server, started in the background on first use.

    It restarts the server by itself when the server or a version's model process dies (see
    ``services.serving.supervisor``); pages read its ``snapshot()`` and never wait for it.
    """
    for old in _SUPERVISORS:
        old.stop()
    _SUPERVISORS[:] = [Supervisor().start()]
    return _SUPERVISORS[0]


def stop_embedded() -> None:
    """Stop the process's supervised server and forget it: the next page starts a fresh one."""
    for old in _SUPERVISORS:
        old.stop()
    _SUPERVISORS.clear()
    embedded_supervisor.clear()


@st.cache_resource(show_spinner=False, max_entries=4)
def embedded_server_target(pid: int, _server: EmbeddedTriton) -> ServerTarget:
    """The target of the running embedded server (one per server: the checkpoint is described once)."""
    return server_target(_server, "http")


@st.cache_resource(show_spinner=False)
def get_client(url: str, protocol: str, timeout_s: float) -> TritonClient:
    """One client per server, protocol and timeout, shared by the sessions of the process."""
    return TritonClient(url, protocol=protocol, timeout_s=timeout_s)  # type: ignore[arg-type]


@dataclass
class Connection:
    """The server a session uses: the target, a detection client, and its status.

    ``error`` says why there is no client (a URL that is not a server address, or an embedded
    server that is starting, down or failed); ``client`` and ``status`` are then ``None``.
    ``supervision``: what the embedded server's supervisor says (embedded only).
    """

    url_setting: str  # what the user chose: "" for the embedded server
    protocol: str
    timeout_s: float
    target: ServerTarget | None = None
    client: TritonClient | None = None
    status: ServerStatus | None = None
    error: str | None = None
    addresses: AddressCheck | None = None  # an external server's derived addresses, checked
    supervision: Snapshot | None = None
    kind: str = "triton"  # the target kind: "triton" or "openai" (KIND_KEY)
    variants: tuple[Variant, ...] = ()  # what Detect and Benchmark ask, keyed as requests are stored
    variant_status: list[tuple[Variant, ServerStatus]] = field(default_factory=list)  # OpenAI: each checked

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys Detect and Benchmark offer: Triton's versions, or the OpenAI variants' labels."""
        return tuple(v.key for v in self.variants) if self.variants else tuple(VERSION_LABELS)

    @property
    def embedded(self) -> bool:
        return self.target is not None and self.target.embedded

    @property
    def usable(self) -> bool:
        """A client, and a server that answered its health check (live, no error)."""
        return (self.client is not None and self.status is not None and not self.status.error
                and self.status.live)


def connect(url_setting: str, protocol: str, timeout_s: float) -> Connection:
    """Resolve the server, make its client and check its status; failures become ``error``.

    An empty ``url_setting`` means the embedded server (its supervisor started here on first use).
    """
    conn = Connection(url_setting=url_setting.strip(), protocol=protocol, timeout_s=timeout_s,
                      variants=default_variants())
    try:
        if conn.url_setting:
            parse_url(conn.url_setting)  # refuses other schemes and paths, which the target would drop
            conn.target = current_target(url=conn.url_setting, protocol=protocol)
        else:
            conn.supervision = snap = embedded_supervisor().snapshot()
            if not snap.ready:
                conn.error = snap.message
                return conn
            conn.target = dataclasses.replace(embedded_server_target(snap.server.pid, snap.server), protocol=protocol)
        conn.client = get_client(conn.target.url(), protocol, float(timeout_s))
        status_client = get_client(conn.target.url(), protocol, STATUS_TIMEOUT_S)
    except ValueError as exc:
        conn.error = f"The server URL {conn.url_setting!r} is not usable: {exc}"
        return conn
    conn.status = check_server(status_client)
    if not conn.target.embedded and not conn.status.error:
        conn.addresses = check_target_addresses(conn.target.http_url, conn.target.grpc_url, conn.target.metrics_url)
    return conn


@st.cache_data(ttl=60, show_spinner=False)
def check_target_addresses(http_url: str, grpc_url: str, metrics_url: str) -> AddressCheck:
    """Whether an external server's HTTP, gRPC and metrics addresses are one server (re-checked each minute)."""
    target = ServerTarget(http_url, grpc_url, metrics_url, "http", embedded=False, checkpoint=None,
                          repository=None, server_pid=None)
    return check_addresses(target, timeout_s=STATUS_TIMEOUT_S)


def current_connection() -> Connection:
    """The connection of this session, from the sidebar's widgets (their defaults before they exist)."""
    state = st.session_state
    if state.get(KIND_KEY, "triton") == "openai":
        return connect_variants(variant_fields(), float(state.get(TIMEOUT_KEY, DEFAULT_TIMEOUT_S)))
    return connect(str(state.get(URL_KEY, default_url()) or ""), str(state.get(PROTOCOL_KEY, default_protocol())),
                   float(state.get(TIMEOUT_KEY, DEFAULT_TIMEOUT_S)))


@st.cache_resource(show_spinner=False, max_entries=8)
def get_variant_clients(variants: tuple[Variant, ...], timeout_s: float) -> VariantClients:
    """One set of clients per variants and timeout, shared by the sessions of the process."""
    return VariantClients(variants, variant_target(variants[0], None), timeout_s)  # type: ignore[arg-type]


def check_variant(variant: Variant) -> ServerStatus:
    """Whether a variant's server answers and serves its model: one entry under the variant's key."""
    with client_for(variant, timeout_s=STATUS_TIMEOUT_S) as client:
        status = check_server(client, versions=())
    if status.error:
        status.versions = [VersionState(model=variant.model, version=variant.key, state="UNREACHABLE",
                                        reason=status.error)]
    return status


def connect_variants(fields: list[dict[str, Any]], timeout_s: float) -> Connection:
    """The connection to OpenAI-compatible variants (``fields``: label, url, model of each); each is checked."""
    conn = Connection(url_setting="", protocol="http", timeout_s=timeout_s, kind="openai")
    try:
        conn.variants = resolve_variants(
            make_variant({"kind": "openai", **f}, f"variant {slot}") for slot, f in zip(VARIANT_SLOTS, fields))
        conn.target = variant_target(conn.variants[0], None)  # type: ignore[arg-type]
        conn.client = get_variant_clients(conn.variants, float(timeout_s))  # type: ignore[assignment]
    except ValueError as exc:
        conn.error = str(exc)
        return conn
    conn.variant_status = [(v, check_variant(v)) for v in conn.variants]
    statuses = [s for _, s in conn.variant_status]
    answered = [s for s in statuses if not s.error]
    conn.status = ServerStatus(
        url=", ".join(s.url for s in statuses), live=bool(answered) and all(s.live for s in answered),
        ready=len(answered) == len(statuses) and all(s.ready for s in answered),
        server_version=", ".join(dict.fromkeys(s.server_version for s in answered if s.server_version)),
        versions=[e for s in statuses for e in s.versions],
        error=None if answered else "; ".join(f"{v.label}: {s.error}" for v, s in conn.variant_status))
    return conn


def variant_fields() -> list[dict[str, Any]]:
    """The OpenAI variants' fields as the sidebar holds them."""
    state = st.session_state
    return [{name: str(state.get(variant_key(slot, name), "") or "").strip() for name in VARIANT_FIELDS}
            for slot in VARIANT_SLOTS]


def with_variants(config: Any, conn: Connection) -> Any:
    """A run's config (``BenchmarkConfig`` or ``SweepConfig``) on the session's OpenAI variants: those whose
    keys it chose, else all of them; a Triton session's config as it is."""
    if conn.kind != "openai":
        return config
    sweep = hasattr(config, "bench")
    bench = config.bench if sweep else config
    # a form that knows only Triton's versions (Compare's fresh paired run) asks every variant
    chosen = tuple(v for v in conn.variants if v.key in set(bench.versions)) or conn.variants
    bench = dataclasses.replace(bench, variants=chosen, versions=tuple(v.key for v in chosen))
    return dataclasses.replace(config, bench=bench) if sweep else bench
