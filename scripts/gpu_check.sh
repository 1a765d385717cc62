#!/usr/bin/env bash
# One prepared run of the CUDA paths on a GPU machine, short enough for a brief loan of one.
#
#   scripts/gpu_check.sh [OUT_DIR] [extra `harness run` options, e.g. --only '*nf4*']
#
# Steps (each logged to OUT_DIR/<step>.txt, outcome in OUT_DIR/steps.txt; a failed step does
# not stop the others): the environment as recorded with results; the fused Triton kernel's
# tests on CUDA; benchmarks/quant_matmul.py; the matrix experiments/gpu/offline-check.yaml into
# results/gpu-offline-check/. When OUT_DIR is elsewhere, the cell records travel back in it as
# cells.tgz (unpack with `tar xzf cells.tgz -C results`) next to results.csv.
#
# A machine with no package index but a preinstalled PyTorch stack: run scripts/gpu_wheels.sh
# where pip works and bring .whl/ along; they are installed into /tmp/site here. A machine with
# network: `make venv`, then `PYTHON=.venv/bin/python scripts/gpu_check.sh`.
# DEVICE=cpu runs the same plumbing without a GPU (a dry run of this script).
set -uo pipefail
cd "$(dirname "$0")/.."
results=results/gpu-offline-check
out="${1:-$results}"
shift $(($# > 0 ? 1 : 0))
device="${DEVICE:-cuda}"
py="${PYTHON:-python3}"
mkdir -p "$out"
: >"$out/steps.txt"

if [[ -z "${PYTHON:-}" && -d .whl ]]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

status=0
step() {
  local name=$1
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc" | tee -a "$out/steps.txt"
  [[ $rc == 0 ]] || status=1
}

step env "$py" -m harness env --device "$device"
step kernel-tests "$py" -m pytest -q -p no:cacheprovider tests/quant/test_triton_kernel.py
step kernel-bench "$py" benchmarks/quant_matmul.py --out "$out/quant_matmul.json"
step matrix "$py" -m harness run experiments/gpu/offline-check.yaml \
  --device "$device" --out "$results" "$@"

if [[ "$(realpath -m "$out")" != "$(realpath -m "$results")" && -d "$results/cells" ]]; then
  tar czf "$out/cells.tgz" -C results gpu-offline-check/cells
  cp "$results/results.csv" "$out/" 2>/dev/null
fi
exit $status
