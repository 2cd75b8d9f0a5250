"""End to end: the real app (``streamlit run app.py``) in headless Chromium, on the real test server.

A person's path through the Detect page: upload a label image, also pick a bundled sample, choose
both versions, run, and look at what is drawn. The test server serves the tiny random-weight model
(tests/conftest.py), whose answers hold no box, so what the test finds drawn is the sample's
ground-truth box (its dashed outline, at the right place over the image) and, for each version,
its legend entry and its result panel with the "no box in the answer" warning and the raw answer.
The annotated PNG and the JSON downloads are fetched through the browser and checked too.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.browser_support import open_page, require_chromium, running_app
from services.detect.figures import TRUTH_COLOR
from services.image_sets.samples import list_samples

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

RESULTS_TIMEOUT_MS = 60_000
# Each wait for something on the page. Generous: the chart and code components are loaded lazily,
# and on a 2-core machine busy with other tests the browser took over 20 s to draw them.
UI_TIMEOUT_MS = 45_000
SAMPLE = "us_portrait"




@pytest.fixture
def app_url(triton_server, tmp_path):
    """The dashboard as ``streamlit run`` serves it, talking to the test server; stopped afterwards."""
    require_chromium()
    with running_app(dict(QWEN_TRITON_URL=triton_server.http_url, QWEN_TRITON_PROTOCOL="http"), tmp_path / "streamlit.log") as url:
        yield url


def _relative_box(page, chart: str, path_selector: str) -> tuple[float, float, float, float]:
    """Where a drawn path lies over the chart's image, as fractions of the image's width and height."""
    image = page.locator(f"{chart} .imagelayer image").first.bounding_box()
    path = page.locator(f"{chart} {path_selector}").first.bounding_box()
    assert image and path and image["width"] > 100
    return ((path["x"] - image["x"]) / image["width"], (path["y"] - image["y"]) / image["height"],
            (path["x"] + path["width"] - image["x"]) / image["width"],
            (path["y"] + path["height"] - image["y"]) / image["height"])


def test_upload_and_sample_over_both_versions_in_the_browser(app_url, label_image_bytes, tmp_path):
    from playwright.sync_api import expect

    upload = tmp_path / "shelf photo.png"
    upload.write_bytes(label_image_bytes)
    sample = next(s for s in list_samples() if s.name == SAMPLE)
    truth = sample.boxes[0]
    r, g, b = (int(TRUTH_COLOR[i:i + 2], 16) for i in (1, 3, 5))

    with open_page(f"{app_url}/Detect", timeout_ms=UI_TIMEOUT_MS) as page:
        expect(page.get_by_role("heading", name="Detect nutrition tables")).to_be_visible()
        expect(page.locator("[data-testid=stSidebar]").get_by_text("fp8 (v2): READY")).to_be_visible()
        # the dashboard's page menu (Streamlit's own, which calls the home page "app", is off); no Deploy button
        expect(page.locator(".st-key-page_menu a")).to_have_text(
            [re.compile(rf"{title}$") for title in ("Home", "Detect", "Benchmark", "Compare")])
        expect(page.locator("[data-testid=stSidebarNav]")).to_have_count(0)
        expect(page.locator("[data-testid=stAppDeployButton]")).to_have_count(0)

        page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(str(upload))
        expect(page.get_by_text("shelf photo.png")).to_be_visible()
        page.locator(".st-key-detect_samples").click()
        page.get_by_role("option", name=SAMPLE).click()
        page.keyboard.press("Escape")
        page.locator(".st-key-detect_versions").get_by_text("both", exact=False).click()
        tokens = page.locator(".st-key-detect_max_tokens input")
        tokens.fill("4")
        tokens.press("Enter")
        expect(tokens).to_have_value("4")
        page.locator(".st-key-detect_run button").click()
        expect(page.get_by_text("Download the results (JSON)")).to_be_visible(timeout=RESULTS_TIMEOUT_MS)

        # each image, each version: its panel, with the no-box warning and the raw answer
        for index in (0, 1):
            for version, name in (("1", "bf16 (v1)"), ("2", "fp8 (v2)")):
                panel = page.locator(f".st-key-detect_result_{index}_v{version}")
                expect(panel).to_be_visible()
                expect(panel.get_by_text(f"{name}: no box in the answer")).to_be_visible()
                expect(panel.get_by_text("Raw answer", exact=True)).to_be_visible()
                expect(panel.locator("code")).not_to_have_text("")
                expect(panel.get_by_text("Latency", exact=True)).to_be_visible()
        expect(page.locator("[data-testid=stException]")).to_have_count(0)

        upload_chart = ".st-key-detect_result_0 .js-plotly-plot"
        sample_chart = ".st-key-detect_result_1 .js-plotly-plot"
        expect(page.locator(f"{upload_chart} .legendtext")).to_have_text(
            ["bf16 (v1): no box", "fp8 (v2): no box"])
        expect(page.locator(f"{sample_chart} .legendtext")).to_have_text(
            ["ground truth: 1 box", "bf16 (v1): no box", "fp8 (v2): no box"])

        # the ground-truth box is drawn dashed in its colour, where the sample's truth lies, in each
        # version's panel (side by side)
        truth_line = f".scatterlayer .trace path.js-line[style*='stroke: rgb({r}, {g}, {b})']"
        line = page.locator(f"{sample_chart} {truth_line}")
        expect(line).to_have_count(2)
        expect(page.locator(f"{sample_chart} .imagelayer image")).to_have_count(2)
        assert "stroke-dasharray" in (line.first.get_attribute("style") or "")
        drawn = _relative_box(page, sample_chart, truth_line)
        expected = (truth.x1 / sample.width, truth.y1 / sample.height,
                    truth.x2 / sample.width, truth.y2 / sample.height)
        assert drawn == pytest.approx(expected, abs=0.02), (drawn, expected)
        expect(page.locator(f"{upload_chart} .scatterlayer .trace path.js-line")).to_have_count(0)

        # the downloads, as the browser gets them
        with page.expect_download() as got:
            page.locator(".st-key-detect_result_1_png button").click()
        png = Path(got.value.path()).read_bytes()
        assert got.value.suggested_filename == f"02_{SAMPLE}-annotated.png"
        picture = Image.open(io.BytesIO(png))
        # one panel per version, side by side, with a small gap
        assert picture.format == "PNG" and 2 * sample.width < picture.width < 2 * sample.width + 60
        assert picture.height > sample.height
        with page.expect_download() as got:
            page.locator(".st-key-detect_result_json button").click()
        data = json.loads(Path(got.value.path()).read_text())
        assert [i["name"] for i in data["images"]] == ["shelf photo.png", f"{SAMPLE}.jpg"]
        assert all(set(i["versions"]) == {"1", "2"} for i in data["images"])
        assert all(v["no_box"] and v["error"] is None for i in data["images"] for v in i["versions"].values())
