"""The sidebar of every page: the page menu, which server, its health, each version's state, which model.

``render_sidebar()`` draws the page menu (:data:`MENU`), the target kind (Triton, or two
OpenAI-compatible variants), the connection settings (Triton: server URL, protocol; OpenAI: each
variant's label, URL and model name; the request timeout), then what the servers say, and returns
the session's :class:`ui.state.Connection` for the page to use. The helpers below it also draw the home page's
fuller overview.

The menu is the dashboard's own: Streamlit's, which names each page after its file and so the home
page "app", is turned off in ``.streamlit/config.toml`` (``client.showSidebarNavigation``).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from services.client.server_status import ServerStatus
from services.core import settings
from services.serving import supervisor
from services.serving.supervisor import Snapshot
from services.core.versions import VERSION_LABELS, version_label
from services.client.triton_client import PROTOCOLS
from ui import state
from ui.state import Connection

# (page file, title in the menu, icon): the home page, then the pages of pages/ (their URLs are
# Streamlit's, from the file names: /Detect, /Benchmark, /Compare)
MENU = (
    ("app.py", "Home", ":material/home:"),
    ("pages/1_Detect.py", "Detect", ":material/search:"),
    ("pages/2_Benchmark.py", "Benchmark", ":material/speed:"),
    ("pages/3_Compare.py", "Compare", ":material/compare:"),
)
WATCH_EVERY_S = 2.0  # how often every page asks the embedded server's supervisor for news


def render_menu() -> None:
    """The page menu at the top of the sidebar."""
    with st.sidebar.container(key="page_menu"):
        for page, title, icon in MENU:
            st.page_link(page, label=title, icon=icon)


def model_notice(conn: Connection) -> tuple[str, str]:
    """(``"info"|"success"|"warning"``, text): plainly, which model answers."""
    target = conn.target
    if target is None:
        return "info", "No server, so no model."
    if conn.status is not None and conn.status.error:
        return "info", "The model is unknown while the server does not answer."
    if not target.embedded or target.checkpoint is None:
        return "info", ("**An external server's model.** The dashboard cannot see which checkpoint "
                        f"the server at `{target.http_url}` serves (in production: the real fine-tune).")
    cp = target.checkpoint
    params = f", {cp.parameters / 1e6:.1f} M parameters" if cp.parameters else ""
    if cp.kind == "tiny random weights":
        return "warning", ("**A tiny random-weight model is loaded.** Its answers are gibberish and its boxes "
                           f"mean nothing: it only exercises the whole stack ({cp.path.name}{params}).")
    if cp.kind == "demo detector":
        return "success", (f"**The demo detector is loaded:** {cp.description} ({cp.path.name}{params}).")
    return "success", f"**Checkpoint folder loaded:** {cp.description} (`{cp.path}`{params})."


def engine_line(embedded: bool) -> str:
    """Which engine answers: the embedded server's (``QWEN_ENGINE``), or the external server's own."""
    if embedded:
        return (f"Engine: **{settings.engine()}** (QWEN_ENGINE; "
                f"{'continuous batching' if settings.engine() == 'vllm' else 'one request at a time'})")
    return "Engine: the external server's own (production: Triton's vLLM backend)"


def _show(box: Any, kind: str, text: str) -> None:
    getattr(box, kind)(text)


def health_line(status: ServerStatus, server: str = "Triton") -> tuple[str, str]:
    """(kind, text) saying whether the server is live and ready (``server``: what its version is of)."""
    if status.error:
        return "error", status.error
    if status.live and status.ready:
        return "success", f"Server live and ready ({server} {status.server_version or '?'})"
    if status.live:
        return "warning", f"Server live but not ready ({server} {status.server_version or '?'})"
    return "error", "Server not live"


def version_lines(status: ServerStatus) -> list[tuple[str, str]]:
    """(kind, text) per version: READY, or its state with the server's reason."""
    out = []
    for version in VERSION_LABELS:
        v = status.version(version)
        if v.ready:
            out.append(("success", f"{version_label(version)}: READY"))
        else:
            reason = f" — {v.reason}" if v.reason else ""
            out.append(("error", f"{version_label(version)}: {v.state}{reason}"))
    extra = [v for v in status.versions if v.version not in VERSION_LABELS]
    for v in extra:
        out.append(("info", f"{version_label(v.version)}: {v.state}" + (f" — {v.reason}" if v.reason else "")))
    return out


@st.fragment(run_every=WATCH_EVERY_S)
def _watch_embedded(generation: int) -> None:
    """Every ``WATCH_EVERY_S`` s: the whole page again when the embedded server changed state (it died,
    came back, failed), so every page shows it within seconds; the progress bar while it starts."""
    snap = state.embedded_supervisor().snapshot()
    if snap.generation != generation:
        st.rerun(scope="app")
    if snap.phase == supervisor.STARTING:
        st.progress(snap.progress or 0.0, text=snap.message)


