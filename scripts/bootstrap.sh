#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a virtual environment in .venv, torch, the dev packages,
# and mtlkernels._C built against that torch (--no-build-isolation). Re-running rebuilds only when
# csrc/ or setup.py changed. Sourced by scripts/test.sh and scripts/main.sh.
#
# torch: on a machine without an NVIDIA GPU this installs the CPU wheel torch==2.13.0 (never the
# multi-GB CUDA build); set MTL_TORCH to another requirement (e.g. "torch==2.13.0" from a CUDA
# index) to choose yourself.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
VENV=${MTL_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pipq() { "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "[bootstrap] installing ${MTL_TORCH:-torch==2.13.0}"
  pipq "${MTL_TORCH:-torch==2.13.0}"
  "$VPY" -c "import torch" || { echo "[bootstrap] torch failed to install"; exit 1; }
fi
if ! "$VPY" -c "import triton, numpy, ninja, pytest, pytest_benchmark, hypothesis, tqdm, matplotlib, scipy" 2>/dev/null; then
  echo "[bootstrap] installing requirements-dev.txt"
  pipq -r requirements-dev.txt
fi
"$VPY" -c "import torch_pruning" 2>/dev/null || pipq --no-deps "torch-pruning==1.6.1"  # interop test; --no-deps: never another torch
# Rebuild the extension when its sources changed (or it does not load).
stamp="$VENV/.mtl_build_stamp"
hash=$(cat setup.py $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ] || ! "$VPY" -W error -c "import mtlkernels._C" 2>/dev/null; then
  echo "[bootstrap] building mtlkernels._C (C++ CPU kernels; CUDA when torch has CUDA) ..."
  t0=$(date +%s)
  if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VPY" -m pip install --no-build-isolation --no-deps -e . > "$VENV/mtl_build.log" 2>&1; then
    tail -40 "$VENV/mtl_build.log"; echo "[bootstrap] build failed (log: $VENV/mtl_build.log)"; exit 1
  fi
  grep "mtlkernels build" "$VENV/mtl_build.log" || true
  echo "$hash" > "$stamp"
  echo "[bootstrap] built in $(( $(date +%s) - t0 )) s"
fi
"$VPY" -c "import mtlkernels; print('[bootstrap] mtlkernels', mtlkernels.__version__, 'backends on cpu:', mtlkernels.available_backends('cpu'))"
export PATH="$VENV/bin:$PATH"
