#!/usr/bin/env bash
# The one command of the demo detector's GPU run (device tool `run`, kind nvidia-h100-x1), from the
# repository root, with carry ["carry/fonts"]:
#
#     bash scripts/gpu_train.sh                 # train from scratch (~7.5 min of training, < 10 min in all)
#
# To continue a run, also carry "carry/resume" holding the previous run's demo-detector/ folder and
# train_log.csv: the weights are taken from there and training goes on with fresh seeds.
#
# carry/fonts: the six DejaVu fonts of fonts-dejavu-core (the GPU machine has none):
#     mkdir -p carry/fonts && cp /usr/share/fonts/truetype/dejavu/DejaVu{Sans,Sans-Bold,Serif,Serif-Bold,SansMono,SansMono-Bold}.ttf carry/fonts/
#
# Writes under $OUT: demo-detector.tar (the checkpoint folder, rewritten at every save), train_log.csv,
# train_stdout.log. Extra arguments go to training/train_detector.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/demo-detector-out}
mkdir -p "$OUT"
export LABEL_FONT_DIR=${LABEL_FONT_DIR:-$PWD/carry/fonts}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}

df -h /dev/shm | tail -1 || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch, transformers, numpy, PIL, os; print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__, "pillow", PIL.__version__, "cpus", os.cpu_count())'

ARGS=(--out /tmp/demo-detector --log-dir "$OUT" --out-tar "$OUT/demo-detector.tar")
if [ -f carry/resume/demo-detector/build_info.json ]; then
    echo "resuming from carry/resume/demo-detector"
    ARGS+=(--init-from carry/resume/demo-detector)
    [ -f carry/resume/train_log.csv ] && cp carry/resume/train_log.csv "$OUT/train_log.csv"
fi
"$PY" training/train_detector.py "${ARGS[@]}" "$@" 2>&1 | tee "$OUT/train_stdout.log"
