"""AppTest tests of the sidebar's target kind: two OpenAI-compatible variants, each shown and checked.

Without a vLLM server: the checks meet a real Triton server (which is no OpenAI-compatible server)
and a closed port, and each variant says why it cannot be used; Detect is then disabled. The
variants against a real ``vllm serve`` are in tests/ui/test_variant_sidebar_vllm.py (marker vllm).
"""

from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from services.bench.store import RunStore
from services.core import settings
from tests.ports import closed_port

pytestmark = pytest.mark.timeout(300)

APP = str(settings.PROJECT_ROOT / "app.py")
DETECT = "pages/1_Detect.py"


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def choose_variants(at: AppTest, *variants: tuple[str, str, str]) -> AppTest:
    """Switch the sidebar to OpenAI-compatible variants and fill in (label, url, model) of each."""
    at.sidebar.radio(key="target_kind").set_value("openai").run()
    for slot, (label, url, model) in zip("AB", variants):
        at.sidebar.text_input(key=f"variant_{slot}_label").set_value(label)
        at.sidebar.text_input(key=f"variant_{slot}_url").set_value(url)
        at.sidebar.text_input(key=f"variant_{slot}_model").set_value(model)
    return at.run()


def test_the_target_kind_defaults_to_triton_and_switches_to_two_variants(triton_server, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert at.sidebar.radio(key="target_kind").value == "triton"
    assert at.sidebar.text_input(key="server_url").value == triton_server.http_url
    at.switch_page(DETECT).run()
    # Triton: the versions, as always
    assert at.radio(key="detect_versions").options == ["bf16 (v1)", "fp8 (v2)", "both (bf16 (v1) and fp8 (v2))"]
    choose_variants(at, ("", "", ""), ("", "", ""))
    assert not at.exception, at.exception
    assert not [w for w in at.sidebar.text_input if w.key == "server_url"]  # the Triton settings are gone
    (error,) = texts(at.sidebar.error)
    assert error == "variant A: an OpenAI-compatible variant needs url= (e.g. url=http://127.0.0.1:8100)"
    assert at.button(key="detect_run").disabled


def test_each_variant_is_checked_and_says_why_it_cannot_be_used(triton_server, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(DETECT).run()
    port = closed_port()
    choose_variants(at, ("triton-port", f"http://{triton_server.http_url}", "demo"),
                    ("nobody", f"http://127.0.0.1:{port}", "demo"))
    assert not at.exception, at.exception
    errors = texts(at.sidebar.error)
    assert len(errors) == 2, errors
    assert errors[0].startswith("triton-port: UNREACHABLE — ") and "not an OpenAI-compatible" in errors[0], errors[0]
    assert errors[1].startswith("nobody: UNREACHABLE — ") and "not reachable" in errors[1], errors[1]
    # Detect offers the two variants by label, and is disabled: neither answers
    assert at.radio(key="detect_versions").options == ["triton-port", "nobody", "both (triton-port and nobody)"]
    assert at.button(key="detect_run").disabled
    # two variants with one label cannot be told apart: said, not raised
    choose_variants(at, ("same", f"http://127.0.0.1:{port}", "a"), ("same", f"http://127.0.0.1:{port}", "b"))
    assert texts(at.sidebar.error) == ["each variant needs its own label; same is given to several "
                                       "(add label=... to tell them apart)"]


def test_the_home_page_names_the_variants(triton_server, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    at = AppTest.from_file(APP, default_timeout=60).run()
    port = closed_port()
    choose_variants(at, ("left", f"http://127.0.0.1:{port}", "demo"), ("right", f"http://127.0.0.1:{port}", "demo"))
    assert not at.exception, at.exception
    assert [m.label for m in at.metric] == ["Server", "Server version", "left", "right"]
    assert at.caption[0].value == (f"OpenAI-compatible variants: left: `demo` at `http://127.0.0.1:{port}`; "
                                   f"right: `demo` at `http://127.0.0.1:{port}`")
    assert at.error[0].value.startswith("left: The OpenAI-compatible server at")  # neither answers


def test_the_benchmark_page_offers_the_variants_and_a_run_on_them_fails_with_their_reason(triton_server, monkeypatch,
                                                                                       tmp_path):
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    monkeypatch.setenv("QWEN_DATA_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/2_Benchmark.py").run()
    assert at.multiselect(key="bench_versions").value == ["1", "2"]  # Triton: the versions
    port = closed_port()
    choose_variants(at, ("left", f"http://127.0.0.1:{port}", "m"), ("right", f"http://127.0.0.1:{port}", "m"))
    assert not at.exception, at.exception
    assert at.multiselect(key="bench_variants").options == ["left", "right"]
    assert at.multiselect(key="bench_variants").value == ["left", "right"]
    # a run on them: refused at its preflight, stored with the variants named and the reason
    at.number_input(key="bench_requests").set_value(2)
    at.button(key="bench_start").click().run()
    deadline = time.monotonic() + 60
    while "bench_job" in at.session_state and time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()
    assert not at.exception, at.exception
    with RunStore(tmp_path) as store:
        (run,) = store.list_runs()
        assert run.status == "failed" and run.reason.startswith("variant left: "), run.reason
        assert "not reachable" in run.reason
        assert [v["key"] for v in store.get_run(run.id).manifest["variants"]] == ["left", "right"]


def test_a_run_config_takes_the_session_variants_it_chose_else_all_of_them():
    from services.bench.runner import BenchmarkConfig
    from services.bench.sweep import SweepConfig
    from services.client.variants import parse_variant_spec, resolve_variants
    from ui.state import Connection, with_variants

    variants = resolve_variants([parse_variant_spec("kind=openai,url=http://h:1,model=m,label=a"),
                                 parse_variant_spec("kind=openai,url=http://h:2,model=m,label=b")])
    conn = Connection(url_setting="", protocol="http", timeout_s=9.0, kind="openai", variants=variants)
    one = with_variants(BenchmarkConfig(versions=("b",)), conn)
    assert one.versions == ("b",) and [v.url for v in one.variants] == ["http://h:2"]
    both = with_variants(SweepConfig(bench=BenchmarkConfig(versions=("1", "2"))), conn)  # Compare's fresh run
    assert both.bench.versions == ("a", "b") and both.bench.variants == variants
    triton = Connection(url_setting="", protocol="http", timeout_s=9.0)
    assert with_variants(BenchmarkConfig(), triton) == BenchmarkConfig()


def test_the_compare_page_compares_a_stored_run_on_two_variants_by_label(triton_server, monkeypatch, tmp_path):
    from services.bench.runner import BenchmarkConfig, run_benchmark
    from services.bench.sampler import stop_shared_sampler
    from services.client.variants import parse_variant_spec, resolve_variants
    from services.compare.comparison import compare_run
    from services.image_sets.image_set import ImageSetSpec
    from tests.bench.test_runner import target_of

    monkeypatch.setenv("QWEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QWEN_TRITON_URL", triton_server.http_url)
    # labels that sort the other way round: the page keeps the run's order (zeta is side A)
    variants = resolve_variants([parse_variant_spec("version=2,label=zeta"),
                                 parse_variant_spec(f"url={triton_server.http_url},version=1,label=alpha")])
    config = BenchmarkConfig(variants=variants, image_set=ImageSetSpec(kind="generated", seed=4, count=2, max_side=160),
                             requests=3, warmup=0, max_tokens=4, extra_sampling={"ignore_eos": True}, timeout_s=60.0)
    with RunStore(tmp_path) as store:
        outcome = run_benchmark(config, store=store, target=target_of(triton_server, "http"))
        stop_shared_sampler()
        assert outcome.status == "completed", outcome.reason
        expected = compare_run(store, outcome.run_id)
    assert (expected.a.version, expected.b.version) == ("zeta", "alpha")
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/3_Compare.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="cmp_run").value == outcome.run_id
    assert "zeta + alpha" in at.selectbox(key="cmp_run").format_func(outcome.run_id)  # type: ignore[attr-defined]
    memory = next(t.value for t in at.table if "zeta" in t.value.columns)
    assert list(memory.columns)[:2] == ["zeta", "alpha"]
    at.radio(key="cmp_source").set_value("two").run()
    assert (at.selectbox(key="cmp_a_version").value, at.selectbox(key="cmp_b_version").value) == ("zeta", "alpha")
