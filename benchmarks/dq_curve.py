"""Double-quantization saving against layer size, measured with bitsandbytes.

Writes ``results/dq-curve/results.csv`` (one row per layer shape, the environment on every
row), which ``harness report`` plots next to the whole-model saving of nf4-dq cells.

    .venv/bin/python benchmarks/dq_curve.py [--out results/dq-curve/results.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from harness.measure.dq_curve import LAYER_SHAPES, TABLE, measure
from harness.measure.env import collect
from harness.results import atomic_write_text


def write_table(rows: list[dict], env: dict, path: Path) -> Path:
    """The rows with the environment on each, as CSV (written whole, then renamed)."""
    frame = pd.DataFrame([{**row, **env} for row in rows])
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TABLE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = measure(LAYER_SHAPES, seed=args.seed)
    path = write_table(rows, collect("cpu"), args.out)
    for row in rows:
        print(f"{row['out_features']:>5} x {row['in_features']:<5} {row['saving_bits']:.4f} bit")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
