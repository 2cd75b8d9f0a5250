"""The memory split as the real vLLM engine states it at load (issue 14): weights, KV-cache size in
bytes and tokens, per version, in ``engine_report.json`` and as ``qwen_engine_*`` gauges on Triton's
metrics port, read into the run manifest and the Compare memory line. Where vLLM states no number
(its weight memory on the CPU), it is unknown and says why. Against ``vllm_server`` (tests/conftest.py)."""

from __future__ import annotations

import multiprocessing

import pandas as pd
import pytest

from services.bench.manifest import served_quantization
from services.client.server_target import ServerTarget
from services.compare.memory import memory_side, split_text
from services.serving import vllm_load_facts
from tests.conftest import require_vllm

def _log_as_vllm_does(config_file: str) -> None:
    """In a fresh process, as vLLM's engine processes do: configure logging from the engine's
    LoggingConfig (vLLM's own configure_logging), then vLLM 0.32's statements (format strings and
    arguments as in gpu_model_runner.py, cpu_worker.py and kv_cache_utils.py) and an unrelated line."""
    from vllm.config.logging import LoggingConfig
    from vllm.logger import configure_logging, init_logger

    configure_logging(LoggingConfig(pylogging_config_file=config_file))
    init_logger("vllm.v1.worker.gpu_model_runner").info(
        "Model loading took %s GiB memory and %.6f seconds", "1.5", 2.0)
    init_logger("vllm.v1.worker.cpu_worker").info("Explicitly set (1.0/125.5) GiB for KV cache on node 0.")
    init_logger("vllm.v1.core.kv_cache_utils").info_once(
        "%s KV cache size: %s tokens, Maximum concurrency for %s tokens per request: %.2fx", "CPU", "43,680",
        "4,096", 10.66)
    init_logger("vllm.other").info("Starting to load model %s...", "x")


def test_the_handler_survives_vllms_logging_setup_in_a_child_process(tmp_path) -> None:
    require_vllm()
    config_file, facts_file = vllm_load_facts.write_logging_config(str(tmp_path))
    child = multiprocessing.get_context("spawn").Process(target=_log_as_vllm_does, args=(config_file,))
    child.start()
    child.join(300)
    assert child.exitcode == 0
    facts = vllm_load_facts.read_load_facts(facts_file)
    assert facts["weight_bytes"] == int(1.5 * 2**30) and facts["kv_cache_bytes"] == 2**30
    assert facts["kv_cache_tokens_logged"] == 43680 and facts["kv_cache_max_concurrency"] == 10.66
    assert len(facts["log_lines"]) == 3  # the unrelated line is not kept
    assert vllm_load_facts.read_load_facts(str(tmp_path / "none.jsonl")) == {"log_lines": []}


@pytest.mark.vllm
@pytest.mark.server
@pytest.mark.timeout(1200)
def test_each_version_states_its_kv_cache_and_weights_or_why_not(vllm_server) -> None:
    target = ServerTarget(vllm_server.http_url, vllm_server.grpc_url, vllm_server.metrics_url, "http",
                          embedded=True, checkpoint=None, repository=vllm_server.repository,
                          server_pid=vllm_server.pid)
    manifest = {"quantization": served_quantization(target, ("1", "2"))}
    for v in ("1", "2"):
        report = vllm_server.engine_report(v)
        stated = report["memory_stated"]
        print(f"v{v}: weights {report['weight_bytes']} ({stated['weight_bytes']}); KV cache "
              f"{report['kv_cache_bytes']} bytes ({stated['kv_cache_bytes']}), {report['kv_cache_tokens']} tokens "
              f"= {report['num_gpu_blocks']} blocks x {report['block_size']}; max concurrency "
              f"{report['kv_cache_max_concurrency']}; vLLM said: {stated['log_lines']}")
        assert report["kv_cache_tokens"] == report["num_gpu_blocks"] * report["block_size"] > 0
        assert any("KV cache size:" in line for line in stated["log_lines"]), "the engine process's log was read"
        if report["device"] == "cpu":
            # VLLM_CPU_KVCACHE_SPACE (GiB) sizes the CPU KV cache; vLLM's CPU runner measures no weights
            gib = float(report["adapted_for_platform"]["VLLM_CPU_KVCACHE_SPACE_GiB"])
            assert report["kv_cache_bytes"] == int(gib * 2**30)
            assert report["weight_bytes"] is None and stated["weight_bytes"].startswith("unknown")
        else:
            assert report["weight_bytes"] > 0 and report["kv_cache_bytes"] > 0
        # the gauges reach the run manifest, and the memory split reads them
        entry = manifest["quantization"][v]
        assert entry["source"] == "metrics" and entry["engine"] == "vllm"
        assert entry["kv_cache_bytes"] == report["kv_cache_bytes"]
        assert entry["kv_cache_tokens"] == report["kv_cache_tokens"]
        assert (entry["weight_bytes"].get("model") == report["weight_bytes"])
        side = memory_side(pd.DataFrame(), manifest, v)
        assert side.kv_room_bytes == report["kv_cache_bytes"]
        assert side.kv_note.startswith("stated by the engine")
        print(f"v{v} split: {split_text(side)}")
        if report["weight_bytes"] is None:
            assert side.weights_bytes is None and "weights unknown" in split_text(side)
