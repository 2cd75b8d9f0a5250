# shellcheck shell=bash
# The Python environment of the GPU run, made ON the GPU machine from the carried bundle.
#
#     source scripts/gpu_env.sh        # from the repository root; scripts/gpu_run.sh does this
#
# Needs carry/gpu/ (made on the development machine by `.venv/bin/python scripts/gpu_bundle.py`; the
# device call names "carry/gpu" in `carry`). It follows the recipe that ran the embedded Triton there
# (shared/docs/gpu-notes.md):
#
#   1. a virtualenv from the machine's python3 (the one holding torch; no pip needed in it);
#   2. the carried cp312 packages (numpy 1.26.4 for the Triton stub, tritonclient and its HTTP/gRPC
#      stack, torchao, plotly) unpacked into its own site-packages, so they come first;
#   3. the Triton server parts of nvidia-pytriton unpacked there too, as the wheel lays them out
#      (site-packages/pytriton/tritonserver/..., site-packages/nvidia_pytriton.libs/), which is where
#      services.serving.embedded_triton.TritonDistribution.locate looks;
#   4. a .pth file that appends the machine's site-packages (torch, transformers, pandas, ...) after
#      them, with site.addsitedir so that their own .pth files are honoured;
#   5. LD_LIBRARY_PATH = python's sysconfig LIBDIR (its libpython3.12, which the stub links) then
#      nvidia_pytriton.libs; the virtualenv's bin first on PATH (the stub finds python3 there);
#   4b. the machine's packages that need numpy 2 (QWEN_GPU_HIDDEN_PACKAGES, default "scipy sklearn":
#      scipy's import fails on numpy 1.26 with "module 'numpy' has no attribute 'long'") are hidden
#      from imports by a .pth hook, so that transformers, which imports scikit-learn in its generation
#      code whenever it is installed, sees them as absent (the project uses neither);
#   6. QWEN_DATA_DIR, LABEL_FONT_DIR (the carried DejaVu fonts), HF_HUB_OFFLINE=1,
#      TRANSFORMERS_OFFLINE=1, PYTHONUNBUFFERED=1, TOKENIZERS_PARALLELISM=false, PYTHONPATH=repo.
#
# Then it prints the versions (python, torch, transformers, numpy, torchao, tritonclient, ...) and
# nvidia-smi's GPU and driver, and checks that the stub and the server find all their libraries.
# A virtualenv made from the same bundle is reused (a warm machine). Sets PYTHON (the virtualenv's
# python3), QWEN_GPU_ROOT, QWEN_GPU_SITE and QWEN_GPU_ENV_OK=1; returns non-zero, saying why, on failure.
#
# Reads: QWEN_GPU_ROOT (default /tmp/qwen-gpu), QWEN_GPU_BUNDLE (default carry/gpu), QWEN_BASE_PYTHON
# (default: python3 on PATH).

_genv_log() { echo "[gpu_env] $*"; }
_genv_fail() { echo "[gpu_env] ERROR: $*" >&2; return 1; }
# unpack a .tar.xz with tar + xz, or with Python's tarfile where the xz program is missing
_genv_untar() {
    if command -v xz >/dev/null 2>&1; then
        tar -xJf "$1" -C "$2"
    else
        "$3" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="fully_trusted")' "$1" "$2"
    fi
}

