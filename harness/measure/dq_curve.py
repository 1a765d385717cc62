"""The double-quantization saving of one layer against its size, as a stored table.

QLoRA's 0.373 bit/parameter counts the block constants only. bitsandbytes also stores a 1 KiB
nested code table per layer, a fixed cost that small layers cannot amortise, so the saving
grows with layer size. Each row quantizes a random layer of one shape with and without double
quantization and compares the bytes bitsandbytes stores. ``benchmarks/dq_curve.py`` writes the
table; the report only plots it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LAYER_SHAPES = [
    (128, 256),
    (256, 256),
    (576, 576),
    (576, 1536),
    (1024, 1024),
    (2048, 2048),
    (4096, 4096),
]
"""(out_features, in_features): from toy layers to a 7B model's attention projection."""
TABLE = Path("results") / "dq-curve" / "results.csv"
"""Where the benchmark writes the table and the report reads it (relative to the checkout)."""
METHOD = "bitsandbytes-quantize_4bit-nf4-random-normal-layer"


def measure(shapes: list[tuple[int, int]], seed: int = 0) -> list[dict[str, Any]]:
    """One row per shape: stored bits per weight with and without DQ, and their difference."""
    from harness.measure.bnb_storage import dq_saving_for_layer

    rows = []
    for out_features, in_features in shapes:
        bits = dq_saving_for_layer(out_features, in_features, seed=seed)
        rows.append(
            {
                "out_features": out_features,
                "in_features": in_features,
                "weights": out_features * in_features,
                "bits_nf4": bits["bits_nf4"],
                "bits_nf4_dq": bits["bits_nf4_dq"],
                "saving_bits": bits["saving"],
                "seed": seed,
                "method": METHOD,
            }
        )
    return rows


def read_table(path: Path = TABLE) -> Any:
    """The stored curve as a DataFrame, or None when it has not been measured. A relative
    path is looked up in the working directory, then in the harness checkout."""
    if not path.is_file() and not path.is_absolute():
        from harness.paths import repo_root

        path = repo_root() / path
    if not path.is_file():
        return None
    import pandas as pd

    return pd.read_csv(path)
