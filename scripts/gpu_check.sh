#!/usr/bin/env bash
# One prepared run of the CUDA paths, for a machine with an NVIDIA GPU. Results land in
# results/gpu-cuda-check/ with the GPU's name, driver and versions on every row.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv
.venv/bin/harness env --device cuda
.venv/bin/harness run experiments/gpu/cuda-check.yaml "$@"
