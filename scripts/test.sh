#!/usr/bin/env bash
# Install everything the tests need (Chromium and the vLLM engine included), then run the whole
# test suite (the vLLM tests too: marker `vllm`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev --vllm
exec .venv/bin/python -m pytest "$@"
