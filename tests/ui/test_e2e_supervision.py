"""End to end in headless Chromium: the dashboard keeps its embedded server up, and names a server
URL where something other than Triton answers.

* The app starts its own embedded server (the tiny checkpoint, the test's own data folder): the
  sidebar shows the start's progress, then READY. The test kills tritonserver with SIGKILL under the
  running app: the page shows the server down within 5 s, comes back to READY by itself, and the
  killed server left no process, shared-memory file or folder behind; nor does the app's stop.
* A real HTTP server that is not Triton (tests/other_http_server.py) as the Server URL: one sentence
  saying what answers there, no traceback, no raw HTML; the app stays usable.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.browser_support import open_page, require_chromium, running_app
from tests.other_http_server import other_http_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

START_MS = 300_000  # one start of the embedded server on a busy 2-core machine
NOTICE_MS = 5_000  # the page shows a dead server within this


def _servers(data_dir: Path) -> list[psutil.Process]:
    """The tritonservers whose repository lies in this data folder (the app's, not another test's)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "tritonserver" and f"--model-repository={data_dir}/" in line:
            found.append(proc)
    return found


def _traces(server: psutil.Process) -> dict:
    line = " ".join(server.cmdline())
    prefix = re.search(r"shm-region-prefix-name=(\S+)", line).group(1)
    repository = Path(re.search(r"--model-repository=(\S+)", line).group(1))
    return {"procs": [server] + server.children(recursive=True), "shm": prefix, "folder": repository.parent}


def _left_behind(traces: dict) -> list[str]:
    def alive(p):
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    left = [f"process {p.pid}" for p in traces["procs"] if alive(p)]
    left += [str(p) for p in Path("/dev/shm").iterdir() if p.name.startswith(traces["shm"])]
    return left + ([str(traces["folder"])] if traces["folder"].exists() else [])


def test_a_killed_embedded_server_comes_back_by_itself_leaving_nothing(tiny_checkpoint, tmp_path):
    from playwright.sync_api import expect

    require_chromium()
    data = tmp_path / "data"
    env = dict(QWEN_TRITON_URL="", QWEN_CHECKPOINT=str(tiny_checkpoint), QWEN_DATA_DIR=str(data))
    with running_app(env, tmp_path / "streamlit.log") as url:
        with open_page(url, timeout_ms=START_MS) as page:
            sidebar = page.locator("[data-testid=stSidebar]")
            # the first start is shown as it goes, not as an empty sidebar
            expect(sidebar.locator("[data-testid=stProgress]")).to_contain_text("Starting the embedded Triton server")
            expect(sidebar.get_by_text("fp8 (v2): READY")).to_be_visible()
            expect(sidebar.get_by_text("bf16 (v1): READY")).to_be_visible()
            (server,) = _servers(data)
            traces = _traces(server)
            assert len(traces["procs"]) == 3  # tritonserver and a model process per version

            server.send_signal(signal.SIGKILL)
            t0 = time.monotonic()
            expect(sidebar.get_by_text("bf16 (v1): READY")).to_have_count(0, timeout=NOTICE_MS)
            expect(sidebar.get_by_text(re.compile(r"is down \(tritonserver killed by SIGKILL\)|Starting the "
                                                  r"embedded Triton server"))).to_be_visible(timeout=NOTICE_MS)
            assert time.monotonic() - t0 < NOTICE_MS / 1000
            # the green "loaded" notice never stands beside a dead server
            expect(sidebar.get_by_text("A tiny random-weight model is loaded")).to_have_count(0)

            expect(sidebar.get_by_text("bf16 (v1): READY")).to_be_visible()
            expect(sidebar.get_by_text("fp8 (v2): READY")).to_be_visible()
            expect(page.locator("[data-testid=stException]")).to_have_count(0)
            assert _left_behind(traces) == []
            (second,) = _servers(data)
            assert second.pid != server.pid
            traces = _traces(second)
    # the app stopped (SIGTERM): its server went with it
    assert _left_behind(traces) == []
    assert not list((data / "embedded_triton").glob("server-*"))


def test_a_server_url_that_is_not_triton_is_named_in_one_sentence(tmp_path):
    from playwright.sync_api import expect

    require_chromium()
    with other_http_server("text") as web:
        address = f"127.0.0.1:{web.server_port}"
        with running_app(dict(QWEN_TRITON_URL=address, QWEN_DATA_DIR=str(tmp_path / "data")),
                         tmp_path / "streamlit.log") as url, open_page(url, timeout_ms=60_000) as page:
            sidebar = page.locator("[data-testid=stSidebar]")
            expect(sidebar.get_by_text(
                f"The server at http://{address} is not a Triton server: it answered GET /v2 with HTTP 200 and "
                "text that is not JSON ('hello, I am not Triton').")).to_be_visible()
            expect(page.locator("[data-testid=stException]")).to_have_count(0)
            expect(page.get_by_role("heading", name="Nutrition-table detector: bf16 vs fp8")).to_be_visible()

            web.mode = "html404"  # the user points the sidebar at the same host another way
            box = sidebar.locator(".st-key-server_url input")
            box.fill(f"http://{address}")
            box.press("Enter")
            expect(sidebar.get_by_text(
                f"The server at http://{address} is not a Triton server: it answered GET /v2 with HTTP 404 and "
                "an HTML page titled '404 Not Found'.")).to_be_visible()
            expect(page.get_by_text("<html")).to_have_count(0)
            expect(page.locator("[data-testid=stException]")).to_have_count(0)

            sidebar.get_by_role("link", name="Detect").click()  # the app stays usable: another page opens
            expect(page.get_by_role("heading", name="Detect nutrition tables")).to_be_visible()
            expect(page.get_by_role("button", name="Detect")).to_be_disabled()
            expect(page.locator("[data-testid=stException]")).to_have_count(0)
