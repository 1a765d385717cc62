"""How the double-quantization saving approaches QLoRA's 0.373 bit as layers grow.

Plots stored numbers only: the per-layer curve from the table ``benchmarks/dq_curve.py``
writes (``harness.measure.dq_curve``) and the whole-model saving of the cells in the results.
Without both, the figure is not drawn and the report says what is missing.
"""

from __future__ import annotations

from typing import Any

from harness.measure.dq_curve import TABLE, read_table
from harness.report import metric_values
from harness.report.style import precision_color

PUBLISHED = 0.373
NEEDS = f"dq_saving_bits.total (an nf4-dq or fp4-dq cell) and {TABLE} (benchmarks/dq_curve.py)"


def dq_saving_curve(frame: Any) -> Any:
    totals = metric_values(frame, "dq_saving_bits.total")
    curve = read_table(TABLE)
    if not len(totals) or curve is None:
        return None
    import matplotlib.pyplot as plt

    curve = curve.sort_values("weights")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ax.plot(
        curve["weights"],
        curve["saving_bits"],
        marker="o",
        color="#333",
        label="one random layer, measured (bitsandbytes, stored table)",
    )
    ax.axhline(
        PUBLISHED,
        color="#444",
        linestyle="--",
        linewidth=0.9,
        label="published: 0.373 bit (block constants)",
    )
    for _, row in totals.drop_duplicates("precision").iterrows():
        ax.axhline(
            row["value"],
            color=precision_color(row["precision"]),
            linestyle=":",
            label=f"{row['precision']} whole model, measured: {row['value']:.3f} bit",
        )
    ax.set_xscale("log")
    ax.set_xlabel("weights per layer (log scale)")
    ax.set_ylabel("saving from double quantization (bits/param)")
    ax.legend(fontsize=8, loc="lower right")
    return fig
