#!/usr/bin/env bash
# Install what is needed, then start the dashboard on http://localhost:8501.
# With no QWEN_TRITON_URL it starts its own Triton server (the embedded default) on the bundled
# demo checkpoint; set QWEN_TRITON_URL=host:8000 to use a running production server instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m streamlit run app.py --server.port "${PORT:-8501}" --server.headless true \
  --browser.gatherUsageStats false "$@"
