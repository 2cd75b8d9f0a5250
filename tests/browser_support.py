"""What the browser tests share: Debian's Chromium and the real app served by ``streamlit run``."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from services.core import settings

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (scripts/setup.sh --dev): Playwright's own cannot be fetched
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APP_START_TIMEOUT_S = 40


def require_chromium() -> None:
    """Skip without Chromium, except in CI, which installs it: there its absence is a failure."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium, or scripts/setup.sh --dev)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI installs it, so its absence is a failure here")
    pytest.skip(message)


@contextlib.contextmanager
def open_page(url: str, *, width: int = 1400, height: int = 1800, timeout_ms: int | None = None) -> Iterator[Any]:
    """A Playwright page of Debian's headless Chromium (``CHROMIUM_ARGS``), at ``url``; downloads accepted.

    With ``timeout_ms``, the page's default timeout and ``expect``'s (a process-wide setting, put back
    to Playwright's default on exit) are that, before the page is loaded. The browser (reachable as
    ``page.context.browser`` for more pages) and Playwright are closed on exit.
    """
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
            if timeout_ms is not None:
                page.set_default_timeout(timeout_ms)
                expect.set_options(timeout=timeout_ms)
            page.goto(url)
            yield page
        finally:
            if timeout_ms is not None:
                expect.set_options(timeout=None)  # back to Playwright's default
            browser.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(env_overrides: dict[str, str], log_path: Path) -> Iterator[str]:
    """The dashboard as ``streamlit run app.py`` serves it, with these environment settings; its URL.

    Stopped afterwards; a start that fails or hangs fails the test with the end of the app's log.
    """
    port = free_port()
    env = dict(os.environ, **env_overrides)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=settings.PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + APP_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/_stcore/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer in {APP_START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
