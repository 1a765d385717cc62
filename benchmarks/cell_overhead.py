"""Fixed cost of a cell, and of reusing stored cells.

1. A cell that measures nothing heavy (footprint only) of ``--model`` in ``--precision``, run the
   way ``harness run`` runs every cell: a fresh interpreter (process start, imports, model load,
   record). Median wall time of ``--repeats`` runs; target under 10 s. Its record's
   ``load_time_s`` is printed beside it.
2. ``harness run`` of an experiment whose ``--stored`` cells (synthetic:tiny-llama, one per seed)
   all have stored records: the whole command, process start to exit; target under 5 s.

    .venv/bin/python benchmarks/cell_overhead.py [--model builtin:smollm2-135m] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.config import expand, load_experiment
from harness.measure.env import collect as collect_env
from harness.measure.env import cpu_name
from harness.results import make_record, write_record
from harness.runner.local import execute_cell


def _experiment(path: Path, name: str, model: str, precision: str, seeds: int) -> list:
    path.write_text(
        f"name: {name}\nmodels: [{model}]\nprecisions: [{precision}]\nadapters: [none]\n"
        f"seeds: {list(range(seeds))}\ndevice: cpu\n"
        "workloads:\n  footprint: {}\n  inference: {enabled: false}\n"
        "  perplexity: {enabled: false}\n"
    )
    return expand(load_experiment(path))


def cell_wall_times(tmp: Path, model: str, precision: str, repeats: int) -> list[float]:
    (cell,) = _experiment(tmp / "one.yaml", "overhead", model, precision, 1)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        record = execute_cell(cell, tmp / f"pending{i}.json", tmp / f"log{i}.txt")
        times.append(time.perf_counter() - start)
        load = next(r["value"] for r in record["rows"] if r["metric"] == "load_time_s")
        print(f"  run {i}: {times[-1]:.2f} s wall, load_time_s {load:.2f}, {record['status']}")
    return times


def reuse_time(tmp: Path, stored: int) -> float:
    cells = _experiment(tmp / "many.yaml", "reuse", "synthetic:tiny-llama", "fp32", stored)
    out = tmp / "reuse"
    env = collect_env(cells[0].device)  # records of this environment: reused, not foreign
    for cell in cells:
        write_record(out, cell, make_record(cell, "ok", [{"metric": "x", "value": 1.0}], env=env))
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "harness.cli", "run", str(tmp / "many.yaml"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"harness run failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stored", type=int, default=50)
    args = parser.parse_args()
    print(f"cpu: {cpu_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fixed cost of a {args.precision} cell of {args.model} (footprint only):")
        median = statistics.median(
            cell_wall_times(Path(tmp), args.model, args.precision, args.repeats)
        )
        print(f"median {median:.2f} s ({'under' if median < 10 else 'OVER'} the 10 s target)")
        reuse = reuse_time(Path(tmp), args.stored)
        print(
            f"harness run reusing {args.stored} stored cells: {reuse:.2f} s "
            f"({'under' if reuse < 5 else 'OVER'} the 5 s target)"
        )


if __name__ == "__main__":
    main()
