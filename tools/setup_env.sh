#!/usr/bin/env bash
# Creates .venv (if missing) and installs the pinned OpenMMLab stack plus dfbf_mm, CPU only.
# A second run is a no-op unless a requirement file changed (stamp = hash of the inputs).
#
# DFBF_STACK=torch2.1 builds the second, oldest tested stack instead, in .venv-torch2.1:
# torch 2.1.2 + torchvision 0.16.2 + numpy<1.25 + mmcv 2.1.0 (wheel from <wheelhouse>/torch2.1/,
# else the unpatched sdist built once and cached) + the same mm packages + mmdeploy 1.3.1
# (requirements/stack-torch2.1.txt).
#
# mmcv 2.1.0 ships no wheel for torch 2.14 and its sdist hard-codes -std=c++17, which torch
# 2.14's headers reject. We take mmcv from a wheelhouse when one is given (DFBF_WHEELHOUSE, or
# PIP_FIND_LINKS), else from the per-user wheel cache, else build it once from the sdist with the
# flag patched to -std=c++20 and keep the wheel in the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=${DFBF_STACK:-pinned}
case "$STACK" in
  pinned)   VENV=${VENV:-.venv}; TORCH=2.14.1; TORCHVISION=0.29.1; NUMPY='numpy<2'
            WHEEL_SUB=''; EXTRA_REQ='' ;;
  torch2.1) VENV=${VENV:-.venv-torch2.1}; TORCH=2.1.2; TORCHVISION=0.16.2; NUMPY='numpy<1.25'
            WHEEL_SUB=torch2.1; EXTRA_REQ=requirements/stack-torch2.1.txt ;;
  *) echo "[setup] DFBF_STACK=$STACK: allowed are pinned (the default) and torch2.1" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
WHEEL_CACHE=${DFBF_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dfbf_mm/wheels}
# mmcv wheels of both stacks share one file name: the torch 2.1 one lives in a sub-folder
sub() { echo "$1${WHEEL_SUB:+/$WHEEL_SUB}"; }
WHEEL_CACHE=$(sub "$WHEEL_CACHE")
VENV_ABS=$(realpath -m "$VENV")
PIP="pip_quiet"
# This machine's pip config lists file:// indexes that do not all exist; hide that noise only.
pip_quiet() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" > >(grep -v 'is ignored: it is neither' >&2) 2>&1; }

stamp_inputs="requirements/stack.txt $EXTRA_REQ tools/setup_env.sh setup.py"
stamp_value=$(cat $stamp_inputs | sha256sum | cut -c1-16)
stamp_file="$VENV/.dfbf_stack_stamp"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_value" ]; then
  exit 0  # everything already installed for these requirement files
fi

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi

log "installing torch $TORCH + torchvision $TORCHVISION, $NUMPY, setuptools<81"
$PIP install -q "setuptools<81" wheel "$NUMPY" torch==$TORCH torchvision==$TORCHVISION

