"""Labels checked (issue 14): what each version is called against what the server states it serves,
and a version labelled fp8 whose weights are not smaller than bf16's flagged; against the real
embedded server, whose engine states its quantization on the metrics port."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.bench.manifest import collect_manifest
from services.bench.runner import BenchmarkConfig
from services.bench.version_labels import check_labels, label_caveats, precision_of_engine_args
from services.client.server_target import ServerTarget
from services.client.triton_client import TritonClient


def _target(server, embedded: bool) -> ServerTarget:
    return ServerTarget(server.http_url, server.grpc_url, server.metrics_url, "http", embedded=embedded,
                        checkpoint=None, repository=server.repository if embedded else None,
                        server_pid=server.pid if embedded else None)


def _manifest(server, embedded: bool) -> dict:
    with TritonClient(server.http_url, protocol="http", timeout_s=10) as client:
        manifest, error = collect_manifest(client, _target(server, embedded), BenchmarkConfig())
    assert error is None
    return manifest


def _repository(root: Path, backend: str, args: dict[str, dict]) -> Path:
    (root / "qwen").mkdir(parents=True)
    (root / "qwen" / "config.pbtxt").write_text(f'name: "qwen"\nbackend: "{backend}"\n')
    for v, a in args.items():
        (root / "qwen" / v).mkdir()
        (root / "qwen" / v / "model.json").write_text(json.dumps(a))
    return root


def test_the_embedded_server_states_what_each_version_serves(triton_server) -> None:
    labels = _manifest(triton_server, embedded=True)["labels"]
    assert labels["source"] == "the embedded server's model repository"
    for v, precision in (("1", "bf16"), ("2", "fp8")):
        entry = labels["versions"][v]
        assert (entry["label"], entry["served"], entry["status"]) == (precision, precision, "verified")
        assert entry["weight_bytes"] > 0
    assert labels["versions"]["2"]["weight_bytes"] < labels["versions"]["1"]["weight_bytes"]
    assert labels["flags"] == [] and label_caveats({"labels": labels}, ["1", "2"]) == []


def test_a_mislabelled_version_is_flagged(triton_server, tmp_path) -> None:
    """An external server whose local model repository calls version 1 fp8 and version 2 bf16: the
    server states otherwise, and the fp8-labelled weights are not smaller."""
    manifest = _manifest(triton_server, embedded=False)
    swapped = _repository(tmp_path / "repo", "python", {"1": {"quantization": "fp8"}, "2": {"dtype": "bfloat16"}})
    labels = check_labels(_target(triton_server, False), ["1", "2"], manifest, local_repository=swapped)
    assert labels["source"].startswith("the local model repository")
    assert [labels["versions"][v]["status"] for v in ("1", "2")] == ["mismatch", "mismatch"]
    flags = labels["flags"]
    assert any("Version 1 is labelled fp8" in f and "states it serves bf16" in f for f in flags)
    assert any("labelled fp8 but its weights" in f and "not smaller" in f for f in flags)
    assert label_caveats({"labels": labels}, ["1", "2"]) == flags


def test_a_repository_that_is_not_the_served_model_gives_no_label(triton_server, tmp_path, monkeypatch) -> None:
    manifest = _manifest(triton_server, embedded=False)
    other = _repository(tmp_path / "repo", "vllm", {"1": {"dtype": "bfloat16"}, "2": {"quantization": "fp8"}})
    monkeypatch.setenv("QWEN_VERSION_LABELS", "1=bf16, 2=fp8")
    labels = check_labels(_target(triton_server, False), ["1", "2"], manifest, local_repository=other)
    assert labels["source"] == "the QWEN_VERSION_LABELS setting"  # the backend differs: not this server's


def test_a_server_that_does_not_say_leaves_the_label_unverified(monkeypatch) -> None:
    """A stock vLLM server exports no qwen_engine_* gauges: its quantization is unknown."""
    monkeypatch.delenv("QWEN_VERSION_LABELS", raising=False)
    target = ServerTarget("gpu-host:8000", "gpu-host:8001", "", "http", embedded=False, checkpoint=None,
                          repository=None, server_pid=None)
    manifest = {"quantization": {"1": "unknown", "2": "unknown"}, "model": {"config": {"backend": "vllm"}}}
    labels = check_labels(target, ["1", "2"], manifest, local_repository=Path("/nonexistent"))
    assert labels["source"] == "the dashboard's default names"
    assert {e["status"] for e in labels["versions"].values()} == {"unverified"}
    caveats = label_caveats({"labels": labels}, ["1", "2"])
    assert len(caveats) == 1 and "unverified" in caveats[0]


@pytest.mark.parametrize("args, precision", [({"quantization": "fp8"}, "fp8"), ({"quantization": "fp8_per_tensor"}, "fp8"),
                                             ({"dtype": "bfloat16"}, "bf16"), ({}, "unknown")])
def test_precision_of_engine_args(args, precision) -> None:
    assert precision_of_engine_args(args) == precision
