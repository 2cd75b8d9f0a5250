"""Version 2 of the vLLM engine on the CPU: an INT8 W8A8 checkpoint made from the served one.

vLLM has no CPU kernel for fp8, so where there is no GPU the embedded server's version 2 serves the
checkpoint quantized to int8 weights and activations in the compressed-tensors format, which vLLM
runs on x86 CPUs. It is made once per source checkpoint by ``scripts/quantize_w8a8.py`` (llmcompressor,
data-free one-shot, in its own environment ``.venv-quant``: llmcompressor pins other transformers and
compressed-tensors versions than vLLM) and cached in ``<data>/checkpoints/<name>-w8a8-<hash>/`` with a
``build_info.json`` saying how it was made. Everything that shows version 2 calls it
``settings.INT8_STANDIN``, never fp8.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from services.core import settings

QUANT_SCRIPT = settings.PROJECT_ROOT / "scripts" / "quantize_w8a8.py"
QUANT_VENV = settings.PROJECT_ROOT / ".venv-quant"
BUILD_TIMEOUT_S = 600


class W8A8BuildError(RuntimeError):
    """The int8 checkpoint could not be made (the message says why and how to fix it)."""


def quant_python() -> Path:
    """The interpreter of the quantization environment (``QWEN_QUANT_PYTHON`` overrides it)."""
    return Path(os.environ.get("QWEN_QUANT_PYTHON") or QUANT_VENV / "bin" / "python")


def source_digest(source: Path) -> str:
    """A short hash of the source checkpoint's config and weights, and of the quantization script."""
    h = hashlib.sha256()
    for path in sorted(source.glob("*.safetensors")) + [source / "config.json", QUANT_SCRIPT]:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def ensure_w8a8_checkpoint(source: str | Path) -> Path:
    """The INT8 W8A8 form of ``source``, built on first use and reused afterwards."""
    source = Path(source).resolve()
    out = settings.data_dir() / "checkpoints" / f"{source.name}-w8a8-{source_digest(source)}"
    if (out / "build_info.json").exists():
        return out
    python = quant_python()
    if not python.exists():
        raise W8A8BuildError(f"the quantization environment is missing ({python}): `scripts/setup.sh --vllm` "
                             "makes it (llmcompressor), or set QWEN_QUANT_PYTHON")
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    try:
        done = subprocess.run([str(python), str(QUANT_SCRIPT), str(source), str(tmp)], capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT_S, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    except subprocess.TimeoutExpired as exc:
        raise W8A8BuildError(f"quantizing {source} took over {BUILD_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise W8A8BuildError(f"quantizing {source} failed:\n{done.stderr[-3000:]}")
    made = json.loads(done.stdout.strip().splitlines()[-1])
    info = {"what": settings.INT8_STANDIN, "format": "compressed-tensors int-quantized",
            "made_from": str(source), "source_digest": source_digest(source), "script": "scripts/quantize_w8a8.py",
            "wall_seconds": round(time.time() - t0, 2), **made}
    (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    try:
        tmp.replace(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
