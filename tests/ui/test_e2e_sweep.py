"""End to end: a sweep from the Benchmark page of the real app (``streamlit run app.py``) in headless
Chromium, against the test server's tiny model (transformers engine).

A person switches the launch form to "sweep", sets two concurrencies and generous latency targets,
starts it, sees the live sweep (its latency chart, then its tables and figures as levels finish), and
once it has ended sees the recorded sweep: the recommendation, the capacity and level tables and the
capacity, goodput and cost figures.
"""

from __future__ import annotations

import re

import pytest

from tests.browser_support import open_page, require_chromium, running_app
from tests.ui.test_e2e_benchmark import _fill

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture
def app_url(triton_server, tmp_path):
    require_chromium()
    with running_app(dict(QWEN_TRITON_URL=triton_server.http_url, QWEN_TRITON_PROTOCOL="http",
                          QWEN_TRITON_METRICS_URL=triton_server.metrics_url, QWEN_DATA_DIR=str(tmp_path / "data"),
                          QWEN_GPU_PRICE_PER_HOUR="2.5"),
                     tmp_path / "streamlit.log") as url:
        yield url


def test_a_sweep_from_the_page_shows_its_levels_live_then_its_recommendation(app_url):
    from playwright.sync_api import expect

    with open_page(f"{app_url}/Benchmark", height=2400) as page:
        expect(page.get_by_role("heading", name="Benchmark bf16 against fp8")).to_be_visible(timeout=30_000)
        page.get_by_text("sweep over load levels (capacity and cost)").click()
        expect(page.locator(".st-key-bench_levels input")).to_be_visible(timeout=15_000)
        page.locator(".st-key-bench_levels input").fill("1, 2")
        page.locator(".st-key-bench_levels input").press("Tab")
        _fill(page, "bench_requests", "6")
        _fill(page, "bench_warmup", "1")
        _fill(page, "bench_max_tokens", "4")
        _fill(page, "bench_e2e_target", "60000")
        _fill(page, "bench_ttft_target", "60000")
        _fill(page, "bench_tpot_target", "60000")
        page.locator(".st-key-bench_start button").click()

        # live: the progress, the cancel button, the latency chart; levels appear as they finish
        expect(page.locator(".st-key-bench_cancel button")).to_be_visible(timeout=30_000)
        expect(page.locator(".st-key-sweep_live .js-plotly-plot").first).to_be_visible(timeout=30_000)
        expect(page.get_by_text(re.compile(r"level \d+: (bf16|fp8)"))).to_be_visible(timeout=30_000)

        # recorded: status, the recommendation, the tables and the figures
        expect(page.get_by_text(re.compile(r"^Status: completed"))).to_be_visible(timeout=180_000)
        rec = page.locator(".st-key-sweep_recommendation")
        expect(rec).to_be_visible()
        expect(rec.get_by_text(re.compile(r"^(Deploy (bf16|fp8): |No clear winner: )"))).to_be_visible()
        result = page.locator(".st-key-sweep_result")
        expect(result.locator(".js-plotly-plot")).to_have_count(3)
        expect(result.locator("[data-testid=stDataFrame]")).to_have_count(2)  # capacity and levels
        expect(page.locator(".st-key-sweep_live")).to_have_count(0)
        expect(page.locator("[data-testid=stException]")).to_have_count(0)
