"""services.client.variants: spec strings, config files, keys, the default pair, targets and clients.

Pure parsing; the runs on variants against the real embedded Triton are in
tests/bench/test_variant_runs.py.
"""

from __future__ import annotations

import json

import pytest

from services.client.server_target import ServerTarget
from services.client.triton_client import TritonClient
from services.client.variants import (
    Variant,
    client_for,
    default_variants,
    is_default_set,
    load_variants_file,
    parse_variant_spec,
    resolve_variants,
    variant_target,
    variants_from_options,
)
from services.core.versions import VERSION_LABELS

RUN_TARGET = ServerTarget("127.0.0.1:18000", "127.0.0.1:18001", "http://127.0.0.1:18002/metrics", "grpc",
                          embedded=True, checkpoint=None, repository=None, server_pid=None)


def test_the_default_pair_is_todays_two_versions_keyed_by_version() -> None:
    pair = default_variants()
    assert [v.key for v in pair] == ["1", "2"]
    assert [v.label for v in pair] == [VERSION_LABELS["1"], VERSION_LABELS["2"]]
    assert all(v.kind == "triton" and v.url == "" and v.model == "qwen" for v in pair)
    assert is_default_set(pair)
    assert variants_from_options(None, None) == pair  # no --variant: today's run
    assert [v.key for v in variants_from_options(None, None, ["2"])] == ["2"]


def test_the_default_labels_follow_the_version_labels_setting(monkeypatch) -> None:
    monkeypatch.setenv("QWEN_VERSION_LABELS", "1=fp16,2=int8")
    assert [v.label for v in default_variants()] == ["fp16", "int8"]
    assert [v.key for v in default_variants()] == ["1", "2"]
    assert parse_variant_spec("3").label == "v3"


def test_a_bare_number_is_that_triton_version_on_the_run_server() -> None:
    v = parse_variant_spec(" 2 ")
    assert (v.kind, v.url, v.version, v.label) == ("triton", "", "2", VERSION_LABELS["2"])
    assert [x.key for x in resolve_variants([parse_variant_spec("1"), parse_variant_spec("2")])] == ["1", "2"]


def test_field_specs_of_an_openai_and_a_triton_variant() -> None:
    o = parse_variant_spec("label=bf16-vllm, kind=openai, url=http://127.0.0.1:8100, model=demo")
    assert (o.kind, o.url, o.model, o.version, o.label) == ("openai", "http://127.0.0.1:8100", "demo", "", "bf16-vllm")
    t = parse_variant_spec("kind=triton,url=grpc://gpu-host:8001,version=1,protocol=grpc,metrics_url=http://m:9/metrics")
    assert (t.url, t.version, t.label, t.protocol, t.metrics_url) == \
        ("grpc://gpu-host:8001", "1", VERSION_LABELS["1"], "grpc", "http://m:9/metrics")
    assert parse_variant_spec("kind=openai,url=http://h:8000,model=Qwen/Qwen2-VL-7B").label == "Qwen2-VL-7B"


@pytest.mark.parametrize("spec, words", [
    ("", "empty"),
    ("bf16", "bare spec is a Triton version"),
    ("1,2", "bare spec"),
    ("kind=openai,model=demo", "needs url"),
    ("kind=openai,url=http://h:1", "needs model"),
    ("kind=openai,url=http://h:1,model=m,version=1", "Triton's"),
    ("kind=openai,url=grpc://h:1,model=m", "http://host:port"),
    ("kind=vllm,url=http://h:1,model=m", "kind must be"),
    ("kind=triton,url=h:8000", "needs a version"),
    ("version=1,protocol=ftp", "protocol"),
    ("version=1,colour=blue", "unknown field"),
    ("version=1,version=2", "twice"),
    ("version=1,label", "not field=value"),
    ("version=1,label=a/b", "names files"),
])
def test_a_bad_spec_says_what_is_wrong(spec, words) -> None:
    with pytest.raises(ValueError, match=words):
        parse_variant_spec(spec)


def test_variants_of_two_servers_are_keyed_by_their_labels() -> None:
    a = parse_variant_spec("version=1")
    b = parse_variant_spec("kind=openai,url=http://127.0.0.1:8100,model=demo,label=fp8-vllm")
    assert [v.key for v in resolve_variants([a, b])] == [VERSION_LABELS["1"], "fp8-vllm"]
    assert not is_default_set(resolve_variants([a, b]))
    # the same version of two Triton servers: told apart by label
    c = parse_variant_spec("url=gpu-a:8000,version=1,label=a")
    d = parse_variant_spec("url=gpu-b:8000,version=1,label=b")
    assert [v.key for v in resolve_variants([c, d])] == ["a", "b"]


