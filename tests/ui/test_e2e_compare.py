"""End to end: the Compare page of the real app (``streamlit run app.py``) in headless Chromium.

A paired run is made first through the benchmark service against the real test server, in the
app's data folder; the browser then opens the Compare page, which shows that stored run: the
verdict, the charts (rendered by plotly.js in the page), the tables. The HTML report is downloaded
through the page and opened in the browser with every network request refused: it must draw its
charts from the file alone.
"""

from __future__ import annotations

import re

import pytest

from tests.browser_support import open_page, require_chromium, running_app
from services.bench.runner import BenchmarkConfig, run_benchmark
from services.image_sets.image_set import ImageSetSpec
from services.compare.comparison import compare_run
from services.bench.sampler import stop_shared_sampler
from services.bench.store import RunStore
from services.client.server_target import ServerTarget

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

UI_TIMEOUT_MS = 60_000
PAGE_CHARTS = ("change", "memory", "latency_ms", "ttft_ms", "tpot_ms", "throughput", "accuracy", "agreement",
               "floor")




@pytest.fixture
def stored_run(triton_server, tmp_path):
    """(data folder, run id): a completed paired run of both versions, made through the service."""
    require_chromium()
    data = tmp_path / "data"
    target = ServerTarget(triton_server.http_url, triton_server.grpc_url, triton_server.metrics_url, "http",
                          embedded=True, checkpoint=None, repository=triton_server.repository,
                          server_pid=triton_server.pid)
    config = BenchmarkConfig(versions=("1", "2"), image_set=ImageSetSpec(kind="generated", seed=9, count=2, max_side=160),
                             requests=4, warmup=1, max_tokens=4, extra_sampling={"ignore_eos": True}, timeout_s=60.0)
    with RunStore(data) as store:
        outcome = run_benchmark(config, store=store, target=target)
    stop_shared_sampler()
    assert outcome.status == "completed", outcome.reason
    return data, outcome.run_id


@pytest.fixture
def app_url(stored_run, triton_server, tmp_path):
    """The dashboard as ``streamlit run`` serves it, on the stored run's data folder; stopped afterwards."""
    with running_app(dict(QWEN_TRITON_URL=triton_server.http_url, QWEN_TRITON_PROTOCOL="http",
                    QWEN_TRITON_METRICS_URL=triton_server.metrics_url, QWEN_DATA_DIR=str(stored_run[0])), tmp_path / "streamlit.log") as url:
        yield url


def test_compare_page_shows_the_verdict_and_charts_of_a_stored_run(app_url, stored_run, tmp_path):
    from playwright.sync_api import expect

    data, run_id = stored_run
    with RunStore(data) as store:
        expected = compare_run(store, run_id)

    with open_page(f"{app_url}/Compare", timeout_ms=UI_TIMEOUT_MS) as page:
        expect(page.get_by_role("heading", name="Compare bf16 and fp8")).to_be_visible()
        expect(page.get_by_role("combobox", name="Paired run")).to_have_value(re.compile(rf"^run {run_id} · "))

        # the verdict, in plain words, as the service words it
        verdict = page.locator(".st-key-cmp_verdict")
        expect(page.get_by_role("heading", name="Verdict")).to_be_visible()
        for line in (expected.verdict.memory, expected.verdict.latency, expected.verdict.accuracy,
                     expected.verdict.floor):
            expect(verdict.get_by_text(line, exact=True)).to_be_visible()
        expect(page.locator("[data-testid=stException]")).to_have_count(0)

        # every chart drawn by plotly.js: scroll each into view (the page renders them as they come)
        for name in PAGE_CHARTS:
            chart = page.locator(f".st-key-cmp_fig_{name} .js-plotly-plot")
            chart.scroll_into_view_if_needed()
            expect(chart).to_have_count(1)
            expect(chart.locator(".main-svg").first).to_be_visible()
        expect(page.locator(".st-key-cmp_fig_memory .gtitle")).to_contain_text("weights / KV-cache room / rest")
        expect(page.locator(".st-key-cmp_fig_latency_ms .legendtext")).to_have_text(
            [f"bf16 (v1) (n={expected.metric('latency_ms').dist_a.count})",
             f"fp8 (v2) (n={expected.metric('latency_ms').dist_b.count})"])
        # one CDF step line per version
        expect(page.locator(".st-key-cmp_fig_latency_ms .scatterlayer .trace")).to_have_count(2)

        # the self-contained report, downloaded through the page
        button = page.locator(".st-key-cmp_dl_html button")
        button.scroll_into_view_if_needed()
        with page.expect_download(timeout=UI_TIMEOUT_MS) as got:
            button.click()
        assert got.value.suggested_filename == f"comparison_run{run_id}_v1_v2.html"
        report = tmp_path / got.value.suggested_filename
        got.value.save_as(report)
        text = report.read_text()
        assert expected.verdict.latency.replace("'", "&#x27;") in text

        # offline: the report draws its charts with every request to the network refused
        offline = page.context.browser.new_page(viewport={"width": 1300, "height": 1200})
        refused: list[str] = []

        def refuse(route) -> None:
            if not route.request.url.startswith("file:"):
                refused.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        offline.route("**/*", refuse)
        offline.goto(report.resolve().as_uri())
        expect(offline.locator("#verdict")).to_contain_text(expected.verdict.memory)
        # its first screen says what was measured: model and checkpoint, hardware, server and engine,
        # quantization as served, workload
        context = offline.locator("#context")
        for what in ("Model and checkpoint", "Hardware", "Server and engine", "Quantization as served", "Workload"):
            expect(context.get_by_text(what, exact=True)).to_be_visible()
        expect(context).to_contain_text("Triton Inference Server")
        box = context.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 1200, box  # within the first screen
        for div in ("fig-change", "fig-memory", "fig-latency", "fig-ttft", "fig-tpot", "fig-throughput",
                    "fig-accuracy", "fig-agreement", "fig-floor"):
            expect(offline.locator(f"#{div}.js-plotly-plot .main-svg").first).to_be_attached()
        assert refused == [], refused
