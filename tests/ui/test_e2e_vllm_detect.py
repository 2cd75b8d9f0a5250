"""End to end on the real vLLM engine: the Detect page in headless Chromium against the vLLM test server.

The app (``streamlit run app.py``) talks to ``vllm_server`` (tests/conftest.py: the demo detector, real
vLLM, version 2 the int8 W8A8 stand-in on the CPU) with ``QWEN_ENGINE=vllm``: the sidebar names the
engine and version 2 as what it serves, and both versions draw the sample's nutrition table near its
ground truth, with the JSON download saying the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.core import settings
from tests.browser_support import open_page, require_chromium, running_app

pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.server, pytest.mark.timeout(600)]

UI_TIMEOUT_MS = 45_000
RESULTS_TIMEOUT_MS = 120_000
SAMPLE = "us_portrait"


@pytest.fixture
def vllm_app_url(vllm_server, tmp_path):
    require_chromium()
    env = dict(QWEN_TRITON_URL=vllm_server.http_url, QWEN_TRITON_PROTOCOL="http", QWEN_ENGINE="vllm")
    with running_app(env, tmp_path / "streamlit.log") as url:
        yield url


def test_detect_page_draws_both_versions_boxes_on_vllm(vllm_app_url, tmp_path):
    from playwright.sync_api import expect

    v2 = f"{settings.INT8_STANDIN} (v2)"
    with open_page(f"{vllm_app_url}/Detect", timeout_ms=UI_TIMEOUT_MS) as page:
        sidebar = page.locator("[data-testid=stSidebar]")
        expect(sidebar.get_by_text(f"{v2}: READY")).to_be_visible()
        expect(sidebar.get_by_text("bf16 (v1): READY")).to_be_visible()
        expect(sidebar.get_by_text("fp8 (v2)")).to_have_count(0)
        samples = page.locator(".st-key-detect_samples input")
        expect(samples).to_be_visible()
        samples.click()
        samples.fill(SAMPLE)
        page.get_by_role("option", name=SAMPLE).click()
        page.keyboard.press("Escape")
        page.locator(".st-key-detect_versions").get_by_text("both", exact=False).click()
        tokens = page.locator(".st-key-detect_max_tokens input")
        tokens.fill("64")
        tokens.press("Enter")
        expect(tokens).to_have_value("64")
        page.locator(".st-key-detect_run button").click()
        expect(page.get_by_text("Download the results (JSON)")).to_be_visible(timeout=RESULTS_TIMEOUT_MS)
        expect(page.locator("[data-testid=stException]")).to_have_count(0)
        chart = ".st-key-detect_result_0 .js-plotly-plot"
        expect(page.locator(f"{chart} .legendtext")).to_have_text(
            ["ground truth: 1 box", "bf16 (v1): 1 box", f"{v2}: 1 box"])
        with page.expect_download() as got:
            page.locator(".st-key-detect_result_json button").click()
        data = json.loads(Path(got.value.path()).read_text())
    (image,) = data["images"]
    assert image["name"] == f"{SAMPLE}.jpg"
    for version in ("1", "2"):
        result = image["versions"][version]
        assert result["error"] is None and not result["no_box"], result
    assert image["versions"]["2"]["precision"] == settings.INT8_STANDIN
