"""Runs on variants against the real embedded Triton (tests/conftest.py, the tiny checkpoint): a paired
benchmark on two variants keyed by their labels, stored, named in the manifest and compared; a variant
whose version the server lacks ends the run before its first request; the command line's --variant.

The two variants are Triton's versions 1 and 2 of the one embedded server, the second addressed by its
URL so that the set is not "one Triton model" and the variants are keyed by label, as a Triton + vLLM
pair is. Nothing is mocked.
"""

from __future__ import annotations

import json

import pytest

from services.bench.cli import main
from services.bench.runner import BenchmarkConfig, run_benchmark
from services.bench.store import RunStore
from services.client.variants import parse_variant_spec, resolve_variants
from services.compare.comparison import compare_run
from services.compare.report import main as report_main
from tests.bench.test_runner import EXACT, IMAGES, MAX_TOKENS, target_of
from tests.bench.test_runner import _stop_sampler_after_module, store  # noqa: F401 (fixtures)
from services.image_sets.image_set import ImageSetSpec

pytestmark = pytest.mark.timeout(240)


def two_variants(server) -> tuple:
    return resolve_variants([parse_variant_spec("version=1,label=bf16-run-server"),
                             parse_variant_spec(f"url=http://{server.http_url},version=2,label=fp8-by-url")])


def test_a_paired_run_on_two_variants_is_stored_named_and_compared_by_label(triton_server, store) -> None:
    variants = two_variants(triton_server)
    cfg = BenchmarkConfig(variants=variants, image_set=ImageSetSpec(kind="uploaded", images=IMAGES, max_side=160),
                          requests=3, warmup=1, max_tokens=MAX_TOKENS, extra_sampling=dict(EXACT), timeout_s=60.0)
    outcome = run_benchmark(cfg, store, target_of(triton_server, "grpc"))
    assert outcome.status == "completed", outcome.reason
    rows = store.get_requests(outcome.run_id)
    # interleaved on the same image order, keyed by label
    assert [r.version for r in rows] == ["bf16-run-server", "fp8-by-url"] * 4
    assert [r.image_id for r in rows][::2] == [r.image_id for r in rows][1::2]
    assert all(r.ok and r.output_tokens == MAX_TOKENS for r in rows)
    assert set(outcome.summaries) == {"bf16-run-server", "fp8-by-url"}
    run = store.get_run(outcome.run_id)
    assert run.config["versions"] == ["bf16-run-server", "fp8-by-url"]
    named = {v["key"]: v for v in run.manifest["variants"]}
    assert named["bf16-run-server"]["kind"] == "triton" and named["bf16-run-server"]["version"] == "1"
    assert named["bf16-run-server"]["target"]["grpc_url"] == triton_server.grpc_url  # the run's server, over gRPC
    assert named["fp8-by-url"]["url"] == f"http://{triton_server.http_url}" and named["fp8-by-url"]["version"] == "2"
    assert named["fp8-by-url"]["preflight"]["model_ready"] is True  # asked before the first request
    assert run.manifest["quantization"].keys() <= {"bf16-run-server"}  # re-keyed from version 1
    assert run.manifest["server"]["name"] == "triton"
    # Compare pairs the two variants in the run's order, named by their labels
    c = compare_run(store, outcome.run_id)
    assert (c.a.version, c.b.version) == ("bf16-run-server", "fp8-by-url")
    assert (c.a.label, c.b.label) == ("bf16-run-server", "fp8-by-url")
    assert c.paired and c.interleaved and (c.measured_a, c.measured_b) == (3, 3)
    assert c.metric("latency_ms").dist_a.count == 3


