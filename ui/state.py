"""Which server the session talks to, and the cached objects behind it (one per process).

The connection settings are three sidebar widgets (``ui.sidebar``) whose keys are below; they keep
their values across pages (``persist_state="session"``), so every page of a session talks to the
same server. The defaults come from the environment (``QWEN_TRITON_URL``, ``QWEN_TRITON_PROTOCOL``):
an empty URL means the embedded server, started and kept up by one supervisor per process
(``services.serving.supervisor``, held in ``st.cache_resource``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import streamlit as st

from services.core import settings
from services.client.address_check import AddressCheck, check_addresses
from services.client.server_status import ServerStatus, check_server
from services.client.server_target import ServerTarget, current_target, server_target
from services.serving.embedded_triton import EmbeddedTriton
from services.serving.supervisor import Snapshot, Supervisor
from services.client.triton_client import PROTOCOLS, TritonClient, parse_url

log = logging.getLogger(__name__)

# Session-state keys of the connection widgets (shared by every page).
URL_KEY = "server_url"
PROTOCOL_KEY = "server_protocol"
TIMEOUT_KEY = "server_timeout_s"

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
    conn = Connection(url_setting=url_setting.strip(), protocol=protocol, timeout_s=timeout_s)
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
    return connect(str(state.get(URL_KEY, default_url()) or ""), str(state.get(PROTOCOL_KEY, default_protocol())),
                   float(state.get(TIMEOUT_KEY, DEFAULT_TIMEOUT_S)))