@pytest.mark.parametrize("specs, words", [
    (["url=gpu-a:8000,version=1", "url=gpu-b:8000,version=1"], "its own label"),
    (["version=1", "version=1"], "its own label"),
    (["version=1", "kind=openai,url=http://h:1,model=m,label=7"], "bare number"),
    ([], "at least one"),
])
def test_variants_that_cannot_be_told_apart_are_refused(specs, words) -> None:
    with pytest.raises(ValueError, match=words):
        resolve_variants([parse_variant_spec(s) for s in specs])


def test_a_toml_file_of_variants(tmp_path) -> None:
    path = tmp_path / "variants.toml"
    path.write_text('[[variant]]\nversion = 1\nlabel = "bf16-triton"\n\n'
                    '[[variant]]\nkind = "openai"\nurl = "http://127.0.0.1:8100"\nmodel = "demo"\nlabel = "fp8-vllm"\n')
    variants = load_variants_file(path)
    assert [(v.kind, v.version, v.label) for v in variants] == [("triton", "1", "bf16-triton"), ("openai", "", "fp8-vllm")]
    assert [v.key for v in variants_from_options(["2"], path)] == [VERSION_LABELS["2"], "bf16-triton", "fp8-vllm"]


def test_a_json_file_of_variants_as_a_list_or_an_object(tmp_path) -> None:
    entries = [{"version": "1"}, {"version": 2, "label": "fp8"}]
    for data in (entries, {"variants": entries}):
        path = tmp_path / "v.json"
        path.write_text(json.dumps(data))
        assert [v.key for v in variants_from_options(None, path)] == ["1", "2"]


@pytest.mark.parametrize("name, text, words", [
    ("v.toml", "[[variant]\nversion = 1", "not valid TOML"),
    ("v.json", "[{", "not valid JSON"),
    ("v.json", "{}", "holds no variants"),
    ("v.toml", "title = 'x'", "holds no variants"),
    ("v.json", '[{"kind": "openai", "url": "http://h:1"}]', "variant 1: an OpenAI-compatible variant needs model"),
])
def test_a_bad_variants_file_says_what_is_wrong(tmp_path, name, text, words) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=words):
        load_variants_file(path)


def test_a_missing_variants_file_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot read the variants file .*nope.toml"):
        load_variants_file(tmp_path / "nope.toml")


def test_targets_of_variants() -> None:
    default, own = resolve_variants([parse_variant_spec("version=1"),
                                     parse_variant_spec("url=gpu-host:9000,version=2,label=fp8-gpu")])
    assert variant_target(default, RUN_TARGET) is RUN_TARGET  # the run's server
    t = variant_target(own, RUN_TARGET)
    assert (t.http_url, t.grpc_url, t.metrics_url, t.embedded) == \
        ("gpu-host:9000", "gpu-host:8001", "http://gpu-host:8002/metrics", False)
    grpc = variant_target(parse_variant_spec("version=1,protocol=http"), RUN_TARGET)
    assert grpc.protocol == "http" and grpc.http_url == RUN_TARGET.http_url
    o = variant_target(parse_variant_spec("kind=openai,url=http://127.0.0.1:8100/v1,model=demo"), RUN_TARGET)
    assert (o.kind, o.http_url, o.metrics_url) == ("openai", "127.0.0.1:8100", "http://127.0.0.1:8100/metrics")
    assert o.label == "OpenAI-compatible server at http://127.0.0.1:8100"


def test_client_for_a_triton_variant_addresses_its_server_and_model() -> None:
    v = parse_variant_spec("url=gpu-host:9000,version=2,model=other,label=x")
    with client_for(v, RUN_TARGET, timeout_s=3.0) as client:  # no connection is made until a call
        assert isinstance(client, TritonClient)
        assert (client.url, client.model, client.timeout_s) == ("http://gpu-host:9000", "other", 3.0)
    with client_for(parse_variant_spec("1"), RUN_TARGET) as client:
        assert client.url == "grpc://127.0.0.1:18001"


def test_describe_names_the_variant_for_the_manifest() -> None:
    v = resolve_variants([parse_variant_spec("kind=openai,url=http://h:1,model=demo,label=b")])[0]
    assert v.describe() == {"key": "b", "label": "b", "kind": "openai", "url": "http://h:1", "model": "demo",
                            "version": None, "protocol": None, "grpc_url": None, "metrics_url": None}
    assert isinstance(v, Variant) and "OpenAI-compatible" in v.title


def test_a_run_whose_variants_all_name_their_server_needs_no_run_server() -> None:
    from services.client.variants import own_target

    both = resolve_variants([parse_variant_spec("kind=openai,url=http://127.0.0.1:8100,model=m,label=a"),
                             parse_variant_spec("url=gpu:8000,version=1,label=b")])
    assert own_target(both).label == "OpenAI-compatible server at http://127.0.0.1:8100"
    assert own_target(default_variants()) is None  # versions on the run's server: it must be resolved
