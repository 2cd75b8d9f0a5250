"""Quantize a Qwen2-VL checkpoint to INT8 W8A8 in the compressed-tensors format (data-free, one shot).

Runs in its own environment (`.venv-quant`, made by `scripts/setup.sh --vllm`): llmcompressor 0.14
pins transformers and compressed-tensors versions that differ from vLLM's. The decoder's linear
layers get int8 weights (one scale per output channel) and int8 dynamic per-token activations; the
vision tower and lm_head stay bf16. vLLM reads the method from the checkpoint's config and runs it on
the CPU (it has no CPU kernel for fp8). `services.serving.w8a8_checkpoint` calls this and caches the
result; run it by hand as

    .venv-quant/bin/python scripts/quantize_w8a8.py SOURCE_DIR OUT_DIR
"""

import json
import shutil
import sys
import time
from pathlib import Path

import torch
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from transformers import Qwen2VLForConditionalGeneration

RECIPE = {"targets": "Linear", "scheme": "W8A8", "ignore": ["lm_head", "re:.*visual.*"]}
COPIED = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
          "generation_config.json")


def main(src: Path, dst: Path) -> None:
    t0 = time.time()
    model = Qwen2VLForConditionalGeneration.from_pretrained(src, dtype=torch.bfloat16)
    oneshot(model=model, recipe=QuantizationModifier(**RECIPE))
    model.save_pretrained(dst, save_compressed=True)
    for name in COPIED:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    import compressed_tensors
    import llmcompressor
    import transformers

    print(json.dumps({"seconds": round(time.time() - t0, 2), "recipe": RECIPE,
                      "llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
                      "transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
