#!/usr/bin/env bash
# The main job (README): set up if needed, then the paper's study on the embedded procedural
# multi-task dataset, 3 seeds two at a time (baseline -> taylor and cosine iterative pruning -> re-initialised
# retraining and the from-scratch control
# -> report over seeds) in runs/study. Extra arguments go to `mtlkernels study` (e.g. --preset paper).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec python -m mtlkernels study --out "${MTL_OUT:-runs/study}" "$@"
