"""Wall time of the default experiment (what ``make run`` runs), optionally on an emulated
AVX2-only CPU.

Runs ``harness run experiments/default.yaml`` into a temporary directory (``--force``: every
cell measured) and prints the whole command's wall time against the 10-minute target, each
cell's status and duration, the torch CPU capability the cells ran with and every
``budget.emulated`` and ``budget.capped`` row.

``--emulate-avx2`` holds torch to AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``) and oneDNN to
AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), so bf16 matmuls are no longer native on a CPU that has
``avx512_bf16``; the harness then measures bf16 slower than fp32 and caps the bf16 cell's
budget. This approximates, and does not replace, a CPU without those instructions: here a
bf16 matmul becomes ~4x slower than fp32, where an AVX2-only EPYC was measured ~20x slower on
a bf16 prefill.

``--slowdown K`` emulates a CPU K times slower at everything: the run's whole process tree is
stopped (SIGSTOP) for (K-1)/K of every 20 ms and resumed for the rest, so each process gets
1/K of the wall time it would have had. Cells then measure themselves slower, and the
experiment's ``cell_target_s`` caps the budgets of cells projected over it. Combined with
``--emulate-avx2`` this is the slowest CPU the benchmark can stand in for. For scale: the
AVX2-only EPYC that took 28 minutes with earlier code (and a larger budget) ran the fp32, int8
and nf4-dq cells ~2.3x longer than an Intel Xeon did with that code, which ran them ~1.3x
longer than the AVX-512 EPYC these figures come from: ~3x in all. Its nf4-dq decode was 14x
slower (2.8 against ~40 tokens/s here): bitsandbytes' own CPU kernels, which the flags above
do not hold back. A uniform slowdown does not reproduce that; the cell's probe measures
whatever its kernels cost.

For each cell it prints the projection the budget rests on (``budget.projected_s``: the
workloads' forwards) next to the sum of its workloads' measured wall times, which also hold
what is not projected (lm-eval's setup, an agreement reference built on first use).

    .venv/bin/python benchmarks/default_run_time.py [--emulate-avx2] [--slowdown K]
        [--experiment PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
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
    parser.add_argument("--slowdown", type=float, default=1.0, help="emulate a K times slower CPU")
    args = parser.parse_args()
    env = {**os.environ, **(AVX2_ENV if args.emulate_avx2 else {})}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results"
        cmd = [sys.executable, "-m", "harness.cli", "run", args.experiment]
        cmd += ["--out", str(out), "--force"]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        stop = threading.Event()
        throttler = threading.Thread(
            target=throttle, args=(proc.pid, args.slowdown, stop), daemon=True
        )
        if args.slowdown > 1:
            throttler.start()
        try:
            stdout, stderr = proc.communicate()
        finally:
            stop.set()
            if throttler.is_alive():
                throttler.join()
        wall = time.perf_counter() - start
        done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        print(f"cpu: {cpu_name()}; {os.cpu_count()} cores; torch kernels: {capability(env)}")
        if args.emulate_avx2:
            print("emulated AVX2: " + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()))
        if args.slowdown > 1:
            print(
                f"emulated {args.slowdown:g}x slower CPU: the run's processes stopped "
                f"{1 - 1 / args.slowdown:.0%} of every {PERIOD_S * 1e3:.0f} ms"
            )
        print(f"harness run {args.experiment}: exit {done.returncode}, {wall:.0f} s wall")
        if done.returncode not in (0, 3):
            print(done.stderr[-2000:])
            return
        report_cells(load_table(out))
    verdict = "under" if wall < TARGET_S else "OVER"
    print(f"{verdict} the {TARGET_S // 60}-minute target")


PERIOD_S = 0.02
REFRESH = 25  # periods between listings of the process tree (0.5 s)


def throttle(root: int, slowdown: float, stop: threading.Event) -> None:
    """Stops ``root`` and every descendant for (K-1)/K of each period until ``stop`` is set;
    whatever it stopped is resumed on the way out. The process tree is listed again every
    :data:`REFRESH` periods, while it is stopped, so the listing takes none of its run time."""
    import psutil

    try:
        parent = psutil.Process(root)
    except psutil.NoSuchProcess:
        return
    run_s = PERIOD_S / slowdown
    tree: list = []
    try:
        for period in itertools.count():
            if stop.is_set():
                return
            _signal(tree, signal.SIGSTOP)
            if period % REFRESH == 0:
                fresh = _tree(parent, tree)
                _signal([p for p in tree if p not in fresh], signal.SIGCONT)  # left the tree
                tree = fresh
                _signal(tree, signal.SIGSTOP)
            time.sleep(PERIOD_S - run_s)
            _signal(tree, signal.SIGCONT)
            time.sleep(run_s)
    finally:
        _signal(tree, signal.SIGCONT)


def _tree(parent, previous: list) -> list:
    import psutil

    try:
        return [parent, *parent.children(recursive=True)]
    except psutil.Error:
        return previous


def _signal(processes, sig) -> None:
    import psutil

    for p in processes:
        with contextlib.suppress(psutil.Error, OSError):  # gone (psutil checks PID reuse)
            p.send_signal(sig)


def capability(env: dict[str, str]) -> str:
    """torch's CPU capability under ``env`` (AVX512, AVX2, ...)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def report_cells(table) -> None:
    cells = table.drop_duplicates("cell_id")
    for _, cell in cells.iterrows():
        rows = table[table.cell_id == cell.cell_id]
        walls = rows[rows.metric == "wall_time_s"].value.sum()
        projected = rows[rows.metric == "budget.projected_s"].value
        plan = f"; projected {projected.iloc[0]:.0f} s" if len(projected) else ""
        print(
            f"  {cell.precision}: {cell.cell_status}, {cell.duration_s:.0f} s "
            f"(workloads {walls:.0f} s{plan})"
        )
    for _, row in table[table.metric.isin(["budget.emulated", "budget.capped"])].iterrows():
        print(f"  {row.precision}: {row.metric}: {row.method}")


if __name__ == "__main__":
    main()
