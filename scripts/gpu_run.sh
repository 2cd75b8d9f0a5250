#!/usr/bin/env bash
# The GPU run in one command, ON the GPU machine (device tool `run`, kind nvidia-h100-x1), from the
# repository root, with carry ["carry/gpu"] (made beforehand on the development machine by
# `.venv/bin/python scripts/gpu_bundle.py`):
#
#     bash scripts/gpu_run.sh STAGE [STAGE ...]        # stages run in the order given
#
# Stages (each callable alone; a failing stage never stops the next one):
#   smoke     embedded Triton on models/demo-detector, cuda, versions 1 + 2 loaded together; one HTTP and
#             one gRPC request to each; engine reports; GPU processes as the sampler attributes them (~1 min)
#   tests     pytest -m gpu on tests/**/test_gpu_*.py (sampler NVML path, fp8 dynamic path, fast decode) (~2 min)
#   kernels   scripts/bench_fp8_linear.py (KERNELS_ARGS, default --sweep): the linear-layer kernels (bf16 cuBLAS, torchao fp8, _scaled_mm
#             row-wise / tensor-wise, the project's Triton gemv) on the 7B's shapes, M = 1 and the prefill's
#             1316 rows, and the decode attention kernel (~2-3 min); kernels.json and kernels.log under kernels/
#   build7b   Qwen2-VL-7B architecture, random weights, from configs/qwen2-vl-7b.json, to /tmp/qwen2-vl-7b
#             unless already there (~1 min: 16.6 GB written)
#   decode    scripts/bench_decode.py on the demo detector and on the 7B (built first if missing) (~3-4 min)
#   headline  embedded Triton on the 7B, both versions; memory check; benchmark (closed loop, concurrency 1,
#             64 requests after 4 warm-up per version, 16 generated 1024x1024 labels, 200 forced tokens);
#             comparison report; memory check with the report's figures (~6-8 min with the fast decode path:
#             the load compiles each version's decode step, ~45 s bf16, up to ~3 min fp8; the server's ready
#             timeout is what is left minus the report's reserve, at least 300 s where the deadline allows)
#   overhead  scripts/bench_triton_overhead.py on models/demo-detector: Triton's overhead over the in-process
#             engine for a 1-token request, engine on the GPU, then on the CPU (one torch thread, as on the
#             development machines) (~3 min); overhead_cuda.json and overhead_cpu.json under overhead/
#   all       smoke tests build7b decode headline (does NOT fit one 10-minute call: use the groups below)
#
# One device call is limited to 600 s; groups that fit (the machine is fresh each call: /tmp is empty):
#   call 1:  bash scripts/gpu_run.sh smoke tests                (~3-4 min)
#   call 2:  bash scripts/gpu_run.sh build7b headline           (~8-9.5 min; tight: the benchmark may be
#            cancelled at the deadline, HEADLINE_ARGS="--requests 32" leaves more room)
#   call 3:  bash scripts/gpu_run.sh build7b decode             (~4-5 min)
# Every stage checks the time left before the call's deadline (QWEN_GPU_BUDGET_S, default 570 s from the
# start) and is skipped when it cannot finish; the headline's benchmark is cancelled (its run kept, marked
# cancelled) early enough for the report to be written.
#
# Comes back under $OUT (at most 8 files): env.log, <stage>.log for each stage, decode.json (decode stage),
# results.tar.gz (everything: env.json, stages.tsv, smoke/, tests/junit.xml, build7b/, decode/,
# headline/{headline.json, memory_after_*.json, bench/, report/, db/}, gpu-results.md), re-packed after
# every stage. Then, on the development machine:
#     tar -xzf <files_at>/results.tar.gz -C /tmp/gpu-results
#     .venv/bin/python scripts/gpu_results_page.py --results /tmp/gpu-results --out docs/gpu-results.md
#
# Settings: QWEN_GPU_BUDGET_S (570), QWEN_7B_DIR (/tmp/qwen2-vl-7b), QWEN_7B_CONFIG (configs/qwen2-vl-7b.json),
# QWEN_GPU_DEVICE (cuda),
# HEADLINE_ARGS (extra arguments for `gpu_stages.py headline`, e.g. "--requests 16"), DECODE_ARGS (extra
# arguments for bench_decode.py, e.g. "--images 2 --profile --variants bf16-before bf16-kernels fp8-before fp8-kernels"; profile
# tables go to decode/profiles/), DECODE_DEMO=0 (decode stage: the 7B only), KERNELS_ARGS (bench_fp8_linear.py),
# GPU_TESTS (tests stage: the test files or node ids to run instead of every tests/**/test_gpu_*.py),
# OVERHEAD_ARGS (extra arguments for bench_triton_overhead.py, e.g. "--requests 100"), OVERHEAD_DEVICES
# (overhead stage: "cuda cpu"), QWEN_GPU_ENV_SCRIPT
# (another file to source instead of scripts/gpu_env.sh: a dry run on CPU with the project's .venv).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
T_START=$(date +%s)
export QWEN_GPU_DEADLINE=${QWEN_GPU_DEADLINE:-$(( T_START + ${QWEN_GPU_BUDGET_S:-570} ))}
OUT=${OUT:-/tmp/qwen-gpu-out}
ROOT=${QWEN_GPU_ROOT:-/tmp/qwen-gpu}
RESULTS=$ROOT/results
CKPT_7B=${QWEN_7B_DIR:-/tmp/qwen2-vl-7b}
DEVICE=${QWEN_GPU_DEVICE:-cuda}
declare -A NEED_S=([smoke]=60 [tests]=60 [build7b]=45 [decode]=90 [headline]=360 [overhead]=90 [kernels]=60)
VERDICTS=()

