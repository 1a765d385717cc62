"""The report's figures, declared in one table (``FIGURES``) so new metrics are one entry.

Every builder takes the tidy table (with a ``run`` column) and returns a matplotlib Figure, or
None when its metrics are absent (the report then says so). One panel per run and model, so
CPU and GPU results sit side by side; precisions keep their colour from ``style``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.measure.inventory import CATEGORIES  # noqa: E402
from harness.report import metric_values, panels
from harness.report.dq_curve import NEEDS as DQ_NEEDS
from harness.report.dq_curve import dq_saving_curve
from harness.report.style import (
    CATEGORY_COLORS,
    CATEGORY_LABELS,
    human_bytes_unit,
    precision_color,
    precision_order,
    text_color,
)

FOOTPRINT_CATS = [c for c in CATEGORIES if c != "buffers"]
TRAIN_CATS = ["frozen_weights", "adapter_params", "gradients", "optimizer_state", "activations"]
REFERENCE = {
    "fp32": [(4, "int8: 4x"), (8, "4-bit: 8x")],
    "fp16": [(2, "int8: 2x"), (4, "4-bit: 4x")],
}
ACCURACY = re.compile(r"^(acc|acc_norm)([._].+)?$|^.+[.:/](acc|acc_norm)$")


@dataclass(frozen=True)
class FigureSpec:
    """A figure: file stem, title, what it needs (shown when skipped), how to draw it."""

    name: str
    title: str
    needs: str
    build: Callable[[Any], Any]


def _grid(n_panels: int, rows: int = 1, width: float = 5.6, height: float = 4.0,
          sharey: bool | str = False) -> Any:
    """``rows`` x ``n_panels`` axes; ``sharey`` puts runs compared side by side on one scale."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        rows,
        n_panels,
        figsize=(width * n_panels, height * rows),
        squeeze=False,
        constrained_layout=True,
        sharey=sharey,
    )
    return fig, axes


MAX_COLUMNS = 4
"""Panels per row before a figure wraps, so it stays readable at any matrix size."""


def _wrapped(n_panels: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """At most ``MAX_COLUMNS`` panels per row; the unused axes of the last row are hidden."""
    import math

    cols = min(n_panels, MAX_COLUMNS)
    rows = math.ceil(n_panels / cols)
    fig, axes = _grid(cols, rows=rows, width=width, height=height)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def cell_label(precision: Any, adapter: Any, adapters: int) -> str:
    """``precision`` alone when a panel holds one adapter, else ``precision · adapter``."""
    return str(precision) if adapters <= 1 else f"{precision} · {adapter}"


def _xticks(ax: Any, labels: list[str]) -> None:
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35, ha="right")
    for tick, label in zip(ax.get_xticklabels(), labels, strict=True):
        tick.set_color(text_color(label.split(" · ")[0]))


def _adapter_key(cell: Any) -> tuple[int, float, str]:
    """none, then LoRA by rank, then full fine-tuning."""
    adapter = str(cell.adapter)
    kind = 0 if adapter == "none" else 2 if adapter == "full" else 1
    rank = cell.rank if isinstance(cell.rank, int | float) and cell.rank == cell.rank else 0
    return kind, float(rank), adapter


def _stacked(
    frame: Any, prefix: str, cats: list[str], key: Callable[[Any], str], ylabel: str
) -> Any:
    """Stacked bars of ``prefix<cat>`` per cell; None when no panel has any."""
    if not any(len(metric_values(frame, prefix + c)) for c in cats):
        return None
    sel = frame[frame["metric"].isin([prefix + c for c in cats]) & (frame["status"] == "ok")]
    sel = sel.drop_duplicates(["run", "cell_id", "metric"])  # first method of a repeated metric
    div, unit = human_bytes_unit(sel.groupby(["run", "cell_id"])["value"].sum().max())
    plist = panels(sel)
    most = max(rows["cell_id"].nunique() for _, rows in plist)
    fig, axes = _grid(len(plist), width=max(6.4, 0.55 * most + 1.5), height=4.6, sharey=True)
    for ax, (title, rows) in zip(axes[0], plist, strict=True):
        cells = rows.drop_duplicates("cell_id")  # rows: already one per cell and metric
        order = sorted(
            cells.itertuples(),
            key=lambda c: (precision_order(cells["precision"]).index(c.precision), _adapter_key(c)),
        )
        labels = [key(c) for c in order]
        bottom = [0.0] * len(order)
        for cat in cats:
            vals = [
                rows[(rows["cell_id"] == c.cell_id) & (rows["metric"] == prefix + cat)][
                    "value"
                ].sum()
                / div
                for c in order
            ]
            if any(vals):
                ax.bar(
                    range(len(order)),
                    vals,
                    bottom=bottom,
                    color=CATEGORY_COLORS[cat],
                    label=CATEGORY_LABELS[cat],
                    edgecolor="white",
                    linewidth=0.5,
                )
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        for i, total in enumerate(bottom):
            ax.annotate(f"{total:.3g}", (i, total), ha="center", va="bottom", fontsize=7.5)
        _xticks(ax, labels)
        ax.set_ylabel(f"{ylabel} ({unit})")
        ax.set_title(title)
        ax.set_ylim(0, max(bottom or [1]) * 1.12)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=8)
    return fig