# Hide packages of the machine's site-packages from every import in the virtualenv (the Triton stubs
# included): a .pth hook puts a PathFinder first on sys.meta_path that answers "not found" for them, so
# importlib.util.find_spec (transformers' is_sklearn_available, is_scipy_available) returns None.
# Written on every source, so that a reused virtualenv follows the current list.
_genv_hide_packages() {
    local site=$1 names=$2
    cat > "$site/qwen_hide_packages.py" <<EOF
"""Written by scripts/gpu_env.sh: the machine's packages that cannot run with the carried numpy 1.26
are hidden from imports (find_spec answers None), so that optional imports skip them."""
import importlib.machinery
import sys

HIDDEN = frozenset("$names".split())


class HidingPathFinder(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(fullname, path, target)


if HIDDEN:
    sys.meta_path[:] = [HidingPathFinder if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
EOF
    echo "import qwen_hide_packages" > "$site/aa_qwen_hide_packages.pth"
    [ -n "$names" ] && _genv_log "hidden from imports (they need numpy 2): $names"
    return 0
}

qwen_gpu_env() {
    local repo bundle root venv base stamp site torch_site libdir f t0 missing found extra_sites
    t0=$(date +%s)
    repo=$(pwd)
    bundle=${QWEN_GPU_BUNDLE:-$repo/carry/gpu}
    root=${QWEN_GPU_ROOT:-/tmp/qwen-gpu}
    venv=$root/venv
    if [ ! -f "$repo/services/serving/embedded_triton.py" ]; then
        _genv_fail "run from the repository root (no services/serving/embedded_triton.py in $repo)"; return 1
    fi
    for f in MANIFEST.json tritonserver.tar.xz site312.tar.xz fonts.tar.xz; do
        [ -f "$bundle/$f" ] || { _genv_fail "missing $bundle/$f: run '.venv/bin/python scripts/gpu_bundle.py' on the development machine and name \"carry/gpu\" in the device call's carry"; return 1; }
    done
    mkdir -p "$root" || { _genv_fail "cannot create $root"; return 1; }

    # the machine's python3 (never our own virtualenv's, when sourced twice)
    base=${QWEN_BASE_PYTHON:-}
    if [ -z "$base" ] && [ -f "$root/base-python" ]; then base=$(cat "$root/base-python"); fi
    if [ -z "$base" ]; then base=$(command -v python3) || { _genv_fail "no python3 on PATH"; return 1; }; fi
    case "$base" in "$venv"/*) _genv_fail "QWEN_BASE_PYTHON points into $venv"; return 1 ;; esac
    "$base" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
        || { _genv_fail "$base is not Python 3.12: the carried stub and packages are for 3.12"; return 1; }
    echo "$base" > "$root/base-python"
    torch_site=$("$base" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))') \
        || { _genv_fail "$base cannot import torch"; return 1; }
    # every site folder the machine's python3 itself sees, in its order (torch's is put first)
    extra_sites=$("$base" -c 'import sys; print("\n".join(p for p in dict.fromkeys(sys.path) if p.endswith(("site-packages", "dist-packages"))))')
    _genv_log "machine python: $base ($("$base" -c 'import sys; print(sys.version.split()[0])')); torch in $torch_site"

    stamp="$(sha256sum "$bundle/MANIFEST.json" | cut -c1-16):$torch_site"
    if [ -x "$venv/bin/python3" ] && [ "$(cat "$venv/.qwen-bundle" 2>/dev/null)" = "$stamp" ]; then
        _genv_log "reusing $venv (made from this bundle)"
    else
        rm -rf "$venv"
        _genv_log "making the virtualenv $venv"
        if ! "$base" -m venv --without-pip "$venv" 2>"$root/venv.err"; then
            _genv_log "python -m venv failed ($(tail -1 "$root/venv.err")); making it by hand"
            local real home ver
            real=$("$base" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))')
            home=$(dirname "$real")
            ver=$("$base" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')
            mkdir -p "$venv/bin" "$venv/lib/python3.12/site-packages" || return 1
            ln -sf "$real" "$venv/bin/python3"
            ln -sf python3 "$venv/bin/python"
            printf 'home = %s\ninclude-system-site-packages = false\nversion = %s\n' "$home" "$ver" > "$venv/pyvenv.cfg"
        fi
        site=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
            || { _genv_fail "the new virtualenv's python does not run"; return 1; }
        _genv_log "unpacking the carried packages and the Triton server into $site"
        _genv_untar "$bundle/site312.tar.xz" "$site" "$base" || { _genv_fail "unpacking site312.tar.xz failed"; return 1; }
        _genv_untar "$bundle/tritonserver.tar.xz" "$site" "$base" || { _genv_fail "unpacking tritonserver.tar.xz failed"; return 1; }
        {
            echo "import site; site.addsitedir('$torch_site')"
            while IFS= read -r f; do
                [ -n "$f" ] && [ "$f" != "$torch_site" ] && [ -d "$f" ] && echo "import site; site.addsitedir('$f')"
            done <<< "$extra_sites"
        } > "$site/zz_qwen_machine_site.pth"
        mkdir -p "$root/fonts" && _genv_untar "$bundle/fonts.tar.xz" "$root/fonts" "$base" \
            || { _genv_fail "unpacking fonts.tar.xz failed"; return 1; }
        echo "$stamp" > "$venv/.qwen-bundle"
    fi
    site=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
    _genv_hide_packages "$site" "${QWEN_GPU_HIDDEN_PACKAGES-scipy sklearn}" || return 1
    libdir=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')

    export QWEN_GPU_ROOT=$root QWEN_GPU_SITE=$site PYTHON=$venv/bin/python3
    export PATH="$venv/bin:$PATH"
    export LD_LIBRARY_PATH="$libdir:$site/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export QWEN_DATA_DIR=${QWEN_DATA_DIR:-$root/data}
    export LABEL_FONT_DIR=$root/fonts
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
    mkdir -p "$QWEN_DATA_DIR"

    # the stub links libpython3.12: it must be found (LIBDIR first), or no model can load
    local stub=$site/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub
    local server=$site/pytriton/tritonserver/bin/tritonserver
    for f in "$stub" "$server"; do
        [ -x "$f" ] || { _genv_fail "$f is missing or not executable"; return 1; }
        missing=$(ldd "$f" 2>&1 | grep "not found" || true)
        if [ -n "$missing" ]; then
            _genv_log "WARNING: $(basename "$f") lacks: $missing"
            if echo "$missing" | grep -q libpython3.12; then
                found=$(find / -xdev -name 'libpython3.12.so.1.0' -not -path '*/proc/*' 2>/dev/null | head -1)
                if [ -n "$found" ]; then
                    _genv_log "found $found: putting $(dirname "$found") first on LD_LIBRARY_PATH"
                    export LD_LIBRARY_PATH="$(dirname "$found"):$LD_LIBRARY_PATH"
                else
                    _genv_fail "no libpython3.12.so.1.0 on this machine: the Triton Python stub cannot run"; return 1
                fi
            fi
        fi
    done
    _genv_log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    _genv_log "PATH starts with $venv/bin; QWEN_DATA_DIR=$QWEN_DATA_DIR; LABEL_FONT_DIR=$LABEL_FONT_DIR"
    "$PYTHON" -c 'from services.serving.embedded_triton import TritonDistribution as T; d = T.locate(); print("[gpu_env] Triton server:", d.server); print("[gpu_env] stub:", d.stub)' \
        || { _genv_fail "services.serving.embedded_triton cannot locate the carried Triton server"; return 1; }
    "$PYTHON" scripts/gpu_stages.py envinfo --json "$root/env.json" || { _genv_fail "a package the run needs does not import (see above)"; return 1; }
    "$PYTHON" -c 'import services.bench.runner, services.compare.report, services.client.triton_client, services.bench.sampler, services.serving.engine' \
        || { _genv_fail "the project's services do not import in this environment"; return 1; }
    # transformers imports lazily: ask for what the engine uses, so that a broken optional dependency
    # shows here with its real cause rather than as "Could not import module 'AutoTokenizer'" in a stub
    "$PYTHON" -c 'import transformers.generation.utils, transformers.models.qwen2_vl.modeling_qwen2_vl
from transformers import AutoTokenizer, AutoProcessor, GenerationMixin, Qwen2VLForConditionalGeneration' \
        || { _genv_fail "transformers' model and tokenizer classes do not import in this environment"; return 1; }
    export QWEN_GPU_ENV_OK=1
    _genv_log "ready in $(( $(date +%s) - t0 )) s"
}

qwen_gpu_env
