"""How the double-quantization saving approaches QLoRA's 0.373 bit as layers grow.

QLoRA's 0.373 bit/parameter counts the block constants only. bitsandbytes also stores a 1 KiB
nested code table per layer, a fixed cost that small layers cannot amortise. The curve is
measured, not computed: each point quantizes a random layer of that size with and without
double quantization and compares the bytes bitsandbytes stores.
"""

from __future__ import annotations

from typing import Any

from harness.report import metric_values
from harness.report.style import precision_color

LAYER_SHAPES = [
    (128, 256),
    (256, 256),
    (576, 576),
    (576, 1536),
    (1024, 1024),
    (2048, 2048),
    (4096, 4096),
]
PUBLISHED = 0.373


def measured_curve() -> list[tuple[int, float]]:
    from harness.workloads.footprint_bnb import dq_saving_for_layer

    return [(o * i, dq_saving_for_layer(o, i)["saving"]) for o, i in LAYER_SHAPES]


def dq_saving_curve(frame: Any) -> Any:
    totals = metric_values(frame, "dq_saving_bits.total")
    if not len(totals):
        return None
    import matplotlib.pyplot as plt

    curve = measured_curve()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ax.plot(
        [n for n, _ in curve],
        [s for _, s in curve],
        marker="o",
        color="#333",
        label="one random layer, measured (bitsandbytes)",
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
