"""Ports for tests that need an address where nothing listens."""

from __future__ import annotations

import socket


def closed_port() -> int:
    """A local port that was free a moment ago: nothing listens on it (a connection is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