def memory_breakdown(frame: Any) -> Any:
    adapters = frame["adapter"].nunique()
    return _stacked(
        frame, "bytes.", FOOTPRINT_CATS, lambda c: cell_label(c.precision, c.adapter, adapters),
        "stored weight bytes",
    )


def training_memory(frame: Any) -> Any:
    return _stacked(
        frame, "mem.", TRAIN_CATS, lambda c: f"{c.precision} · {c.adapter}", "training memory"
    )


def memory_saving(frame: Any) -> Any:
    """Times smaller than fp32 / fp16: solid bars quantized layers, hatched bars whole model."""
    if not len(metric_values(frame, "saving_vs_fp32.model")):
        return None
    if (frame["adapter"] == "none").any():  # a saving of the base model, not of its adapters
        frame = frame[frame["adapter"] == "none"]
    plist = panels(frame)
    fig, axes = _grid(len(plist), rows=2, width=6.2, height=3.6)
    for col, (title, rows) in enumerate(plist):
        for row, ref in enumerate(("fp32", "fp16")):
            ax = axes[row][col]
            order = precision_order(metric_values(rows, f"saving_vs_{ref}.model")["precision"])
            for i, prec in enumerate(order):
                for dx, scope, hatch in ((-0.2, "quantized_layers", ""), (0.2, "model", "//")):
                    v = metric_values(rows[rows["precision"] == prec], f"saving_vs_{ref}.{scope}")
                    if len(v):
                        ax.bar(
                            i + dx,
                            v["value"].mean(),
                            0.38,
                            color=precision_color(prec),
                            hatch=hatch,
                            edgecolor="black",
                            linewidth=0.4,
                        )
            for y, label in REFERENCE[ref]:
                ax.axhline(y, color="#444", linestyle="--", linewidth=0.9)
                ax.text(
                    1.01,
                    y,
                    f"published\n{label}",
                    transform=ax.get_yaxis_transform(),
                    ha="left",
                    va="center",
                    fontsize=8,
                    color="#444",
                )
            _xticks(ax, order)
            ax.set_ylabel(f"times smaller than {ref} (x)")
            ax.set_title(f"{title + ': ' if title else ''}vs {ref}")
    from matplotlib.patches import Patch

    fig.legend(
        handles=[
            Patch(facecolor="#bbb", edgecolor="black", label="quantized layers"),
            Patch(facecolor="#bbb", edgecolor="black", hatch="//", label="whole model"),
        ],
        loc="outside right upper",
        fontsize=8,
    )
    return fig


def _pareto(points: list[tuple[float, float]], higher_better: bool) -> list[tuple[float, float]]:
    """Points no other point beats on both fewer bits and better quality."""
    best, front = None, []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1] if higher_better else p[1])):
        if best is None or (y > best if higher_better else y < best):
            front.append((x, y))
            best = y
    return front


