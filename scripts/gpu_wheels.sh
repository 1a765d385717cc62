#!/usr/bin/env bash
# Download the wheels a GPU machine without network access needs beyond its preinstalled
# PyTorch stack (pydantic, bitsandbytes) into .whl/ (git-ignored). scripts/gpu_check.sh
# installs them there with --no-index. The builtin model cannot travel this way (its GGUF file
# is larger than what such a machine is sent), so the offline check uses a synthetic model.
#
# Usage: scripts/gpu_wheels.sh [PYTHON_VERSION]   (the GPU machine's Python, default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
pyver="${1:-3.12}"
packages=(
  "bitsandbytes==0.50.2"
  "pydantic==2.14.4"
  "pydantic-core==2.50.5"
  "annotated-types==0.8.0"
  "typing-inspection==0.4.5"
  "typing-extensions==4.16.0"
)
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp \
  --python-version "$pyver" "${platforms[@]}" -d .whl "${packages[@]}"
du -sh .whl
