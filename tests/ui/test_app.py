"""AppTest tests of the home page (app.py), the shared sidebar and the Detect page.

The app runs in-process (``streamlit.testing.v1.AppTest``) against the real test server: its URL
goes in ``QWEN_TRITON_URL``, as a user would set it. The server's tiny random-weight model answers
gibberish, so the Detect page shows its "no box in the answer" warnings; errors are caused for
real (a closed port, a file that is no image, a checkpoint the embedded server cannot load).
"""

from __future__ import annotations

import json
import time

import pytest
from streamlit.testing.v1 import AppTest

from services.core import settings
from services.detect.detection import batch_to_json
from tests.ports import closed_port

pytestmark = pytest.mark.timeout(300)

APP = str(settings.PROJECT_ROOT / "app.py")
DETECT = "pages/1_Detect.py"
RUN_TIMEOUT = 120  # seconds for one script run that sends detection requests


@pytest.fixture
def server_env(triton_server, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    monkeypatch.delenv("QWEN_TRITON_PROTOCOL", raising=False)
    return triton_server


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def metrics(at: AppTest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in at.metric:
        out.setdefault(m.label, []).append(m.value)
    return out


def detect_page(timeout: float = 30) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    at.switch_page(DETECT).run()
    assert not at.exception, at.exception
    return at


# --------------------------------------------------------------------------- home page and sidebar


def test_home_shows_health_versions_and_which_model(server_env):
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Nutrition-table detector: bf16 vs fp8"
    m = metrics(at)
    assert m["Server"] == ["ready"] and m["bf16 (v1)"] == ["READY"] and m["fp8 (v2)"] == ["READY"]
    assert m["Triton version"][0].count(".") == 2
    sidebar = texts(at.sidebar.success)
    assert sidebar[0].startswith("Server live and ready (Triton ")
    assert sidebar[1:] == ["bf16 (v1): READY", "fp8 (v2): READY"]
    assert at.sidebar.text_input(key="server_url").value == server_env.http_url
    assert at.sidebar.radio(key="server_protocol").value == "http"
    # the page menu names the home page "Home" (Streamlit's own menu would call it "app", after its file)
    menu = [(link.proto.label, link.proto.page) for link in at.sidebar.get("page_link")]
    assert menu == [("Home", ""), ("Detect", "Detect"), ("Benchmark", "Benchmark"), ("Compare", "Compare")]
    # a URL named by the user is an external server: the app says it cannot see the checkpoint
    assert any("An external server's model" in i.value for i in at.info)
    versions = at.dataframe[0].value
    assert list(versions["version"]) == ["1", "2"] and list(versions["precision"]) == ["bf16", "fp8"]
    assert list(versions["state"]) == ["READY", "READY"]


def test_unreachable_server_is_shown_not_raised(server_env):
    at = AppTest.from_file(APP, default_timeout=30).run()
    at.sidebar.text_input(key="server_url").set_value(f"127.0.0.1:{closed_port()}").run()
    assert not at.exception, at.exception
    errors = texts(at.sidebar.error)
    assert errors and "is not reachable" in errors[0]
    assert metrics(at)["Server"] == ["down"]
    assert any("is not reachable" in e for e in texts(at.error))


@pytest.mark.parametrize("url, why", [
    ("ftp://127.0.0.1:21", "unsupported URL scheme 'ftp'"),
    ("127.0.0.1:8000/v2/models", "must be host:port (no path)"),
])
def test_a_url_that_is_no_server_address_is_explained(server_env, url, why):
    at = AppTest.from_file(APP, default_timeout=30).run()
    at.sidebar.text_input(key="server_url").set_value(url).run()
    assert not at.exception, at.exception
    (error,) = texts(at.sidebar.error)
    assert error.startswith(f"The server URL {url!r} is not usable:") and why in error
    assert texts(at.error)[0] == error  # the home page says it too, and stops there


def test_sidebar_settings_follow_the_user_to_the_detect_page(server_env):
    at = AppTest.from_file(APP, default_timeout=30).run()
    url = f"http://{server_env.http_url}"
    at.sidebar.text_input(key="server_url").set_value(url).run()
    at.sidebar.number_input(key="server_timeout_s").set_value(45.0).run()
    at.switch_page(DETECT).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Detect nutrition tables"
    assert at.sidebar.text_input(key="server_url").value == url
    assert at.sidebar.number_input(key="server_timeout_s").value == 45.0
    assert f"`{server_env.http_url}`" in at.sidebar.caption[0].value


@pytest.fixture
def broken_checkpoint(tmp_path, monkeypatch):
    """No QWEN_TRITON_URL, and a checkpoint the embedded server cannot load: its starts fail for real."""
    from ui import state

    folder = tmp_path / "broken-checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.delenv("QWEN_TRITON_URL", raising=False)
    monkeypatch.setenv("QWEN_CHECKPOINT", str(folder))
    state.stop_embedded()
    yield folder
    state.stop_embedded()  # the supervisor lives as long as the process: later tests start afresh


@pytest.mark.server
def test_an_embedded_server_that_cannot_start_is_retried_then_shows_its_log_and_a_restart(broken_checkpoint):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert texts(at.info)[0].startswith("Starting the embedded Triton server")  # not an error: it starts
    deadline = time.monotonic() + 280  # three starts that fail, with 2 s and 5 s between them
    while not texts(at.sidebar.error) and time.monotonic() < deadline:
        time.sleep(2)
        at.run()
    (error,) = texts(at.sidebar.error)
    assert error.startswith("The embedded Triton server failed 3 times in a row and is not restarted by itself: "
                            "tritonserver exited with code 1 before it was ready")
    assert texts(at.error)[0] == error
    (log_lines,) = [c.value for c in at.sidebar.code]
    assert "Errors from its log" in log_lines and "Failed to initialize Python stub" in log_lines
    assert at.sidebar.button(key="sidebar_restart").label == "Restart the embedded server"
    # the Detect page does not crash either, and offers no run
    at.switch_page(DETECT).run()
    assert not at.exception, at.exception
    assert at.button(key="detect_run").disabled
    assert error in texts(at.error)
    at.sidebar.button(key="sidebar_restart").click().run()  # the user asks again: a fresh start begins
    assert not texts(at.sidebar.error)
    assert [p.proto.text for p in at.sidebar.get("progress")][0].startswith("Starting the embedded Triton server")


# --------------------------------------------------------------------------- Detect page


def test_detect_a_sample_with_both_versions(server_env):
    at = detect_page()
    assert at.radio(key="detect_versions").value == "both"
    assert at.number_input(key="detect_max_tokens").value == 128
    assert at.number_input(key="detect_max_side").value == 1024
    assert at.button(key="detect_run").disabled  # nothing to run yet
    at.multiselect(key="detect_samples").set_value(["us_portrait"])
    at.number_input(key="detect_max_tokens").set_value(4)
    at.toggle(key="detect_stream").set_value(True)
    at.run()
    assert not at.button(key="detect_run").disabled
    at.button(key="detect_run").click().run(timeout=RUN_TIMEOUT)
    assert not at.exception, at.exception

    assert [s.value for s in at.subheader][:2] == ["Results", "1. us_portrait.jpg (sample)"]
    m = metrics(at)
    assert len(m["Latency"]) == 2 and all(v.endswith(" ms") for v in m["Latency"])
    assert len(m["TTFT"]) == 2 and all(v.endswith(" ms") for v in m["TTFT"])  # streamed
    assert len(m["Tokens"]) == 2 and all(1 <= int(t) <= 4 for t in m["Tokens"])
    assert m["IoU between versions (bf16 (v1) ↔ fp8 (v2))"] == ["—"]  # no box on either side
    assert m["IoU with ground truth"] == ["0.000", "0.000"]
    assert texts(at.warning) == ["bf16 (v1): no box in the answer. The raw answer is below.",
                                 "fp8 (v2): no box in the answer. The raw answer is below."]
    assert len(at.code) == 2 and all(c.value for c in at.code)  # the raw answers
    assert not at.error
    downloads = at.get("download_button")
    assert len(downloads) == 2  # the results JSON and the annotated PNG
    batch = at.session_state["detect_batch"]
    assert [v.text for v in batch.images[0].versions.values()] == [c.value for c in at.code]
    data = json.loads(batch_to_json(batch))
    assert data["options"]["stream"] is True and data["options"]["max_tokens"] == 4


def test_a_bad_upload_shows_its_image_error_and_the_good_one_still_runs(server_env, label_image_bytes):
    at = detect_page()
    at.file_uploader(key="detect_uploads").set_value([
        ("../../etc/notes.png", b"not an image, just text\n", "image/png"),
        ("label.png", label_image_bytes, "image/png"),
    ])
    at.radio(key="detect_versions").set_value("1")
    at.number_input(key="detect_max_tokens").set_value(3)
    at.run()
    at.button(key="detect_run").click().run(timeout=RUN_TIMEOUT)
    assert not at.exception, at.exception
    assert texts(at.error) == ["'../../etc/notes.png': not an image (it looks like a text file)"]
    subheaders = [s.value for s in at.subheader]
    assert "1. ../../etc/notes.png" in subheaders and "2. label.png" in subheaders
    assert metrics(at)["Tokens"] and len(metrics(at)["Latency"]) == 1  # bf16 only, for the good image
    assert texts(at.warning) == ["bf16 (v1): no box in the answer. The raw answer is below."]
    assert "IoU between versions (bf16 (v1) ↔ fp8 (v2))" not in metrics(at)


def test_server_errors_appear_beside_each_image(server_env, own_triton_server):
    """fp8's model process is killed under a server that stays up: each image says why it got no answer."""
    import psutil

    at = detect_page()
    at.sidebar.text_input(key="server_url").set_value(own_triton_server.http_url)
    at.multiselect(key="detect_samples").set_value(["eu_square", "no_table"])
    at.radio(key="detect_versions").set_value("2")
    at.run()
    (fp8,) = [p for p in psutil.Process(own_triton_server.pid).children() if "/qwen/2/model.py" in " ".join(p.cmdline())]
    fp8.kill()
    deadline = time.monotonic() + 30
    while fp8.is_running() and fp8.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.1)  # tritonserver, its parent, reaps it when it likes: a zombie is gone enough
    at.button(key="detect_run").click().run(timeout=RUN_TIMEOUT)
    assert not at.exception, at.exception
    main_errors = texts(at.main.error)
    assert len(main_errors) == 2 and all(e.startswith("Version 2 of model 'qwen' is not loaded and ready on the "
                                                      "Triton server at ") and "is not healthy" in e
                                         for e in main_errors)
    assert [s.value for s in at.subheader][1:3] == ["1. eu_square.jpg (sample)", "2. no_table.jpg (sample)"]


def test_detect_is_disabled_while_the_server_does_not_answer(server_env):
    at = detect_page()
    at.sidebar.text_input(key="server_url").set_value(f"127.0.0.1:{closed_port()}")
    at.multiselect(key="detect_samples").set_value(["eu_square"])
    at.run()
    assert not at.exception, at.exception
    assert at.button(key="detect_run").disabled
    assert "is not reachable" in texts(at.sidebar.error)[0]
    assert texts(at.sidebar.info)[-1] == "The model is unknown while the server does not answer."


def test_detect_over_grpc_when_the_sidebar_says_so(server_env, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_GRPC_URL", server_env.grpc_url)  # the test server's gRPC port is not 8001
    at = detect_page()
    at.sidebar.radio(key="server_protocol").set_value("grpc")
    at.multiselect(key="detect_samples").set_value(["eu_square"])
    at.radio(key="detect_versions").set_value("2")
    at.number_input(key="detect_max_tokens").set_value(3)
    at.run()
    assert f"`{server_env.grpc_url}` (grpc)" in at.sidebar.caption[0].value
    assert texts(at.sidebar.success)[1:] == ["bf16 (v1): READY", "fp8 (v2): READY"]
    at.button(key="detect_run").click().run(timeout=RUN_TIMEOUT)
    assert not at.exception, at.exception
    assert not at.main.error
    assert texts(at.warning) == ["fp8 (v2): no box in the answer. The raw answer is below."]
    assert at.session_state["detect_batch"].server_url == f"grpc://{server_env.grpc_url}"
