"""The GPU run's scripts, on CPU: the 7B config is Qwen2-VL-7B's exact shape, the headline benchmark's
command line carries the issue's parameters, the memory check's verdicts, and the bundle's pins."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_memory_check as mc  # noqa: E402
import gpu_stages  # noqa: E402

MIB = 2**20
GIB = 2**30


def test_the_7b_config_is_the_preset_and_qwen2_vl_7b_exact_size() -> None:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from services.serving.checkpoint_builder import PRESET_7B, build_config, build_tokenizer

    spec, expected = gpu_stages.load_spec(ROOT / "configs" / "qwen2-vl-7b.json")
    assert spec == PRESET_7B
    config = build_config(spec, build_tokenizer(spec.bpe_vocab_size))
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if "visual" in n.split("."))
    assert (total, vision) == (expected["parameters"], expected["vision_parameters"]) == (8_291_375_616, 675_759_104)
    assert expected["bf16_bytes"] == 2 * total
    text = config.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads,
            text.num_key_value_heads, text.vocab_size) == (3584, 18944, 28, 28, 4, 152064)
    assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight


def test_safetensors_counts_read_back_what_the_builder_wrote(tiny_checkpoint) -> None:
    counts = gpu_stages.safetensors_counts(tiny_checkpoint)
    info = json.loads((tiny_checkpoint / "build_info.json").read_text())
    assert counts["parameters"] == info["parameters"] and 0 < counts["vision_parameters"] < counts["parameters"]
    assert counts["bytes"] == 2 * counts["parameters"]  # bf16
    assert gpu_stages.check_counts(counts, {"parameters": info["parameters"]}) == 0
    assert gpu_stages.check_counts(counts, {"parameters": 1}) == 1


def test_the_headline_benchmark_runs_with_the_issues_parameters(tmp_path) -> None:
    from services.bench.cli import build_parser

    args = argparse.Namespace(
        requests=64, warmup=4, concurrency=1, count=16, image_seed=0, image_size=1024, max_tokens=200,
        request_timeout=300.0)
    argv = gpu_stages.bench_argv(args, tmp_path / "db", tmp_path / "bench")
    parsed = build_parser().parse_args(argv)
    assert parsed.versions == ["1", "2"] and parsed.requests == 64 and parsed.warmup == 4
    assert parsed.load == "closed" and parsed.concurrency == 1
    assert parsed.images == "generated" and parsed.image_size == "1024" and parsed.count == 16
    assert parsed.max_tokens == 200 and parsed.ignore_eos and parsed.stream
    assert parsed.data_dir == str(tmp_path / "db") and parsed.out == str(tmp_path / "bench")


def test_device_check_passes_within_1_percent_and_explains_the_driver_reserve() -> None:
    ok = mc.device_check([{"gpu": 0, "sampler_used": 20_100 * MIB, "smi_used": 20_000 * MIB}])
    assert ok["pass"] and ok["explanation"] is None and ok["max_rel_diff"] == pytest.approx(0.005)
    bad = mc.device_check([{"gpu": 0, "sampler_used": 1_530 * MIB, "smi_used": 1_000 * MIB,
                            "nvml_v2_used": 1_000 * MIB, "nvml_v2_reserved": 530 * MIB}])
    assert bad["pass"] is False and bad["max_rel_diff"] == pytest.approx(0.53)
    assert "530 MiB reserved" in bad["explanation"] and "nvmlMemory_v2" in bad["explanation"]
    assert mc.device_check([])["pass"] is None


def test_process_and_attribution_checks() -> None:
    sampler = {10: {"name": "tritonserver", "model": "server", "version": None, "memory_bytes": 520 * MIB},
               11: {"name": "triton_python_backend_stub", "model": "qwen", "version": "1", "memory_bytes": 17 * GIB},
               12: {"name": "triton_python_backend_stub", "model": "qwen", "version": "2", "memory_bytes": 11 * GIB}}
    smi = {10: 520 * MIB, 11: 17 * GIB, 12: 11 * GIB + 2 * MIB}
    procs = mc.process_check(sampler, smi)
    assert procs["pass"] and [r["pid"] for r in procs["processes"]] == [10, 11, 12]
    assert not mc.process_check(sampler, {**smi, 99: MIB})["pass"]  # a process the sampler did not see
    att = mc.attribution_check(sampler, ["1", "2"])
    assert att["pass"] and att["by_version"] == {"server": [10], "1": [11], "2": [12]}
    assert mc.attribution_check({10: sampler[10], 11: sampler[11]}, ["1", "2"])["missing_versions"] == ["2"]


def test_torch_counters_and_the_per_version_verdicts() -> None:
    metrics = {'qwen_engine_torch_memory_bytes{kind="allocated",model="qwen",version="1"}': 17.0e9,
               'qwen_engine_torch_memory_bytes{kind="reserved",model="qwen",version="1"}': 17.5e9,
               'qwen_engine_torch_memory_bytes{kind="allocated",model="qwen",version="2"}': 10.0e9}
    assert mc.torch_from_metrics(metrics, "1") == {"allocated": 17_000_000_000, "reserved": 17_500_000_000,
                                                   "max_allocated": None}
    assert mc.torch_from_report({"torch_memory_after_load": {"allocated_bytes": 5, "reserved": 6}}) == \
        {"allocated": 5, "reserved": 6, "max_allocated": None}
    assert mc.torch_from_report({}) == {"allocated": None, "reserved": None, "max_allocated": None}
    vc = mc.version_check("1", {"weights_bytes": 16.58e9}, int(18.1e9), {"allocated": int(16.8e9), "reserved": None,
                                                                         "max_allocated": None},
                          mc.torch_from_metrics(metrics, "1"))
    w, r = vc["weights_vs_allocated"], vc["process_vs_reserved"]
    assert w["pass"] and w["allocated_source"] == "engine report (after load)" and w["excess_bytes"] == pytest.approx(0.22e9)
    assert r["pass"] and r["outside_torch_bytes"] == pytest.approx(0.6e9)
    bad = mc.version_check("2", {"weights_bytes": 11e9}, int(9e9), {"allocated": int(10e9)}, {"reserved": int(10e9)})
    assert bad["weights_vs_allocated"]["pass"] is False and bad["process_vs_reserved"]["pass"] is False
    unknown = mc.version_check("2", {"weights_bytes": None}, None, {}, {})
    assert unknown["weights_vs_allocated"]["pass"] is None and unknown["process_vs_reserved"]["pass"] is None
    checks = mc.checks_of({"device": mc.device_check([]), "processes": {"pass": None, "error": "x"},
                           "attribution": {"pass": None, "error": "x"}, "versions": {"1": vc, "2": unknown}})
    assert [c["pass"] for c in checks] == [None, None, None, True, True, None, None]


def test_the_bundle_takes_its_pins_from_requirements() -> None:
    import gpu_bundle

    pins = gpu_bundle.requirement_pins()
    assert pins["numpy"] == "1.26.4" and pins["nvidia-pytriton"] == "0.7.0" and pins["tritonclient"] == "2.73.0"
    versions = gpu_bundle.wanted_versions()
    assert versions["numpy"] == "1.26.4" and versions["torchao"] == pins["torchao"]
    assert set(gpu_bundle.SITE_PACKAGES) <= set(versions)


def test_the_env_hides_the_machines_numpy2_packages_from_imports(tmp_path: Path) -> None:
    """gpu_env.sh's .pth hook: hidden packages are absent to find_spec and import; others still import."""
    import subprocess

    script = (ROOT / "scripts" / "gpu_env.sh").read_text()
    start = script.index("_genv_hide_packages() {")
    func = script[start:script.index("\n}\n", start) + 3]
    site, machine = tmp_path / "site", tmp_path / "machine"
    site.mkdir()
    for name in ("hiddenpkg", "keptpkg"):
        (machine / name).mkdir(parents=True)
        (machine / name / "__init__.py").write_text("VALUE = 1\n")
    out = subprocess.run(["bash", "-c", '_genv_log() { echo "$*"; }\n' + func + '\n_genv_hide_packages "$1" "$2"',
                          "bash", str(site), "hiddenpkg sklearn"], capture_output=True, text=True, check=True)
    assert "hiddenpkg sklearn" in out.stdout
    assert (site / "aa_qwen_hide_packages.pth").read_text().startswith("import qwen_hide_packages")
    probe = ("import importlib.util, site, sys; sys.path.append(sys.argv[2]); site.addsitedir(sys.argv[1]); "
             "import keptpkg; assert importlib.util.find_spec('hiddenpkg') is None\n"
             "try:\n    import hiddenpkg.sub\nexcept ModuleNotFoundError:\n    print('hidden')\n")
    res = subprocess.run([sys.executable, "-c", probe, str(site), str(machine)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "hidden", res.stderr
