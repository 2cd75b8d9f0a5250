"""Whether a target's HTTP, gRPC and metrics addresses belong to one Triton server.

With only ``QWEN_TRITON_URL`` set, the gRPC and metrics addresses are derived (ports 8001 and 8002):
they may well be another server's (a second Triton on the same host with other ports). Three checks,
each where it can be made:

1. **The listener** (a server on this machine): the process listening on each port (psutil). One
   pid behind the HTTP and gRPC ports (and the metrics port) is the same server; two pids are two.
2. **The models**: the repository index over HTTP and over gRPC (models, versions, states) must be
   the same, and the metrics page must list the same model versions (``nv_inference_*`` series).
3. **The counters**: Triton's per-version statistics only grow. Read over HTTP, then over gRPC and
   the metrics page, then over HTTP again: each gRPC counter (requests, their cumulative time in ns)
   and each metrics counter (``nv_inference_request_success``, ``nv_inference_count``) of one server
   lies between the two HTTP readings. A served request makes the cumulative times of two servers
   differ; two servers that have served nothing, with the same models, cannot be told apart this way
   (the answer is then "not verified", unless the listener check decided).

:func:`check_addresses` gives an :class:`AddressCheck`: ``verdict`` ``"same"``, ``"different"`` or
``"unverified"``, and sentences for the user.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlparse

import psutil

from services.client.server_target import ServerTarget, split_host_port

SAME, DIFFERENT, UNVERIFIED = "same", "different", "unverified"
_COUNTERS = ("nv_inference_request_success", "nv_inference_count")


@dataclass
class AddressCheck:
    """``verdict``: :data:`SAME`, :data:`DIFFERENT` or :data:`UNVERIFIED`; ``problems``: what
    disagrees (for the user); ``evidence``: what was checked and agreed."""

    verdict: str
    problems: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # what could not be read or told apart

    @property
    def message(self) -> str:
        if self.verdict == DIFFERENT:
            return ("The gRPC / metrics addresses do not belong to the server at the HTTP address: "
                    + "; ".join(self.problems) + ". Set QWEN_TRITON_GRPC_URL / QWEN_TRITON_METRICS_URL.")
        if self.verdict == UNVERIFIED:
            return ("Could not verify that the gRPC and metrics addresses are the HTTP server's: "
                    + "; ".join(self.unchecked or ["nothing told them apart"]) + ".")
        extra = f" Not checked: {'; '.join(self.unchecked)}." if self.unchecked else ""
        return "HTTP, gRPC and metrics addresses are one server (" + "; ".join(self.evidence) + ")." + extra


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine: a loopback name or address, or an address of one of
    its interfaces. A name that does not resolve is not (it cannot be checked)."""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError, OSError):
        return False
    mine = {a.address.split("%", 1)[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.is_loopback or ip.is_unspecified or str(ip) in mine:
            return True
    return False


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` on this machine, or None (nobody listens,
    or the listener is another user's and the system does not say whose)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    pids = {c.pid for c in connections
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    return pids.pop() if len(pids) == 1 else None


def _addresses(target: ServerTarget) -> dict[str, tuple[str, int]]:
    out = {"HTTP": split_host_port(target.http_url, 8000), "gRPC": split_host_port(target.grpc_url, 8001)}
    if target.metrics_url:
        parsed = urlparse(target.metrics_url)
        if parsed.hostname:
            out["metrics"] = (parsed.hostname, parsed.port or 8002)
    return out


def _listener_check(addresses: Mapping[str, tuple[str, int]], check: AddressCheck) -> bool:
    """Check 1; True when it decided."""
    if not all(is_local_host(host) for host, _ in addresses.values()):
        return False
    pids = {name: listening_pid(port) for name, (_, port) in addresses.items()}
    if any(pid is None for pid in pids.values()):
        return False
    if len(set(pids.values())) == 1:
        check.evidence.append(f"one process, pid {pids['HTTP']}, listens on every port")
        return True
    check.problems.append(", ".join(f"{name} port {addresses[name][1]} is pid {pid}" for name, pid in pids.items()))
    return True


def _index(entries: Any) -> set[tuple[str, str, str]]:
    if isinstance(entries, Mapping):
        entries = entries.get("models", [])
    return {(str(e.get("name")), str(e.get("version", "")), str(e.get("state", ""))) for e in entries or []}


def _stats(entries: Any) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(model, version): (successful requests, their cumulative ns)}`` of a statistics answer."""
    out = {}
    for s in (entries or {}).get("model_stats", []):
        success = (s.get("inference_stats") or {}).get("success") or {}
        out[(str(s.get("name")), str(s.get("version")))] = (int(success.get("count", 0)), int(success.get("ns", 0)))
    return out


def _metrics_counters(text: str) -> dict[tuple[str, str], int]:
    from services.bench.triton_metrics import parse_metrics, parse_series_key

    out: dict[tuple[str, str], int] = {}
    for key, value in parse_metrics(text).items():
        name, labels = parse_series_key(key)
        if name == "nv_inference_request_success" and "model" in labels:
            out[(labels["model"], labels.get("version", ""))] = int(value)
    return out


def _read_protocols(target: ServerTarget, timeout_s: float) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from services.bench.triton_metrics import metrics_opener, read_metrics_text

    http = httpclient.InferenceServerClient(target.http_url, connection_timeout=timeout_s, network_timeout=timeout_s)
    grpc = grpcclient.InferenceServerClient(target.grpc_url)
    try:
        got: dict[str, Any] = {"http_index": http.get_model_repository_index(),
                               "http_stats_0": http.get_inference_statistics()}
        got["grpc_index"] = grpc.get_model_repository_index(as_json=True, client_timeout=timeout_s)
        got["grpc_stats"] = grpc.get_inference_statistics(as_json=True, client_timeout=timeout_s)
        got["metrics"] = None
        if target.metrics_url:
            try:
                got["metrics"] = read_metrics_text(metrics_opener(), target.metrics_url, timeout_s)
            except Exception as exc:  # noqa: BLE001 - an unreadable metrics page is a finding, not a crash
                got["metrics_error"] = f"{type(exc).__name__}: {exc}"
        got["http_stats_1"] = http.get_inference_statistics()
        return got
    finally:
        http.close()
        grpc.close()


def _protocol_checks(got: Mapping[str, Any], check: AddressCheck) -> bool:
    """Checks 2 and 3; True when the counters told the servers apart or matched a served request."""
    http_index, grpc_index = _index(got["http_index"]), _index(got["grpc_index"])
    if http_index != grpc_index:
        check.problems.append(f"the model repository differs over HTTP ({sorted(http_index)}) and gRPC "
                              f"({sorted(grpc_index)})")
    before, after, grpc = _stats(got["http_stats_0"]), _stats(got["http_stats_1"]), _stats(got["grpc_stats"])
    decided = False
    for key, (lo, hi) in ((k, (before.get(k, (0, 0)), after.get(k, (0, 0)))) for k in set(before) | set(after)):
        g = grpc.get(key, (0, 0))
        if not (lo[0] <= g[0] <= hi[0] and lo[1] <= g[1] <= hi[1]):
            check.problems.append(f"{key[0]} v{key[1]} has served {g[0]} requests over gRPC's address but "
                                  f"{lo[0]} over HTTP's")
            decided = True
        elif hi[1] > 0:
            decided = True
    if decided and not check.problems:
        check.evidence.append("the HTTP and gRPC addresses report the same request counters")
    if got.get("metrics_error"):
        check.unchecked.append(f"the metrics page could not be read ({got['metrics_error']})")
    elif got.get("metrics") is not None:
        counters = _metrics_counters(got["metrics"])
        ready = {(m, v) for m, v, state in http_index if state == "READY"}
        if counters and set(counters) != ready:
            check.problems.append(f"the metrics page lists {sorted(counters)}, the HTTP server serves {sorted(ready)}")
        for key, n in counters.items():
            lo, hi = before.get(key, (0, 0))[0], after.get(key, (0, 0))[0]
            if not lo <= n <= hi:
                check.problems.append(f"the metrics page counts {n} successful requests of {key[0]} v{key[1]}, "
                                      f"the HTTP server {lo}")
        if counters and not check.problems:
            check.evidence.append("the metrics page lists the same model versions and counts")
    return decided or bool(check.problems)


def check_addresses(target: ServerTarget, timeout_s: float = 3.0) -> AddressCheck:
    """Whether the target's HTTP, gRPC and metrics addresses are one server (see the module docstring).
    The embedded server's addresses are its own: not checked."""
    if target.embedded:
        return AddressCheck(SAME, evidence=["the embedded server's own addresses"])
    check = AddressCheck(UNVERIFIED)
    decided = _listener_check(_addresses(target), check)
    try:
        got = _read_protocols(target, timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported, never raised into the page
        check.unchecked.append(f"the addresses could not all be read ({type(exc).__name__}: {exc})")
    else:
        decided = _protocol_checks(got, check) or decided
    if check.problems:
        check.verdict = DIFFERENT
    elif decided:
        check.verdict = SAME
    else:
        check.unchecked.append("neither address has served a request yet and both serve the same models")
    return check
