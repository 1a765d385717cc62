#!/usr/bin/env bash
# Load the GPTQ export with GPTQModel and compare its outputs with the harness's layers.
#
# GPTQModel is an optional backend and lives in its own virtual environment, outside the
# repository: it needs a newer torch (>= 2.14.1, a CUDA build from PyPI that also runs on
# CPU) than the CPU build pinned in the project venv, so installing it there would replace
# that torch. In the project venv the GPTQModel tests are skipped.
#
# Usage: scripts/check_gptqmodel.sh [extra pytest args]
# Environment: GPTQMODEL_VENV (default: venv-gptqmodel next to the repository), PYTHON
# (interpreter that creates the venv), TORCH_SPEC, GPTQMODEL_SPEC (pip requirements).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GPTQMODEL_VENV:-$(dirname "$repo")/venv-gptqmodel}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch>=2.14.1}"
gptqmodel_spec="${GPTQMODEL_SPEC:-gptqmodel==7.7.0}"

if ! { [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import gptqmodel, harness" >/dev/null 2>&1; }; then
    echo "creating $venv ($torch_spec, $gptqmodel_spec, harness[dev])"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q -U pip
    "$venv/bin/pip" install -q "$torch_spec" "$gptqmodel_spec"
    "$venv/bin/pip" install -q -e "$repo[dev]"
fi

"$venv/bin/python" - <<'EOF'
from importlib.metadata import version

print(f"gptqmodel {version('gptqmodel')}, torch {version('torch')}")
EOF

# Everything is local: the tests build a tiny model and tokenizer, nothing comes from the hub.
# GPTQModel sizes its CPU thread pool from GPTQMODEL_CPU_WORKERS; 2 works on small machines.
cd "$repo"
export HF_HUB_OFFLINE=1
export GPTQMODEL_CPU_WORKERS="${GPTQMODEL_CPU_WORKERS:-2}"
exec "$venv/bin/python" -m pytest -q -rs tests/quant/test_export.py "$@"
