#!/bin/bash
# Offline bundle for benchmarks/gpu_check.py on a GPU host without a package index.
#
#   scripts/make_gpu_bundle.sh OUT_DIR [OFFICIAL_MEANFLOW_GIT_DIR]
#
# On a machine with network: downloads the wheels the check needs beyond what a jax[cuda] host
# already has (jax, jaxlib, the CUDA plugin, flax, optax, orbax, numpy), for Linux x86-64 and this
# Python version, and copies the official MeanFlow code the check times (meanflow.py and models/,
# from a git directory of Gsunshine/meanflow, or cloned when none is given). On the GPU host:
#
#   pip install --no-index --find-links=OUT_DIR/wheels -r OUT_DIR/requirements-gpu-check.txt
#   python -m benchmarks.gpu_check --out=/tmp/gpu_check --official=OUT_DIR/official_meanflow
#
# TensorFlow is not needed: the trainer writes TensorBoard files with the tensorboard package alone.
set -euo pipefail
OUT=${1:?usage: scripts/make_gpu_bundle.sh OUT_DIR [OFFICIAL_MEANFLOW_GIT_DIR]}
OFFICIAL_GIT=${2:-}
OFFICIAL_COMMIT=d70cb55d298ee03c53bf6da67bec281082e4e2d9  # benchmarks/official_step_flops.py
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
PYVER=$($PY -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
mkdir -p "$OUT/wheels"

# requirements.txt minus what a jax[cuda] host has and what the check does not use (TensorFlow,
# TFDS, CLU: the trainer runs without them; matplotlib: studies only).
grep -v -E '^\s*(#|$)' "$ROOT/requirements.txt" | sed 's/\s*#.*//' \
  | grep -v -E '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|tensorflow-cpu|tensorflow-datasets|clu|matplotlib)==' \
  > "$OUT/requirements-gpu-check.txt"
grep -E '^pytest==' "$ROOT/requirements-dev.txt" >> "$OUT/requirements-gpu-check.txt"
echo "requirements: $(tr '\n' ' ' < "$OUT/requirements-gpu-check.txt")"

$PY -m pip download --dest "$OUT/wheels" --only-binary=:all: --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --python-version "$PYVER" \
  -r "$OUT/requirements-gpu-check.txt"

# The official code, at the commit the benchmarks name.
mkdir -p "$OUT/official_meanflow"
if [ -z "$OFFICIAL_GIT" ]; then
  OFFICIAL_GIT="$OUT/meanflow.git"
  [ -d "$OFFICIAL_GIT" ] || git clone --bare https://github.com/Gsunshine/meanflow "$OFFICIAL_GIT"
fi
git --git-dir="$OFFICIAL_GIT" archive "$OFFICIAL_COMMIT" meanflow.py models \
  | tar -x -C "$OUT/official_meanflow"
echo "bundle: $OUT ($(ls "$OUT/wheels" | wc -l) wheels, official code at $OFFICIAL_COMMIT)"
