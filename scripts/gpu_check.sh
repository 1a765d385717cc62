#!/usr/bin/env bash
# One prepared run of the CUDA paths, for a machine with an NVIDIA GPU. Results land in
# results/gpu-cuda-check/ with the GPU's name, driver and versions on every row.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv
.venv/bin/harness env --device cuda
out=results/gpu-cuda-check
mkdir -p "$out"
# the fused dequantize + matmul kernel, for real this time (CPU CI runs it interpreted)
.venv/bin/python -m pytest -q tests/quant/test_triton_kernel.py 2>&1 | tee "$out/triton-kernel-tests.txt"
.venv/bin/python benchmarks/quant_matmul.py --out "$out/quant_matmul.json"
.venv/bin/harness run experiments/gpu/cuda-check.yaml "$@"
