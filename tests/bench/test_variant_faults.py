"""Preflight faults of OpenAI-compatible variants, through the runner and ``qwen-bench``: a URL that is
not an OpenAI-compatible server (a real ``http.server`` answering text, other JSON or an HTML 404:
tests/other_http_server.py) and a server that is down (a port nobody listens on). Each gives one clear
sentence naming the variant, the run is stored as failed with it and no request, ``qwen-bench`` exits
1 with it, and nothing waits for a timeout. (A model name the server does not serve needs a real vLLM
server: tests/bench/test_variant_faults_vllm.py and test_variant_runs_vllm.py.) Nothing is mocked.
"""

from __future__ import annotations

import socket
import time

import pytest

from services.bench.cli import main as bench_main
from services.bench.runner import BenchmarkConfig, run_benchmark
from services.bench.store import RunStore
from services.client.variants import parse_variant_spec, resolve_variants
from services.image_sets.image_set import ImageSetSpec
from tests.other_http_server import other_http_server

pytestmark = pytest.mark.timeout(120)
QUICK_S = 20.0  # a preflight fault is told at once, never after a request's timeout (60 s here)

NOT_OPENAI = {  # other_http_server's mode -> what the sentence says of its answer
    "text": "with HTTP 200 and text that is not JSON ('hello, I am not Triton')",
    "json": "with HTTP 200 and JSON that is not the OpenAI API's (keys: status, uptime)",
    "html404": "with HTTP 404 and an HTML page titled '404 Not Found'",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openai_pair(url: str) -> tuple:
    return resolve_variants([parse_variant_spec(f"kind=openai,url={url},model=qwen-bf16,label=bf16-far"),
                             parse_variant_spec(f"kind=openai,url={url},model=qwen-fp8,label=fp8-far")])


def run_on(url: str, store: RunStore):
    cfg = BenchmarkConfig(variants=openai_pair(url), image_set=ImageSetSpec(kind="generated", count=1, max_side=160),
                          requests=2, warmup=0, max_tokens=2, timeout_s=60.0)
    started = time.monotonic()
    outcome = run_benchmark(cfg, store)
    assert time.monotonic() - started < QUICK_S
    return outcome


@pytest.mark.parametrize("mode", list(NOT_OPENAI))
def test_a_url_that_is_not_an_openai_server_fails_the_run_with_one_sentence(mode, tmp_path) -> None:
    with other_http_server(mode) as other, RunStore(tmp_path) as store:
        url = f"http://127.0.0.1:{other.server_port}"
        outcome = run_on(url, store)
        assert outcome.status == "failed"
        assert outcome.reason == (f"variant bf16-far: The server at {url} is not an OpenAI-compatible server: "
                                  f"it answered GET /v1/models {NOT_OPENAI[mode]}.")
        run = store.get_run(outcome.run_id)
        assert (run.status, run.reason) == ("failed", outcome.reason)
        assert store.get_requests(outcome.run_id) == []
        assert run.manifest["variants"][0]["preflight"]["error"] in outcome.reason


def test_a_server_that_is_down_fails_the_run_with_one_sentence(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with RunStore(tmp_path) as store:
        outcome = run_on(url, store)
        assert outcome.status == "failed"
        assert outcome.reason.startswith(f"variant bf16-far: The OpenAI-compatible server at {url} is not reachable: ")
        assert "\n" not in outcome.reason
        assert store.get_run(outcome.run_id).status == "failed" and store.get_requests(outcome.run_id) == []


def bench_cli(url: str, tmp_path) -> tuple[int, str, float]:
    started = time.monotonic()
    code = bench_main(["--variant", f"kind=openai,url={url},model=qwen-bf16,label=bf16-far",
                       "--variant", f"kind=openai,url={url},model=qwen-fp8,label=fp8-far",
                       "--images", "generated", "--count", "1", "--max-side", "160", "--max-tokens", "2",
                       "--requests", "2", "--warmup", "0", "--timeout", "60", "--data-dir", str(tmp_path / "db"),
                       "--no-progress"])
    return code, url, time.monotonic() - started


def test_qwen_bench_on_a_url_that_is_not_an_openai_server_exits_1_with_the_sentence(tmp_path, capsys) -> None:
    with other_http_server("html404") as other:
        code, url, took = bench_cli(f"http://127.0.0.1:{other.server_port}", tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and took < QUICK_S, err
    assert f"error: the run failed: variant bf16-far: The server at {url} is not an OpenAI-compatible server: " \
           f"it answered GET /v1/models {NOT_OPENAI['html404']}." in err.splitlines()
    with RunStore(tmp_path / "db") as store:
        (run,) = store.list_runs()
        assert run.status == "failed" and run.reason.startswith("variant bf16-far: The server at ")


def test_qwen_bench_on_a_server_that_is_down_exits_1_with_the_sentence(tmp_path, capsys) -> None:
    code, url, took = bench_cli(f"http://127.0.0.1:{free_port()}", tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and took < QUICK_S, err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: the run failed: variant bf16-far: The OpenAI-compatible server at {url} "
                           "is not reachable: "), err
    with RunStore(tmp_path / "db") as store:
        (run,) = store.list_runs()
        assert run.status == "failed" and run.reason == line.removeprefix("error: the run failed: ")
