#!/usr/bin/env bash
# Install what the project needs on a fresh Debian machine: system packages (fonts for the label
# generator, Chromium for the browser tests) and a virtualenv in .venv with the Python packages.
#   scripts/setup.sh            runtime only
#   scripts/setup.sh --dev      runtime + test tools
#   scripts/setup.sh --vllm     also the real vLLM engine (QWEN_ENGINE=vllm; scripts/setup_vllm.sh)
#   (--dev and --vllm combine)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0; vllm=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --vllm) vllm=1 ;;
    *) echo "unknown option: $arg (use --dev, --vllm)" >&2; exit 2 ;;
  esac
done

want_debs=(fonts-dejavu-core)
((dev)) && want_debs+=(chromium)
missing=()
for pkg in "${want_debs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
req=requirements.txt
((dev)) && req=requirements-dev.txt
.venv/bin/python -m pip install -q -r "$req"
# The project itself, editable: its commands (qwen-serve, qwen-bench, qwen-report, qwen-check-repo)
# land in .venv/bin and run the code of this checkout.
.venv/bin/python -m pip install -q --no-deps -e .
((vllm)) && scripts/setup_vllm.sh
echo "environment ready: .venv ($(.venv/bin/python --version))"