def test_the_report_of_a_run_on_two_variants_names_them_by_label(triton_server, tmp_path, capsys) -> None:
    variants = two_variants(triton_server)
    with RunStore(tmp_path / "db") as store:
        cfg = BenchmarkConfig(variants=variants, image_set=ImageSetSpec(kind="uploaded", images=IMAGES, max_side=160),
                              requests=2, warmup=0, max_tokens=MAX_TOKENS, extra_sampling=dict(EXACT), timeout_s=60.0)
        run_id = run_benchmark(cfg, store, target_of(triton_server, "http")).run_id
    assert report_main(["--run", str(run_id), "--data-dir", str(tmp_path / "db"), "--out", str(tmp_path / "r")]) == 0
    html = next((tmp_path / "r").glob("*.html")).read_text()
    assert "bf16-run-server" in html and "fp8-by-url" in html
    data = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    assert json.dumps(data).count("fp8-by-url") >= 2
    assert "fp8-by-url" in capsys.readouterr().out  # the verdict's lines name the variants


def test_a_variant_whose_version_is_missing_fails_the_run_before_its_first_request(triton_server, store) -> None:
    variants = resolve_variants([parse_variant_spec("version=1,label=ok"),
                                 parse_variant_spec(f"url={triton_server.http_url},version=7,label=missing")])
    cfg = BenchmarkConfig(variants=variants, image_set=ImageSetSpec(kind="uploaded", images=IMAGES, max_side=160),
                          requests=2, warmup=0, max_tokens=MAX_TOKENS, timeout_s=30.0)
    outcome = run_benchmark(cfg, store, target_of(triton_server, "http"))
    assert outcome.status == "failed"
    assert outcome.reason.startswith("variant missing: version 7 of model 'qwen' is not served ready"), outcome.reason
    assert store.get_requests(outcome.run_id) == []
    assert store.get_run(outcome.run_id).manifest["variants"][1]["preflight"]["model_ready"] is False


def test_the_command_line_takes_variants_and_prints_them_by_label(triton_server, tmp_path, capsys) -> None:
    images = tmp_path / "one.png"
    images.write_bytes(IMAGES[0][1])
    variants_file = tmp_path / "variants.json"
    variants_file.write_text(json.dumps([{"version": "2", "label": "second", "url": triton_server.http_url}]))
    code = main(["--url", f"http://{triton_server.http_url}", "--variant", "version=1,label=first",
                 "--variants-file", str(variants_file), "--images", "uploaded", "--files", str(images),
                 "--max-side", "160", "--max-tokens", "2", "--ignore-eos", "--requests", "2", "--warmup", "0",
                 "--data-dir", str(tmp_path / "db"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "first" in out and "second" in out and out.strip().splitlines()[-1].endswith("completed")
    with RunStore(tmp_path / "db") as store:
        run_id = store.list_runs()[0].id
        assert [r.version for r in store.get_requests(run_id)] == ["first", "second"] * 2


def test_a_fresh_report_on_two_variants(triton_server, tmp_path, capsys) -> None:
    assert report_main(["--fresh", "--url", triton_server.http_url, "--variant", "version=2,label=second",
                        "--variant", f"url={triton_server.http_url},version=1,label=first", "--image-set", "generated",
                        "--count", "2", "--requests", "2", "--warmup", "0", "--max-tokens", "2", "--max-side", "160",
                        "--data-dir", str(tmp_path / "db"), "--out", str(tmp_path / "r")]) == 0
    html = next((tmp_path / "r").glob("*.html")).read_text()
    assert "<title>first vs second: comparison report</title>" in html  # B vs A: side A is the first variant given
    with pytest.raises(SystemExit) as exc:
        report_main(["--fresh", "--variant", "kind=openai", "--out", str(tmp_path / "r2")])
    assert exc.value.code == 2 and "needs url" in capsys.readouterr().err


def test_versions_and_variants_together_are_a_usage_error(tmp_path, capsys) -> None:
    assert main(["--versions", "1", "--variant", "2", "--data-dir", str(tmp_path)]) == 2
    assert "either --versions or --variant" in capsys.readouterr().err
    assert main(["--variant", "kind=openai,url=http://h:1", "--data-dir", str(tmp_path)]) == 2
    assert "needs model" in capsys.readouterr().err
