#!/usr/bin/env bash
# The GPU check in one command: set-up, then tools/synthesize.py and a DFBF distillation step on
# YOLOX-s and ResNet-50 at their config sizes, and one shipped detection config end to end (train
# with its val loop and export, then the stock mmdet tools/test.py of the export). Prints a table
# (teacher passes/s, images/s, step time, peak GPU memory, evaluation ok) and writes it to a file.
# What each row measures: tools/benchmarks/gpu_check.py. What runs where: docs/gpu.md.
#
#   tools/gpu_check.sh [--device cuda|cpu] [--quick] [--out FILE] [--python PY] [--wheelhouse DIR]
#                      [-- more arguments of tools/benchmarks/gpu_check.py]
#
# --device cpu runs the same rows on the CPU (small sizes: --quick is implied there).
#
# Set-up (nothing here downloads unless pip is given an index to reach):
#   default              tools/setup_env.sh with DFBF_WHEELHOUSE=${DFBF_WHEELHOUSE:-../shared/wheels}:
#                        .venv with the pinned stack (skipped when .venv imports it). The mmcv
#                        wheel comes from the wheelhouse; torch 2.14.1, torchvision 0.29.1 and the
#                        mm packages from pip's index. Without network, pip needs all of them as
#                        files: PIP_FIND_LINKS=DIR PIP_NO_INDEX=1 (torch's CUDA wheels: several GB).
#   --python PY          use PY as it is (an interpreter whose torch sees the GPU and that imports
#                        mmcv 2.1.0 with compiled ops, mmdet, mmpretrain, mmpose, torch_pruning).
#   --python PY --wheelhouse DIR
#                        offline, on top of PY's torch: .venv-gpu (--system-site-packages) gets
#                        every wheel in DIR (--no-index --no-deps), and mmcv 2.1.0 from DIR's wheel
#                        for that Python, else built from DIR/mmcv-2.1.0.tar.gz with its ops
#                        (FORCE_CUDA=1 where nvcc is present builds the CUDA ops too: much longer).
#                        docs/gpu.md lists what DIR must hold.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda; PY=""; WHEELHOUSE=""; OUT=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) EXTRA+=(--quick); shift ;;
    --out) OUT=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
    --) shift; EXTRA+=("$@"); break ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "[gpu_check] $1: unknown argument (see tools/gpu_check.sh --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cuda:*|cpu) ;; *) echo "[gpu_check] --device $DEVICE: allowed are cuda, cuda:N and cpu" >&2; exit 2 ;; esac
[ -z "$WHEELHOUSE" ] || [ -n "$PY" ] || { echo "[gpu_check] --wheelhouse needs --python (the interpreter whose torch to build on)" >&2; exit 2; }
start=$(date +%s)
log() { printf '[gpu_check] %s\n' "$*"; }

STACK_CHECK='import torch, mmcv, mmcv._ext, mmdet, mmpretrain, mmpose, torch_pruning; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}")'

if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || { echo "[gpu_check] --wheelhouse $WHEELHOUSE: no such folder" >&2; exit 2; }
  VENV=.venv-gpu
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV on $("$PY" --version) with its site-packages (its torch)"
    "$PY" -m venv --system-site-packages "$VENV"
  fi
  pip_off() { "$VENV/bin/python" -m pip --disable-pip-version-check install -q --no-index --no-deps "$@"; }
  wheels=$(ls "$WHEELHOUSE"/*.whl 2>/dev/null | grep -v '/mmcv-' || true)
  [ -z "$wheels" ] || { log "installing $(echo "$wheels" | wc -l) wheels from $WHEELHOUSE"; pip_off $wheels; }
  if ! "$VENV/bin/python" -c 'import mmcv, mmcv._ext; assert mmcv.__version__ == "2.1.0"' 2>/dev/null; then
    tag=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    wheel=$(ls "$WHEELHOUSE"/mmcv-2.1.0-"$tag"-*.whl 2>/dev/null | head -n1 || true)
    if [ -n "$wheel" ]; then
      log "installing $wheel"; pip_off "$wheel"
    elif [ -f "$WHEELHOUSE/mmcv-2.1.0.tar.gz" ]; then
      build=$(mktemp -d)
      tar -xzf "$WHEELHOUSE/mmcv-2.1.0.tar.gz" -C "$build"
      log "building mmcv 2.1.0 with its ops against $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)') (FORCE_CUDA=${FORCE_CUDA:-0}, $(nproc) jobs; log $build/build.log)"
      ( cd "$build/mmcv-2.1.0" && MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} MAX_JOBS=$(nproc) \
          "$OLDPWD/$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation --no-index -w dist . ) \
        > "$build/build.log" 2>&1 || { tail -n 20 "$build/build.log" >&2; echo "[gpu_check] mmcv build failed (log $build/build.log)" >&2; exit 1; }
      pip_off "$build"/mmcv-2.1.0/dist/mmcv-2.1.0-*.whl
    else
      echo "[gpu_check] --wheelhouse $WHEELHOUSE: no mmcv-2.1.0-$tag-*.whl and no mmcv-2.1.0.tar.gz to build one from" >&2; exit 1
    fi
  fi
  PY=$VENV/bin/python  # dfbf_mm itself is read from this checkout (PYTHONPATH below)
elif [ -z "$PY" ] && [ -f .venv/.dfbf_stack_stamp ] && .venv/bin/python -c "$STACK_CHECK" >/dev/null 2>&1; then
  log "set-up: .venv already holds the stack (tools/setup_env.sh not rerun)"
  PY=.venv/bin/python
elif [ -z "$PY" ]; then
  export DFBF_WHEELHOUSE=${DFBF_WHEELHOUSE:-../shared/wheels}
  log "set-up: tools/setup_env.sh (DFBF_WHEELHOUSE=$DFBF_WHEELHOUSE)"
  if ! bash tools/setup_env.sh; then
    echo "[gpu_check] set-up failed: tools/setup_env.sh needs pip to reach a package index, or every wheel as a file (PIP_FIND_LINKS=DIR PIP_NO_INDEX=1); without either, use --python PY [--wheelhouse DIR] (docs/gpu.md)" >&2
    exit 1
  fi
  PY=.venv/bin/python
fi

versions=$("$PY" -c "$STACK_CHECK" 2>&1) || { echo "[gpu_check] $PY cannot import the stack: $(echo "$versions" | tail -n1)" >&2; exit 1; }
log "stack: $PY ($versions), set-up $(( $(date +%s) - start )) s"
if [ "$DEVICE" != cpu ]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "[gpu_check] --device $DEVICE: torch sees no CUDA device here; use --device cpu" >&2; exit 1; }
fi

args=(--device "$DEVICE")
[ -z "$OUT" ] || args+=(--out "$OUT")
rc=0
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m tools.benchmarks.gpu_check "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"} || rc=$?
log "done in $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
