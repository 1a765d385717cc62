"""Wall time of the default experiment (what ``make run`` runs), optionally on an emulated
AVX2-only CPU.

Runs ``harness run experiments/default.yaml`` into a temporary directory (``--force``: every
cell measured) and prints the whole command's wall time against the 10-minute target, each
cell's status and duration, the torch CPU capability the cells ran with and every
``budget.emulated`` row.

``--emulate-avx2`` holds torch to AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``) and oneDNN to
AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), so bf16 matmuls are no longer native on a CPU that has
``avx512_bf16``; the harness then measures bf16 slower than fp32 and caps the bf16 cell's
budget. This approximates, and does not replace, a CPU without those instructions: here a
bf16 matmul becomes ~4x slower than fp32, where an AVX2-only EPYC was measured ~20x slower on
a bf16 prefill.

    .venv/bin/python benchmarks/default_run_time.py [--emulate-avx2] [--experiment PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.measure.env import cpu_name
from harness.results import load_table

TARGET_S = 600
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="experiments/default.yaml")
    parser.add_argument("--emulate-avx2", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, **(AVX2_ENV if args.emulate_avx2 else {})}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results"
        cmd = [sys.executable, "-m", "harness.cli", "run", args.experiment]
        cmd += ["--out", str(out), "--force"]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        print(f"cpu: {cpu_name()}; {os.cpu_count()} cores; torch kernels: {capability(env)}")
        if args.emulate_avx2:
            print("emulated AVX2: " + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()))
        print(f"harness run {args.experiment}: exit {done.returncode}, {wall:.0f} s wall")
        if done.returncode not in (0, 3):
            print(done.stderr[-2000:])
            return
        report_cells(load_table(out))
    verdict = "under" if wall < TARGET_S else "OVER"
    print(f"{verdict} the {TARGET_S // 60}-minute target")


def capability(env: dict[str, str]) -> str:
    """torch's CPU capability under ``env`` (AVX512, AVX2, ...)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def report_cells(table) -> None:
    cells = table.drop_duplicates("cell_id")
    for _, cell in cells.iterrows():
        print(f"  {cell.precision}: {cell.cell_status}, {cell.duration_s:.0f} s")
    for _, row in table[table.metric == "budget.emulated"].iterrows():
        print(f"  {row.precision}: budget.emulated: {row.method}")


if __name__ == "__main__":
    main()
