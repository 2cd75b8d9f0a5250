"""End to end: the Benchmark page of the real app (``streamlit run app.py``) in headless Chromium.

A person opens the Benchmark page, starts a run long enough to watch (about ten seconds against the
test server's tiny model on an idle machine), and sees the live charts (a fragment that reruns
itself every second) grow: the number of points in the plotly latency and memory charts (read from
the rendered plotly divs' ``data``) increases between two moments, while the form above keeps the
values typed into it. Then the run is cancelled from the page (so that a busy machine does not make the test
slow) and the page shows its status, the summary table, the exports and the run in the history.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.browser_support import open_page, require_chromium, running_app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SCREENSHOT_DIR = Path(os.environ.get("QWEN_TEST_SCREENSHOTS", "/tmp/qwen-test-screenshots"))
REQUESTS_PER_VERSION = 100  # x 2 versions x ~50 ms: about 10 s on an idle machine
GROWTH_TIMEOUT_S = 30
RUN_END_TIMEOUT_MS = 90_000

# points drawn in the live charts, by chart title: markers of the latency chart, lines of the memory chart
POINTS_JS = """
() => {
  const SIZES = {f8: 8, f4: 4, i8: 8, u8: 8, i4: 4, u4: 4, i2: 2, u2: 2, i1: 1, u1: 1};
  const count = (x) => {  // plotly sends numpy arrays base64-encoded ({dtype, bdata}); lists stay lists
    if (!x) return 0;
    if (Array.isArray(x) || ArrayBuffer.isView(x)) return x.length;
    if (x.bdata !== undefined) return atob(x.bdata).length / (SIZES[x.dtype] || 8);
    return 0;
  };
  const out = {};
  for (const div of document.querySelectorAll('.st-key-bench_live .js-plotly-plot')) {
    const title = ((div.layout && div.layout.title && div.layout.title.text) || '').replace(/<[^>]*>/g, '');
    const key = title.startsWith('Latency') ? 'latency' : /memory/i.test(title) ? 'memory'
              : title.startsWith('Throughput') ? 'throughput' : title;
    out[key] = (div.data || []).reduce((n, t) => n + count(t.x), 0);
  }
  return out;
}
"""




@pytest.fixture
def app_url(triton_server, tmp_path):
    """The dashboard as ``streamlit run`` serves it, on the test server, with its own data folder."""
    require_chromium()
    with running_app(dict(QWEN_TRITON_URL=triton_server.http_url, QWEN_TRITON_PROTOCOL="http",
                    QWEN_TRITON_METRICS_URL=triton_server.metrics_url, QWEN_DATA_DIR=str(tmp_path / "data")), tmp_path / "streamlit.log") as url:
        yield url


def _fill(page, key: str, value: str) -> None:
    """Type into a number input of the form and leave it (Enter would submit the form)."""
    box = page.locator(f".st-key-{key} input")
    box.fill(value)
    box.press("Tab")


def test_live_charts_grow_while_a_run_goes_then_the_summary_shows(app_url):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    with open_page(f"{app_url}/Benchmark", height=2000) as page:
        expect(page.get_by_role("heading", name="Benchmark bf16 against fp8")).to_be_visible(timeout=30_000)
        expect(page.locator("[data-testid=stSidebar]").get_by_text("fp8 (v2): READY")).to_be_visible()
        expect(page.get_by_text("No runs yet.")).to_be_visible()

        _fill(page, "bench_requests", str(REQUESTS_PER_VERSION))
        _fill(page, "bench_warmup", "1")
        _fill(page, "bench_max_tokens", "4")
        page.locator(".st-key-bench_start button").click()

        # the live panel: progress, a cancel button and the charts
        expect(page.locator(".st-key-bench_cancel button")).to_be_visible(timeout=30_000)
        # the history shows the running run (said to be going until it is listed), never "No runs yet"
        expect(page.get_by_text("No runs yet.")).to_have_count(0)
        expect(page.get_by_text(re.compile(r"of this session is going \(bf16")).or_(
            page.locator(".st-key-bench_history")).first).to_be_visible()
        expect(page.locator(".st-key-bench_live .js-plotly-plot")).to_have_count(3, timeout=30_000)

        def points() -> dict[str, int]:
            return page.evaluate(POINTS_JS)

        deadline = time.monotonic() + GROWTH_TIMEOUT_S
        first = points()
        while first.get("latency", 0) == 0:
            assert time.monotonic() < deadline, f"no request drawn in the live latency chart: {first}"
            page.wait_for_timeout(250)
            first = points()
        later = first
        while not (later["latency"] > first["latency"] and later.get("memory", 0) > first.get("memory", 0)
                   and later.get("throughput", 0) > 0):  # throughput: once measured requests (not warm-up) end
            assert time.monotonic() < deadline, f"the live charts did not grow: {first} then {later}"
            page.wait_for_timeout(500)
            later = points()
        # the form above the live panel keeps what was typed while the panel refreshes
        expect(page.locator(".st-key-bench_requests input")).to_have_value(str(REQUESTS_PER_VERSION))
        expect(page.locator("[data-testid=stException]")).to_have_count(0)

        # cancel (the machine may be slow: the test does not wait for all the requests); on a fast
        # machine the run may have completed already
        cancel = page.locator(".st-key-bench_cancel button")
        if cancel.count():
            try:
                cancel.click(timeout=5_000)
            except PlaywrightError:  # the run ended between the look and the click
                pass

        # the end: status, summary table, the run in the history; the live panel is gone
        expect(page.get_by_text(re.compile(r"^Status: (cancelled|completed)"))).to_be_visible(
            timeout=RUN_END_TIMEOUT_MS)
        expect(page.get_by_role("heading", name="Run #1")).to_be_visible()
        expect(page.locator(".st-key-bench_live")).to_have_count(0)
        expect(page.locator(".st-key-bench_result .js-plotly-plot")).to_have_count(3)
        # the summary, its memory table and the history; the summary's tables fit: no horizontal scrolling
        expect(page.locator("[data-testid=stDataFrame]")).to_have_count(3)
        for n, table in enumerate(("the summary", "its memory table")):  # above the history, in this order
            scroller = page.locator("[data-testid=stDataFrame]").nth(n).locator(".dvn-scroller")
            expect(scroller).to_have_count(1)
            width = scroller.evaluate("e => [e.scrollWidth, e.clientWidth]")
            assert width[0] <= width[1] + 1, f"{table} runs off the right edge: {width}"
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        page.locator(".st-key-bench_result").scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOT_DIR / "benchmark_summary.png"), full_page=True)
        # an export, made when its button is pressed, downloaded through the browser
        with page.expect_download(timeout=30_000) as download:
            page.get_by_text("latency_v1.json", exact=True).click()
        assert download.value.suggested_filename == "latency_v1.json"
        latency = json.loads(Path(download.value.path()).read_text())
        assert latency["count"] >= 1 and latency["min_ms"] <= latency["mean_ms"] <= latency["max_ms"]
        expect(page.locator("[data-testid=stException]")).to_have_count(0)