def _labels(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Name each point, stepping a label down while it would overlap one already placed."""
    if not points:
        return
    ax.figure.canvas.draw()  # settle limits and scales so display coordinates are final
    pt = ax.figure.dpi / 72  # pixels per point
    placed: list[tuple[float, float, float]] = []
    for x, y, name in sorted(points, key=lambda p: (-p[1], p[0])):
        px, py = ax.transData.transform((x, y))
        dy = 4.0
        while any(
            abs(py + dy * pt - qy) < 10 * pt and px < qx + qw and qx < px + 5 * pt * len(name)
            for qx, qy, qw in placed
        ):
            dy -= 10
        placed.append((px, py + dy * pt, 5 * pt * len(name)))
        ax.annotate(
            name,
            (x, y),
            xytext=(6, dy),
            textcoords="offset points",
            fontsize=8,
            color=text_color(name),
            va="bottom" if dy > 0 else "center",
        )


def _quality_vs_bits(frame: Any, metrics: list[str], ylabel: str, higher_better: bool) -> Any:
    bits = metric_values(frame, "bits_per_param")
    if not metrics or not len(bits):
        return None
    plist = [(t, r, m) for t, r in panels(frame) for m in metrics]
    fig, axes = _wrapped(len(plist), width=5.8, height=4.4)
    for ax, (title, rows, metric) in zip(axes, plist, strict=True):
        _quality_panel(ax, rows, metric, higher_better)
        ax.set_xlabel("bits per weight of the linear layers (bits; embeddings excluded)")
        ax.set_ylabel(ylabel if len(metrics) == 1 else f"{metric} ({ylabel})")
        ax.set_title(" · ".join(t for t in (title, "" if metric == "perplexity" else metric) if t))
    return fig


def _quality_panel(ax: Any, rows: Any, metric: str, higher_better: bool) -> None:
    """One point per cell with its interval; a Pareto frontier per adapter, so a LoRA cell
    never sits on the base models' frontier."""
    values = metric_values(rows, metric)
    q = values.groupby("cell_id")[["value", "ci_low", "ci_high"]].mean() \
        if "ci_low" in values else values.groupby("cell_id")[["value"]].mean()
    b = _layer_bits(rows)
    adapters = rows["adapter"].nunique()
    labelled, by_adapter = [], {}
    for cell_id, got in q.iterrows():
        if cell_id not in b.index:
            continue
        prec, x, y = b.loc[cell_id, "precision"], float(b.loc[cell_id, "value"]), got["value"]
        adapter = rows.loc[rows["cell_id"] == cell_id, "adapter"].iloc[0]
        low, high = got.get("ci_low"), got.get("ci_high")
        if low == low and high == high and low is not None and high is not None:
            ax.errorbar(x, y, yerr=[[max(y - low, 0)], [max(high - y, 0)]], fmt="none",
                        ecolor="#777", elinewidth=0.8, capsize=2, zorder=2)
        ax.scatter(x, y, s=60, color=precision_color(prec), edgecolor="black", zorder=3,
                   marker="o" if adapter == "none" else "s")
        labelled.append((x, float(y), cell_label(prec, adapter, adapters)))
        by_adapter.setdefault(adapter, []).append((x, float(y)))
    points = [(x, y) for x, y, _ in labelled]
    if points and max(p[1] for p in points) > 5 * max(min(p[1] for p in points), 1e-9):
        ax.set_yscale("log")
    if points and max(p[0] for p in points) > 4 * max(min(p[0] for p in points), 1e-9):
        ax.set_xscale("log", base=2)  # 3, 4, 8, 16, 32 bits spread evenly
    _labels(ax, labelled)
    drawn = False
    for adapter, group in by_adapter.items():
        front = _pareto(group, higher_better)
        if len(front) > 1:
            name = "Pareto frontier" + (f" ({adapter})" if adapters > 1 else "")
            ax.step(*zip(*front, strict=True), where="post", color="#555",
                    linestyle="--" if adapter == "none" else ":", linewidth=1, label=name,
                    zorder=2)
            drawn = True
    if drawn:
        ax.legend(loc="best")


def _layer_bits(rows: Any) -> Any:
    """Stored bits per weight of the decoder linear layers, quantized or not, per cell.

    Whole-model bits hide the schemes behind the unquantized embeddings of a small model, so the
    comparison uses the layers every scheme actually treats (whole-model bits when absent).
    """

    def total(names: list[str]) -> Any:
        parts = [metric_values(rows, n).groupby("cell_id")["value"].sum() for n in names]
        return sum(p.reindex(parts[0].index.union(parts[1].index), fill_value=0) for p in parts)

    stored = total(["bytes.quantized_weights", "bytes.linear_weights"]).add(
        metric_values(rows, "bytes.quant_state").groupby("cell_id")["value"].sum(), fill_value=0
    )
    weights = total(["params.quantized_weights", "params.linear_weights"])
    whole = metric_values(rows, "bits_per_param").set_index("cell_id")
    layer = (8 * stored / weights).dropna()
    whole.loc[whole.index.intersection(layer.index), "value"] = layer
    return whole


def perplexity_vs_bits(frame: Any) -> Any:
    present = ["perplexity"] if len(metric_values(frame, "perplexity")) else []
    return _quality_vs_bits(frame, present, "perplexity (lower is better)", False)


def accuracy_vs_bits(frame: Any) -> Any:
    metrics = sorted({m for m in frame["metric"].dropna().unique() if ACCURACY.match(str(m))})
    return _quality_vs_bits(frame, metrics, "accuracy (fraction, higher is better)", True)


THROUGHPUT = [
    ("prefill_tokens_per_s", "prefill (tokens/s)"),
    ("decode_tokens_per_s", "decode (tokens/s)"),
    ("decode_bandwidth_gb_per_s", "decode weight bandwidth (GB/s)"),
]


def throughput(frame: Any) -> Any:
    """Median bars with p10-p90 error bars; one row of panels per run and model."""
    present = [(m, label) for m, label in THROUGHPUT if len(metric_values(frame, m))]
    if not present:
        return None
    plist = panels(frame)
    fig, axes = _grid(len(present), rows=len(plist), width=4.8, height=3.6, sharey="col")
    adapters = frame["adapter"].nunique()
    for r, (title, rows) in enumerate(plist):
        for c, (metric, label) in enumerate(present):
            ax = axes[r][c]
            by = ["precision", "adapter"]
            med = metric_values(rows, metric, "median").groupby(by)["value"].mean()
            lo = metric_values(rows, metric, "p10").groupby(by)["value"].mean()
            hi = metric_values(rows, metric, "p90").groupby(by)["value"].mean()
            precisions = precision_order(med.index.get_level_values(0))
            order = sorted(med.index, key=lambda k: (precisions.index(k[0]), k[1] != "none",
                                                     str(k[1])))
            for i, key in enumerate(order):
                err = [[max(med[key] - lo.get(key, med[key]), 0)],
                       [max(hi.get(key, med[key]) - med[key], 0)]]
                ax.bar(i, med[key], color=precision_color(key[0]), yerr=err, capsize=4,
                       edgecolor="black", linewidth=0.4)
            _xticks(ax, [cell_label(p, a, adapters) for p, a in order])
            ax.set_ylabel(label)
            ax.set_title(f"{title + ': ' if title else ''}{label.split(' (')[0]}")
    fig.suptitle("median with p10-p90 error bars (one bar per precision and adapter)",
                 fontsize=9)
    return fig


def _heatmap(metric: str, stat: str | None, label: str, scale: float = 1.0) -> Callable:
    def build(frame: Any) -> Any:
        import seaborn as sns

        rows = metric_values(frame, metric, stat)
        rows = rows[rows["adapter"].astype(str).str.startswith("lora")]
        if not len(rows) or rows["rank"].isna().all():
            return None
        plist = [(t, r) for t, r in panels(rows)]
        fig, axes = _grid(len(plist), width=5.2, height=3.8)
        for ax, (title, sub) in zip(axes[0], plist, strict=True):
            grid = (
                sub.pivot_table(index="precision", columns="rank", values="value", aggfunc="mean")
                / scale
            )
            grid = grid.reindex(precision_order(grid.index))
            grid.columns = [int(c) for c in grid.columns]
            sns.heatmap(
                grid, annot=True, fmt=".3g", cmap="viridis", ax=ax, cbar_kws={"label": label}
            )
            ax.set_xlabel("LoRA rank r")
            ax.set_ylabel("precision")
            ax.set_title(title or label)
        return fig

    return build


FIGURES: list[FigureSpec] = [
    FigureSpec(
        "memory_breakdown", "Stored model bytes by category", "footprint bytes.*", memory_breakdown
    ),
    FigureSpec("training_memory", "Training memory breakdown", "training mem.*", training_memory),
    FigureSpec(
        "memory_saving", "Memory saving against fp32 and fp16", "saving_vs_fp32.*", memory_saving
    ),
    FigureSpec(
        "dq_saving_curve",
        "Double-quantization saving against layer size",
        DQ_NEEDS,
        dq_saving_curve,
    ),
    FigureSpec(
        "perplexity_vs_bits",
        "Perplexity against bits per parameter",
        "perplexity and bits_per_param",
        perplexity_vs_bits,
    ),
    FigureSpec(
        "accuracy_vs_bits",
        "Accuracy against bits per parameter",
        "accuracy metrics (acc, acc_norm) and bits_per_param",
        accuracy_vs_bits,
    ),
    FigureSpec("throughput", "Prefill and decode throughput", "inference tokens/s", throughput),
    FigureSpec(
        "lora_peak_memory",
        "LoRA training peak memory",
        "train_peak_bytes in lora cells",
        _heatmap("train_peak_bytes", None, "training peak (GB)", 1e9),
    ),
    FigureSpec(
        "lora_train_throughput",
        "LoRA training throughput",
        "train_tokens_per_s in lora cells",
        _heatmap("train_tokens_per_s", "median", "train tokens/s (median)"),
    ),
    FigureSpec(
        "lora_perplexity",
        "Perplexity after LoRA fine-tuning",
        "perplexity in lora cells",
        _heatmap("perplexity", None, "perplexity"),
    ),
]