usage() { sed -n '2,52p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
STAGES=()
for a in "$@"; do
    case "$a" in
        all) STAGES+=(smoke tests build7b decode headline) ;;
        smoke|tests|build7b|decode|headline|overhead|kernels) STAGES+=("$a") ;;
        -h|--help) usage ;;
        *) echo "unknown stage '$a'"; usage ;;
    esac
done
[ ${#STAGES[@]} -gt 0 ] || usage
mkdir -p "$OUT" "$ROOT"
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
log() { echo "[gpu_run $(date -u +%H:%M:%S) +$(( $(date +%s) - T_START ))s] $*"; }
left_s() { echo $(( QWEN_GPU_DEADLINE - $(date +%s) )); }

# Run a command with what is left of the call (minus a margin), so that nothing outlives the deadline.
bounded() {
    local left=$(( $(left_s) - ${MARGIN_S:-20} ))
    if [ "$left" -lt 10 ]; then log "no time left for: $*"; return 124; fi
    timeout --signal=INT --kill-after=15 "$left" "$@"
}

pack_results() {
    local tmp="$ROOT/results.tar.gz.partial"  # never a half-written file under $OUT
    tar -C "$RESULTS" --exclude='image_sets' --exclude='*.safetensors' -czf "$tmp" . 2>/dev/null
    if [ "$(stat -c %s "$tmp" 2>/dev/null || echo 0)" -gt $(( 15 * 1024 * 1024 )) ]; then
        log "results.tar.gz over 15 MiB: leaving out the run database and the HTML report"
        tar -C "$RESULTS" --exclude='image_sets' --exclude='*.safetensors' --exclude='db' --exclude='*.html' \
            -czf "$tmp" . 2>/dev/null
    fi
    mv -f "$tmp" "$OUT/results.tar.gz"
}

# Servers our stages started run in their own sessions (they would outlive this command): stop them by pid.
# Only processes whose command line names our root (QWEN_DATA_DIR and the tests' data folder are under it).
stop_our_servers() {
    "${PYTHON:-python3}" - "$ROOT" <<'EOF' 2>/dev/null || true
import sys, psutil
root = sys.argv[1]
for p in psutil.process_iter(["pid", "cmdline"]):
    cmd = " ".join(p.info["cmdline"] or [])
    if ("tritonserver" in cmd or "triton_python_backend_stub" in cmd) and root in cmd:
        try:
            p.kill()
            print(f"[gpu_run] stopped leftover {p.pid}: {cmd[:120]}")
        except psutil.Error:
            pass
EOF
}
trap stop_our_servers EXIT

ensure_7b() {
    if [ -f "$CKPT_7B/build_info.json" ]; then return 0; fi
    log "the 7B checkpoint is not in $CKPT_7B: building it first"
    stage_build7b
}

stage_smoke() {
    bounded "$PYTHON" scripts/gpu_stages.py smoke --device "$DEVICE" --out "$RESULTS/smoke"
}

stage_tests() {
    mkdir -p "$RESULTS/tests"
    local files
    if [ -n "${GPU_TESTS:-}" ]; then
        read -r -a files <<< "$GPU_TESTS"
    else
        mapfile -t files < <(find tests -name 'test_gpu_*.py' -not -name 'test_gpu_results_page.py' \
            -not -name 'test_gpu_scripts.py' | sort)
    fi
    export QWEN_TEST_DATA_DIR=$ROOT/test-data  # the tests' own servers live under our root too
    log "pytest -m gpu on ${files[*]}"
    bounded "$PYTHON" -m pytest -m gpu -v -rA -p no:cacheprovider --junitxml="$RESULTS/tests/junit.xml" "${files[@]}"
    local rc=$?
    [ $rc -eq 5 ] && log "pytest collected no GPU test"
    return $rc
}

stage_build7b() {
    df -h "$(dirname "$CKPT_7B")" | tail -1
    bounded "$PYTHON" scripts/gpu_stages.py build7b --config "${QWEN_7B_CONFIG:-configs/qwen2-vl-7b.json}" \
        --out "$CKPT_7B" --device "$DEVICE" --json "$RESULTS/build7b/build7b.json"
}

stage_decode() {
    if [ ! -f scripts/bench_decode.py ]; then
        log "scripts/bench_decode.py does not exist yet: nothing to run"
        return 3
    fi
    mkdir -p "$RESULTS/decode"
    local rc=0
    if [ "${DECODE_DEMO:-1}" != 0 ]; then
        log "bench_decode on the demo detector"
        # shellcheck disable=SC2086
        bounded "$PYTHON" scripts/bench_decode.py --checkpoint models/demo-detector ${DECODE_ARGS:-} \
            --json "$RESULTS/decode/decode-demo.json" || rc=1
    fi
    ensure_7b || rc=1
    if [ -f "$CKPT_7B/build_info.json" ]; then
        log "bench_decode on the 7B checkpoint"
        # shellcheck disable=SC2086
        bounded "$PYTHON" scripts/bench_decode.py --checkpoint "$CKPT_7B" ${DECODE_ARGS:-} \
            --profile-dir "$RESULTS/decode/profiles" --json "$RESULTS/decode/decode-7b.json" || rc=1
    fi
    "$PYTHON" scripts/gpu_stages.py merge-json --out "$RESULTS/decode/decode.json" \
        "qwen2-vl-7b=$RESULTS/decode/decode-7b.json" "demo-detector=$RESULTS/decode/decode-demo.json"
    cp -f "$RESULTS/decode/decode.json" "$OUT/decode.json"
    return $rc
}

stage_kernels() {
    mkdir -p "$RESULTS/kernels"
    # shellcheck disable=SC2086
    bounded "$PYTHON" scripts/bench_fp8_linear.py ${KERNELS_ARGS:---sweep} --json "$RESULTS/kernels/kernels.json" \
        2>&1 | tee "$RESULTS/kernels/kernels.log"
    return "${PIPESTATUS[0]}"
}

stage_headline() {
    ensure_7b || return 1
    # shellcheck disable=SC2086
    MARGIN_S=5 bounded "$PYTHON" scripts/gpu_stages.py headline --checkpoint "$CKPT_7B" --device "$DEVICE" \
        --out "$RESULTS/headline" --deadline "$(( QWEN_GPU_DEADLINE - 15 ))" ${HEADLINE_ARGS:-}
}

stage_overhead() {
    mkdir -p "$RESULTS/overhead"
    local rc=0 device
    # A 1-token request never reaches a decode step: nothing to compile at load.
    for device in ${OVERHEAD_DEVICES:-cuda cpu}; do
        log "Triton overhead, engine on $device"
        QWEN_COMPILE_DECODE=0 bounded "$PYTHON" scripts/bench_triton_overhead.py --device "$device" \
            ${OVERHEAD_ARGS:-} > "$RESULTS/overhead/overhead_$device.log" 2>&1 || rc=$?
        grep -v '^{' "$RESULTS/overhead/overhead_$device.log" | grep -A40 '^checkpoint:'
        tail -1 "$RESULTS/overhead/overhead_$device.log" > "$RESULTS/overhead/overhead_$device.json"
    done
    return $rc
}

run_stage() {
    local name=$1 left t0 rc verdict
    left=$(left_s)
    if [ "$left" -lt "${NEED_S[$name]}" ]; then
        log "=== $name: SKIPPED: ${left} s left before the deadline, it needs about ${NEED_S[$name]} s"
        VERDICTS+=("$name SKIPPED (no time left)")
        printf '%s\t%s\t%s\n' "$name" "SKIPPED" "0 s" >> "$RESULTS/stages.tsv"
        return
    fi
    log "=== $name: start (${left} s left)"
    t0=$(date +%s)
    ( "stage_$name" ) 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    case $rc in 0) verdict=PASS ;; 3) verdict="SKIPPED" ;; 124) verdict="FAIL (out of time)" ;; *) verdict="FAIL (exit $rc)" ;; esac
    local dt=$(( $(date +%s) - t0 ))
    log "=== $name: $verdict in ${dt} s"
    VERDICTS+=("$name $verdict ${dt}s")
    printf '%s\t%s\t%s\n' "$name" "$verdict" "${dt} s" >> "$RESULTS/stages.tsv"
    stop_our_servers
    pack_results
}

