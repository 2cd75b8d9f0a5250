"""Faults of a ``vllm serve`` variant at the run level, against real servers: the embedded Triton (tiny
checkpoint, version 1) and this module's own standalone vLLM server on the demo detector (started here,
not the session's ``openai_server``, because one test kills it).

* ``qwen-bench`` on a model name the vLLM server does not serve: exit 1, one sentence naming what it
  serves, the run stored as failed with that reason.
* The vLLM server killed (its whole process tree, SIGKILL) a few requests into a paired run started the
  way the app starts it (``ui.run_lifecycle``): the run ends partial with a reason naming the variant
  and its URL, every request recorded before the kill is kept, the kept part is compared, the app's
  note says the same, and ``qwen-report`` on it names both variants by label, kind, URL and model in
  its "Measured on" table.

Nothing is mocked: the kill is a real SIGKILL of the real server's processes.
"""

from __future__ import annotations

import contextlib
import json
import time

import psutil
import pytest

from services.bench.cli import main as bench_main
from services.bench.runner import DEAD_SERVER_REASON, BenchmarkConfig
from services.bench.store import RunStore
from services.client.variants import parse_variant_spec, resolve_variants
from services.compare.comparison import compare_run
from services.compare.report import main as report_main
from services.image_sets.image_set import ImageSetSpec
from tests.bench.test_runner import IMAGES, target_of
from tests.bench.test_runner import _stop_sampler_after_module  # noqa: F401 (fixture)

pytestmark = [pytest.mark.vllm, pytest.mark.server, pytest.mark.timeout(1200)]
KILL_AFTER = 3  # vLLM requests answered before the kill


@pytest.fixture(scope="module")
def own_vllm(tmp_path_factory, demo_checkpoint):
    from tests.conftest import require_vllm

    require_vllm()
    from services.serving.openai_server import start_openai_server

    server = start_openai_server(demo_checkpoint, "bf16", workdir=tmp_path_factory.mktemp("own-vllm"))
    yield server
    server.stop()


def kill_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL a process and all its descendants (the API server, EngineCore, workers)."""
    root = psutil.Process(pid)
    procs = root.children(recursive=True) + [root]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=30)
    return procs


def test_qwen_bench_on_a_model_the_server_does_not_serve_says_what_it_serves(triton_server, own_vllm, tmp_path,
                                                                            capsys) -> None:
    started = time.monotonic()
    code = bench_main(["--url", f"http://{triton_server.http_url}", "--variant", "version=1,label=bf16-triton",
                       "--variant", f"kind=openai,url={own_vllm.base_url},model=not-served,label=bf16-vllm",
                       "--images", "generated", "--count", "1", "--max-side", "160", "--max-tokens", "2",
                       "--requests", "2", "--warmup", "0", "--data-dir", str(tmp_path / "db"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - started < 60
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: the run failed: variant bf16-vllm: model 'not-served' is not served ready"), err
    assert own_vllm.model_name in line  # what the server does serve
    with RunStore(tmp_path / "db") as store:
        (run,) = store.list_runs()
        assert run.status == "failed" and run.reason == line.removeprefix("error: the run failed: ")
        assert store.get_requests(run.id) == []


def test_a_vllm_variant_killed_mid_run_ends_it_partial_keeps_what_was_recorded_and_is_reported(
        triton_server, own_vllm, tmp_path, monkeypatch, capsys) -> None:
    from ui import run_lifecycle
    from ui.compare_new_run import partial_note
    from ui.state import Connection

    monkeypatch.setenv("QWEN_DATA_DIR", str(tmp_path / "db"))
    variants = resolve_variants([
        parse_variant_spec("version=1,label=bf16-triton"),
        parse_variant_spec(f"kind=openai,url={own_vllm.base_url},model={own_vllm.model_name},label=bf16-vllm")])
    cfg = BenchmarkConfig(variants=variants, image_set=ImageSetSpec(kind="uploaded", images=IMAGES, max_side=160),
                          requests=40, warmup=0, max_tokens=8, extra_sampling={"ignore_eos": True}, timeout_s=60.0,
                          stop_after_unreachable=2)
    conn = Connection(url_setting=f"http://{triton_server.http_url}", protocol="http", timeout_s=60.0,
                      target=target_of(triton_server, "http"))
    assert run_lifecycle.start_run("fault_job", cfg, conn, "could not start") is None
    live = run_lifecycle.current_run("fault_job")
    deadline = time.monotonic() + 600
    while run_lifecycle.read_progress(live).by_version["bf16-vllm"]["ok"] < KILL_AFTER:
        assert time.monotonic() < deadline and not live.handle.done(), live.handle.progress()
        time.sleep(0.05)
    killed = kill_tree(own_vllm.pid)
    assert not [p for p in killed if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    before = run_lifecycle.read_progress(live).done
    ended = None
    while ended is None:
        assert time.monotonic() < deadline, live.handle.progress()
        time.sleep(0.2)
        ended = run_lifecycle.collect_ended("fault_job")

    with capsys.disabled():
        print(f"\n[killed after {before} requests] {ended.status}: {ended.reason}")
    # the run: partial, with a reason naming the variant and its server
    assert ended.status == "partial", ended
    assert ended.reason.startswith(f"{DEAD_SERVER_REASON}: variant bf16-vllm ({own_vllm.base_url}): "), ended.reason
    note = partial_note(ended)  # what the Compare page shows above the comparison of the kept part
    assert note.startswith(f"The paired run partial: {ended.reason}") and "recorded before it stopped" in note
    with RunStore(tmp_path / "db") as store:
        run = store.get_run(ended.run_id)
        assert (run.status, run.reason) == ("partial", ended.reason)
        rows = store.get_requests(ended.run_id)
        # every request recorded before the kill is kept; the planned rest was never sent
        assert before <= len(rows) < 2 * cfg.requests
        vllm_ok = [r for r in rows if r.version == "bf16-vllm" and r.ok]
        assert len(vllm_ok) >= KILL_AFTER and all(r.output_tokens == 8 for r in vllm_ok)
        failed = [r for r in rows if not r.ok]
        assert failed and all(r.version == "bf16-vllm" for r in failed), [(r.version, r.error) for r in failed]
        assert any(r.error.startswith("ServerUnreachable") for r in failed)
        # the kept part is compared, pairs whose vLLM side failed left out
        c = compare_run(store, ended.run_id)
        assert (c.a.label, c.b.label) == ("bf16-triton", "bf16-vllm") and c.paired
        assert c.measured_b >= KILL_AFTER and c.metric("latency_ms").dist_b.count == len(vllm_ok)

    # the report on the kept part names both variants by label, kind, URL and model
    assert report_main(["--run", str(ended.run_id), "--data-dir", str(tmp_path / "db"),
                        "--out", str(tmp_path / "r")]) == 0
    html = next((tmp_path / "r").glob("*.html")).read_text()
    assert "<th scope='row'>Variants</th>" in html
    with capsys.disabled():
        print("[report]", html[html.find("<th scope='row'>Variants</th>"):][:400])
    assert (f"bf16-vllm: OpenAI-compatible server at {own_vllm.base_url}, model &#x27;{own_vllm.model_name}&#x27;"
            in html or f"bf16-vllm: OpenAI-compatible server at {own_vllm.base_url}, model '{own_vllm.model_name}'"
            in html), html[html.find("Variants"):][:400]
    assert "bf16-triton: embedded Triton at " in html and ", version 1" in html
    data = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    assert "partial" in json.dumps(data)
    capsys.readouterr()
