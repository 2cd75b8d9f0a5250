"""End to end: the sidebar's target kind in headless Chromium.

The choice follows the user from page to page (checked against variants that do not answer). Then,
on two variants of a real ``vllm serve`` (marker vllm): a person switches the sidebar from Triton to OpenAI-compatible servers, names two variants (the
same ``vllm serve`` of the demo detector under two labels, URL and model name each), sees each
checked, then runs Detect on both and finds both answers side by side, each with its box. The
server is the ``openai_server`` fixture of tests/conftest.py. Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser_support import open_page, require_chromium, running_app
from tests.ports import closed_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

UI_TIMEOUT_MS = 45_000
RESULTS_TIMEOUT_MS = 240_000
SAMPLE = "us_portrait"
LABELS = ("vllm-a", "vllm-b")


@pytest.fixture
def app_url(triton_server, tmp_path):
    require_chromium()
    with running_app(dict(QWEN_TRITON_URL=triton_server.http_url, QWEN_TRITON_PROTOCOL="http"),
                     tmp_path / "streamlit.log") as url:
        yield url


def fill(page, key: str, value: str) -> None:
    box = page.locator(f".st-key-{key} input")
    box.fill(value)
    box.press("Enter")


def choose_variants(page, model: str, url: str) -> None:
    page.locator(".st-key-target_kind").get_by_text("OpenAI-compatible servers").click()
    for slot, label in zip("AB", LABELS):
        fill(page, f"variant_{slot}_label", label)
        fill(page, f"variant_{slot}_model", model)
        fill(page, f"variant_{slot}_url", url)


def test_the_variant_choice_follows_the_user_to_the_other_pages(app_url):
    from playwright.sync_api import expect

    url = f"http://127.0.0.1:{closed_port()}"
    with open_page(f"{app_url}/Detect", timeout_ms=UI_TIMEOUT_MS) as page:
        sidebar = page.locator("[data-testid=stSidebar]")
        expect(sidebar.get_by_text("fp8 (v2): READY")).to_be_visible()
        choose_variants(page, "demo", url)
        for label in LABELS:
            expect(sidebar.get_by_text(f"{label}: UNREACHABLE", exact=False)).to_be_visible()
        expect(page.locator(".st-key-detect_run button").first).to_be_disabled()
        page.locator(".st-key-page_menu a", has_text="Benchmark").click()
        expect(page.get_by_role("heading", name="Benchmark bf16 against fp8")).to_be_visible()
        for label in LABELS:  # the same variants, checked again on this page
            expect(sidebar.get_by_text(f"{label}: UNREACHABLE", exact=False)).to_be_visible()
        expect(page.locator(".st-key-variant_B_url input")).to_have_value(url)
        expect(page.locator(".st-key-bench_variants")).to_contain_text(LABELS[0])
        expect(page.locator("[data-testid=stException]")).to_have_count(0)


@pytest.mark.vllm
def test_detect_on_two_openai_variants_chosen_in_the_sidebar(app_url, openai_server):
    from playwright.sync_api import expect

    with open_page(f"{app_url}/Detect", timeout_ms=UI_TIMEOUT_MS) as page:
        sidebar = page.locator("[data-testid=stSidebar]")
        expect(sidebar.get_by_text("fp8 (v2): READY")).to_be_visible()  # Triton first, as always
        choose_variants(page, openai_server.model_name, openai_server.base_url)
        expect(page.locator(".st-key-server_url")).to_have_count(0)
        for label in LABELS:  # each checked: the server lists the model
            expect(sidebar.get_by_text(f"{label}: serves {openai_server.model_name} at {openai_server.base_url}",
                                        exact=False)).to_be_visible()
        page.locator(".st-key-detect_samples").click()
        page.get_by_role("option", name=SAMPLE).click()
        page.keyboard.press("Escape")
        page.locator(".st-key-detect_versions").get_by_text(f"both ({LABELS[0]} and {LABELS[1]})").click()
        page.locator(".st-key-detect_run button").click()
        expect(page.get_by_text("Download the results (JSON)")).to_be_visible(timeout=RESULTS_TIMEOUT_MS)
        for label in LABELS:
            expect(page.locator(f".st-key-detect_result_0_v{label}")).to_be_visible()
        expect(page.locator("[data-testid=stException]")).to_have_count(0)
        with page.expect_download() as got:
            page.locator(".st-key-detect_result_json button").click()
        data = json.loads(Path(got.value.path()).read_text())
    (image,) = data["images"]
    assert list(image["versions"]) == list(LABELS)
    for label in LABELS:
        answer = image["versions"][label]
        assert answer["error"] is None and not answer["no_box"], answer
