"""The bundled demo detector (models/demo-detector): it loads offline and finds tables through Triton.

The server here is the real embedded Triton started on the shipped checkpoint (both versions: 1 =
bf16, 2 = fp8), on free ports. Images are fresh generated labels from a held-out seed range (no
training, in-training check or evaluation seed), with exactly one table each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from services.core.boxes import best_iou, parse_answer
from services.core.prompt import build_prompt

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo-detector"
TEST_SEED_BASE = 9_500_000  # held out: training < 8,000,000; in-training check 8,000,000+; evaluation 9,000,000..9,000,199
N_IMAGES = 5
MIN_FOUND = 4  # of 5 per version: one miss is tolerated (greedy decoding can differ between CPUs)

pytestmark = [pytest.mark.server, pytest.mark.skipif(not (DEMO / "config.json").is_file(), reason="models/demo-detector is not there")]


def test_checkpoint_is_a_small_trained_qwen2_vl():
    info = json.loads((DEMO / "build_info.json").read_text())
    assert info.get("trained_by"), "build_info.json must name what trained it"
    config = json.loads((DEMO / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size <= 12_000_000, f"models/demo-detector is {size / 1e6:.2f} MB, over 12 MB"
    for name in ("MODEL_CARD.md", "train_log.csv", "loss_curve.png", "model.safetensors", "tokenizer.json",
                 "preprocessor_config.json", "generation_config.json"):
        assert (DEMO / name).is_file(), f"{name} missing from models/demo-detector"

    from services.serving.checkpoint_catalog import describe

    assert describe(DEMO).kind == "demo detector"


def test_checkpoint_loads_offline():
    """In a fresh process with the hub switched off: config, tokenizer, processor and bf16 weights load."""
    code = (
        "import torch, sys\n"
        "from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration\n"
        "from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil\n"
        f"p = {str(DEMO)!r}\n"
        "tok = AutoTokenizer.from_pretrained(p)\n"
        "proc = Qwen2VLImageProcessorPil.from_pretrained(p)\n"
        "m = Qwen2VLForConditionalGeneration.from_pretrained(p, dtype=torch.bfloat16)\n"
        "assert tok.convert_tokens_to_ids('<|image_pad|>') == m.config.image_token_id\n"
        "print(sum(t.numel() for t in m.parameters()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((DEMO / "build_info.json").read_text())
    assert int(done.stdout.strip().splitlines()[-1]) == info["parameters"]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    from services.serving.embedded_triton import start_embedded_triton

    server = start_embedded_triton(DEMO, workdir=tmp_path_factory.mktemp("demo-triton"),
                                   ports={"http": None, "grpc": None, "metrics": None})
    yield server
    server.stop()


def single_table_samples(n: int):
    from services.image_sets.generator import generate_label

    out, seed = [], TEST_SEED_BASE
    while len(out) < n:
        s = generate_label(seed)
        if len(s.boxes) == 1:
            out.append(s)
        seed += 1
    return out


@pytest.mark.parametrize("version", ["1", "2"])
def test_demo_detector_finds_the_table_through_triton(demo_server, version):
    import base64
    import io

    from services.core.images import load_image

    found, report = 0, []
    for s in single_table_samples(N_IMAGES):
        buf = io.BytesIO()
        s.image.save(buf, "PNG")
        loaded = load_image(buf.getvalue())
        body = {
            "text_input": build_prompt(),
            "image": [base64.b64encode(loaded.data).decode("ascii")],
            "exclude_input_in_output": True,
            "sampling_parameters": json.dumps({"max_tokens": 64, "temperature": 0.0}),
        }
        r = requests.post(f"http://{demo_server.http_url}/v2/models/qwen/versions/{version}/generate",
                          json=body, timeout=120)
        assert r.status_code == 200, r.text[:500]
        text = r.json()["text_output"]
        parsed = parse_answer(text, s.width, s.height)
        v = best_iou(parsed.grid_boxes, s.grid_boxes[0])
        found += v >= 0.5
        report.append(f"seed {s.seed}: IoU {v:.2f} answer {text!r}")
    assert found >= MIN_FOUND, f"version {version} found {found}/{N_IMAGES} tables:\n" + "\n".join(report)