def _show_supervision(snap: Snapshot) -> None:
    """The embedded server while it is not ready: starting (the watch shows progress), down, failed."""
    sb = st.sidebar
    if snap.phase == supervisor.DOWN:
        sb.warning(snap.message)
    elif snap.phase == supervisor.FAILED:
        sb.error(snap.message)
        if snap.log_tail:
            with sb.expander("The end of the server's log", expanded=True):
                st.code(snap.log_tail, language=None)
        if sb.button("Restart the embedded server", key="sidebar_restart", type="primary"):
            state.embedded_supervisor().restart()
            st.rerun()
    elif snap.phase != supervisor.STARTING:
        sb.info(snap.message)


def variant_lines(conn: Connection) -> list[tuple[str, str]]:
    """(kind, text) per OpenAI variant: it serves its model, or why not (unreachable, another model)."""
    out = []
    for variant, status in conn.variant_status:
        state = status.version(variant.key)
        if state.ready:
            server = f" (server version {status.server_version})" if status.server_version else ""
            out.append(("success", f"{variant.label}: serves `{variant.model}` at {variant.url}{server}"))
        else:
            out.append(("error", f"{variant.label}: {state.state}" + (f" — {state.reason}" if state.reason else "")))
    return out


def _render_variants() -> Connection:
    """The OpenAI-compatible variants: label, URL and model name of each, then each one checked."""
    sb = st.sidebar
    for slot in state.VARIANT_SLOTS:
        sb.markdown(f"**Variant {slot}**")
        cols = sb.columns([2, 3])
        cols[0].text_input("Label", key=state.variant_key(slot, "label"), persist_state="session",
                           placeholder="the model name", help="How the dashboard names this variant (e.g. bf16-vllm).")
        cols[1].text_input("Model", key=state.variant_key(slot, "model"), persist_state="session",
                           placeholder="served model name", help="A name the server lists at /v1/models.")
        sb.text_input("URL", key=state.variant_key(slot, "url"), persist_state="session",
                      placeholder="http://127.0.0.1:8100",
                      help="The server's base URL (http://host:port, /v1 optional): vllm serve, SGLang, TGI, NIM...")
    _timeout_input()
    conn = state.current_connection()
    if conn.error:
        sb.error(conn.error)
        return conn
    for kind, text in variant_lines(conn):
        _show(sb, kind, text)
    return conn


def _timeout_input() -> None:
    st.sidebar.number_input("Request timeout (s)", min_value=1.0, max_value=3600.0, value=state.DEFAULT_TIMEOUT_S,
                            step=10.0, key=state.TIMEOUT_KEY, persist_state="session",
                            help="A detection request that takes longer fails with a timeout error.")


def render_sidebar() -> Connection:
    """Draw the sidebar and return the session's connection."""
    sb = st.sidebar
    render_menu()
    kind = sb.radio("Target", list(state.TARGET_KINDS), format_func=state.TARGET_KINDS.get, key=state.KIND_KEY,
                    persist_state="session",
                    help="Triton: versions 1 and 2 of its model. OpenAI-compatible: two servers (or models) "
                         "that speak /v1/chat/completions, compared side by side.")
    if kind == "openai":
        sb.header("OpenAI-compatible variants")
        return _render_variants()
    sb.header("Triton server")
    env_url = state.default_url()
    sb.text_input(
        "Server URL", value=env_url, key=state.URL_KEY, persist_state="session",
        placeholder="empty: the embedded server",
        help="host:port of Triton's HTTP endpoint (http://host:8000 or grpc://host:8001 also work). "
             "Leave empty to use the server this dashboard starts itself. "
             f"Default from QWEN_TRITON_URL: {env_url or 'unset'}.",
    )
    default_protocol = state.default_protocol()
    sb.radio("Protocol", PROTOCOLS, index=PROTOCOLS.index(default_protocol), key=state.PROTOCOL_KEY,
             horizontal=True, persist_state="session",
             help="How detection requests travel: HTTP generate / generate_stream, or a gRPC stream.")
    _timeout_input()
    conn = state.current_connection()
    if conn.supervision is not None:
        with sb:
            _watch_embedded(conn.supervision.generation)
        if conn.supervision.phase != supervisor.READY:
            _show_supervision(conn.supervision)
            return conn
    if conn.error:
        sb.error(conn.error)
        return conn
    assert conn.target is not None and conn.status is not None
    sb.caption(f"{'Embedded' if conn.embedded else 'External'} server: "
               f"`{conn.target.url(conn.protocol)}` ({conn.protocol})")
    sb.caption(engine_line(conn.embedded))
    _show(sb, *health_line(conn.status))
    if conn.addresses is not None and conn.addresses.verdict != "same":
        _show(sb, "warning" if conn.addresses.verdict == "different" else "caption", conn.addresses.message)
    if not conn.status.error:
        for kind, text in version_lines(conn.status):
            _show(sb, kind, text)
    sb.subheader("Model")
    _show(sb, *model_notice(conn))
    return conn