have_mmcv_ops() { "$VENV/bin/python" -c "import mmcv, mmcv._ext; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; }

find_wheel() {  # $1 = folder; prints the mmcv 2.1.0 cp311 wheel in it, if any
  [ -d "$1" ] || return 0
  local f
  for f in "$1"/mmcv-2.1.0-cp311-*.whl; do [ -f "$f" ] && { echo "$f"; return 0; }; done
  return 0
}

if have_mmcv_ops; then
  log "mmcv 2.1.0 with compiled ops already installed"
else
  wheel=""
  for wh in ${DFBF_WHEELHOUSE:-} ${PIP_FIND_LINKS:-} "$WHEEL_CACHE"; do
    wheel=$(find_wheel "$(sub "$wh")")
    [ -n "$wheel" ] && break
  done
  if [ -z "$wheel" ]; then
    log "no mmcv 2.1.0 wheel in a wheelhouse (DFBF_WHEELHOUSE) or in $WHEEL_CACHE:"
    log "building it from the sdist with its CPU ops (for torch 2.14: -std=c++17 patched to c++20)."
    log "This takes about 20 minutes on 2 cores, once per machine; the wheel is cached."
    build=$(mktemp -d)
    $PIP download -q --no-deps --no-binary :all: --no-build-isolation -d "$build" mmcv==2.1.0
    tar -xzf "$build"/mmcv-2.1.0.tar.gz -C "$build"
    if [ "$STACK" = pinned ]; then  # torch 2.1's headers take the sdist's c++17 as it is
      sed -i 's/-std=c++17/-std=c++20/g' "$build"/mmcv-2.1.0/setup.py
      grep -q -- '-std=c++20' "$build"/mmcv-2.1.0/setup.py || { echo "[setup] mmcv setup.py: -std flag not found to patch" >&2; exit 1; }
    fi
    start=$(date +%s)
    $PIP install -q ninja  # parallel compile (MAX_JOBS) and [n/N] progress lines
    build_log="$build/build.log"
    log "full build log: $build_log"
    ( cd "$build/mmcv-2.1.0" && PATH="$VENV_ABS/bin:$PATH" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$(nproc) \
        "$VENV_ABS/bin/python" -m pip wheel -v --no-deps --no-build-isolation -w "$build/dist" . ) \
      > "$build_log" 2>&1 &
    pid=$!
    src="$build/mmcv-2.1.0/mmcv/ops/csrc/pytorch"
    total=$(ls "$src"/*.cpp "$src"/cpu/*.cpp | wc -l)
    while kill -0 "$pid" 2>/dev/null; do  # a progress line a minute (ninja buffers its own)
      sleep 60
      done_objs=$(find "$build/mmcv-2.1.0/build" -name '*.o' 2>/dev/null | wc -l)
      log "mmcv build: $(( ($(date +%s) - start) / 60 )) min, $done_objs of about $total sources compiled"
    done
    if ! wait "$pid"; then
      tail -n 30 "$build_log" >&2
      echo "[setup] mmcv source build failed (log above, full log: $build_log)" >&2
      exit 1
    fi
    mkdir -p "$WHEEL_CACHE"
    cp "$build"/dist/mmcv-2.1.0-*.whl "$WHEEL_CACHE"/
    wheel=$(find_wheel "$WHEEL_CACHE")
    log "mmcv wheel built in $(( $(date +%s) - start )) s and cached as $wheel"
    rm -rf "$build"
  fi
  log "installing $wheel"
  $PIP install -q --no-deps "$wheel"
fi

log "installing mmengine, mmdet, mmpretrain, mmpose (without chumpy), torch-pruning and tools"
# Give the resolver the installed mmcv so it never fetches another one.
$PIP install -q -r requirements/stack.txt "mmcv==2.1.0" torch==$TORCH torchvision==$TORCHVISION "$NUMPY"
$PIP install -q --no-deps mmpose==1.3.2
if [ -n "$EXTRA_REQ" ]; then
  log "installing $EXTRA_REQ"
  $PIP install -q -r "$EXTRA_REQ" "mmcv==2.1.0" torch==$TORCH torchvision==$TORCHVISION "$NUMPY"
  no_deps=$(sed -n 's/^# no-deps: //p' "$EXTRA_REQ")  # packages whose own pins would pull numpy 2 etc.
  [ -z "$no_deps" ] || $PIP install -q --no-deps $no_deps
fi
$PIP install -q --no-deps --no-build-isolation -e .

log "checking the stack"
DFBF_STACK=$STACK "$VENV/bin/python" - <<'PY'
import importlib, os, sys
checks = [
    ("mmcv._ext", "mmcv's compiled ops are missing: reinstall mmcv 2.1.0 from the wheelhouse or let tools/setup_env.sh build it"),
    ("mmdet.models", "mmdet 3.3.0 failed to import"),
    ("mmpose.models", "mmpose 1.3.2 failed to import (installed with --no-deps: a missing dependency of it?)"),
    ("mmpretrain.models", "mmpretrain 1.2.0 failed to import"),
    ("torch_pruning", "torch-pruning failed to import"),
    ("dfbf_mm", "the dfbf_mm package failed to import"),
]
if os.environ["DFBF_STACK"] == "torch2.1":
    checks.append(("mmdeploy.apis", "mmdeploy 1.3.1 failed to import (requirements/stack-torch2.1.txt)"))
for mod, fix in checks:
    try:
        importlib.import_module(mod)
    except Exception as e:  # name the package and the fix
        sys.exit(f"[setup] import {mod} failed: {type(e).__name__}: {e}. Fix: {fix}")
import torch
from mmcv.ops import nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
print("[setup] ok: mmcv ops (nms on CPU), mmdet, mmpose, mmpretrain, torch-pruning, dfbf_mm")
PY
echo "$stamp_value" > "$stamp_file"
