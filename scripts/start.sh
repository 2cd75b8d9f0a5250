#!/usr/bin/env bash
# Install what is needed, then start the dashboard on http://localhost:8501.
# With no QWEN_TRITON_URL it starts its own Triton server (the embedded default) on the bundled
# demo checkpoint; set QWEN_TRITON_URL=host:8000 to use a running production server instead.
# QWEN_ENGINE=vllm: that server runs the real vLLM engine (installed first: setup.sh --vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${QWEN_ENGINE:-}" == "vllm" ]]; then scripts/setup.sh --vllm; else scripts/setup.sh; fi
exec .venv/bin/python -m streamlit run app.py --server.port "${PORT:-8501}" --server.headless true \
  --browser.gatherUsageStats false "$@"