log "stages: ${STAGES[*]}; deadline in $(left_s) s; OUT=$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || log "nvidia-smi failed"
df -h /tmp /dev/shm 2>/dev/null | sed 's/^/[gpu_run] /'
# shellcheck source=scripts/gpu_env.sh
source "${QWEN_GPU_ENV_SCRIPT:-scripts/gpu_env.sh}" > "$OUT/env.log" 2>&1
ENV_RC=$?
cat "$OUT/env.log"
cp -f "$ROOT/env.json" "$RESULTS/env.json" 2>/dev/null
if [ -z "${PYTHON:-}" ] || [ ! -x "${PYTHON:-/nonexistent}" ]; then
    log "FAIL: the environment could not be made (see env.log): no stage can run"
    printf '%s\t%s\t%s\n' env FAIL "$(( $(date +%s) - T_START )) s" >> "$RESULTS/stages.tsv"
    pack_results
    exit 1
fi
[ $ENV_RC -eq 0 ] || log "WARNING: the environment is incomplete (see above); running the stages anyway"
printf '%s\t%s\t%s\n' env "$([ $ENV_RC -eq 0 ] && echo PASS || echo 'FAIL (incomplete)')" "$(( $(date +%s) - T_START )) s" >> "$RESULTS/stages.tsv"

for s in "${STAGES[@]}"; do
    run_stage "$s"
done
"$PYTHON" scripts/gpu_results_page.py --results "$RESULTS" --out "$RESULTS/gpu-results.md" || log "results page failed"
pack_results
log "summary (total $(( $(date +%s) - T_START )) s):"
for v in "${VERDICTS[@]}"; do log "  $v"; done
ls -la "$OUT" | sed 's/^/[gpu_run] /'
for v in "${VERDICTS[@]}"; do case "$v" in *FAIL*) exit 1 ;; esac; done
exit 0
