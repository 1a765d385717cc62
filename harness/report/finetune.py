"""The fine-tuning part of a report: held-out quality before and after, loss curves, and
held-out loss against training memory (``harness.workloads.finetune``'s rows).

Seeds of one precision x adapter are aggregated: means over seeds, and intervals from a
bootstrap that resamples seeds and then items (``seed_item_interval``) over the per-item values
the cell records keep (``samples``), so an interval carries both run-to-run variation and the
choice of held-out items. The loss curves need the records too: their steps are stored beside
the samples, not in the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.report import RESULTS_DIRS, metric_values, panels
from harness.report.style import (
    adapter_color,
    adapter_marker,
    adapter_method,
    adapter_order,
    human_bytes_unit,
    precision_color,
    precision_order,
    readable,
    text_color,
)
from harness.stats import Interval, seed_item_replicates

WORKLOAD = "finetune"
FINISHED = ("ok", "diverged", "no_learning")
"""Cell statuses of a fine-tuning run that ran to its end: measured, whatever it learned."""
OUTCOMES = ("ok", "diverged", "no_learning", "error", "oom", "timeout", "skipped")
RELOAD_TOLERANCE = 1e-3
"""Largest per-item |reloaded - trained| held-out loss (nats/token) that counts as agreeing."""
Records = dict[tuple[str, str], dict[str, dict[str, list[float]]]]
"""(run, cell_id) -> metric -> {"samples": per-item values, "steps": curve steps (if stored)}."""


def has_finetune(frame: Any) -> bool:
    """Whether the table holds any fine-tuning row (the report's part is shown only then)."""
    return bool(len(frame)) and bool((frame["workload"] == WORKLOAD).any())


# ---------------------------------------------------------------------------------------------
# per-item values from the cell records


def load_records(
    dirs: Sequence[Path], labels: Sequence[str], cell_ids: set[str] | None = None
) -> Records:
    """Per-item samples (and curve steps) of every ok fine-tuning row of every cell record."""
    from harness.results_dir import ResultsDir

    out: Records = {}
    for results_dir, label in zip(dirs, labels, strict=True):
        for record in ResultsDir(Path(results_dir)).records():  # damaged ones are skipped
            if cell_ids is not None and record["cell_id"] not in cell_ids:
                continue
            rows = {
                r["metric"]: {k: list(r[k]) for k in ("samples", "steps") if r.get(k)}
                for r in record.get("rows", [])
                if r.get("workload") == WORKLOAD and r.get("samples")
                and r.get("status", "ok") == "ok"
            }
            if rows:
                out[(label, record["cell_id"])] = rows
    return out


def records_for(frame: Any, samples: Mapping[tuple[str, str], Mapping[str, Any]] | None) -> Records:
    """The records behind ``frame``: read from the results directories ``load_runs`` noted in
    ``frame.attrs``, else built from ``samples`` (``claim_interval.load_samples``), which lack
    the held-out curve's steps."""
    dirs = frame.attrs.get(RESULTS_DIRS) if hasattr(frame, "attrs") else None
    if dirs:
        return load_records([Path(p) for p in dirs.values()], list(dirs), set(frame["cell_id"]))
    return {
        key: {m: {"samples": list(v)} for m, v in metrics.items() if v}
        for key, metrics in (samples or {}).items()
    }


def curve_points(records: Records, key: tuple[str, str], metric: str) -> tuple[list, list] | None:
    """(steps, losses) of one cell's curve; train steps default to 1..N, a held-out curve
    without its stored steps is None (its evaluation steps cannot be told from the table)."""
    row = records.get(key, {}).get(metric)
    if not row or not row.get("samples"):
        return None
    values = row["samples"]
    steps = row.get("steps")
    if steps is None:
        if metric != "train_loss_curve":
            return None
        steps = list(range(1, len(values) + 1))
    if len(steps) != len(values):
        return None
    return list(steps), list(values)


# ---------------------------------------------------------------------------------------------
# intervals over seeds and items


def seed_item_interval(
    per_seed: Mapping[Any, Sequence[float]],
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean over seeds of the per-seed item means, with a percentile interval from
    ``seed_item_replicates``; ``n`` counts seeds."""
    reps = seed_item_replicates(per_seed, n_boot, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(reps, [tail, 1 - tail])
    estimate = float(np.mean([np.mean(v) for v in per_seed.values()]))
    return Interval(estimate, float(low), float(high), len(per_seed))


def paired_change(
    before: Mapping[Any, Sequence[float]], after: Mapping[Any, Sequence[float]], **kw: Any
) -> Interval | None:
    """``after - before`` per item and seed (the seeds both sides hold), resampled over seeds
    then items; None when no seed has both sides on the same items."""
    diffs = {
        s: np.asarray(after[s], dtype=np.float64) - np.asarray(before[s], dtype=np.float64)
        for s in before
        if s in after and len(before[s]) == len(after[s]) and len(before[s])
    }
    if not diffs:
        return None
    try:
        return seed_item_interval(diffs, **kw)
    except ValueError:  # seeds on different item lists: no joint interval
        return None


# ---------------------------------------------------------------------------------------------
# the before/after table


def _mean(rows: Any, metric: str) -> float:
    values = metric_values(rows, metric).groupby("cell_id")["value"].mean()
    return float(values.mean()) if len(values) else math.nan


def _per_seed(records: Records, run: str, cells: Any, metric: str) -> dict[Any, list[float]]:
    out = {}
    for cell in cells.itertuples():
        values = records.get((run, cell.cell_id), {}).get(metric, {}).get("samples")
        if values:
            out[cell.cell_id] = values
    return out


Estimate = tuple[float, float, float]
"""(value, interval low, interval high); NaN where there is none."""
NONE: Estimate = (math.nan, math.nan, math.nan)


def _stored(rows: Any, metric: str) -> Estimate:
    """Without per-item samples: the mean of the cells' stored values, with the stored
    interval of a single cell (over its items only) and none across several."""
    got = metric_values(rows, metric).drop_duplicates("cell_id")
    if not len(got):
        return NONE
    if len(got) > 1:
        return float(got["value"].mean()), math.nan, math.nan
    one = got.iloc[0]
    low, high = (one.get(k) for k in ("ci_low", "ci_high"))
    return (float(one["value"]), math.nan if low is None else float(low),
            math.nan if high is None else float(high))  # fmt: skip


def _level(records: Records, run: str, cells: Any, rows: Any, metric: str) -> Estimate:
    """Mean of ``metric`` over seeds, its interval over seeds and items."""
    values = _per_seed(records, run, cells, metric)
    if values and len(values) == len(cells):
        try:
            ci = seed_item_interval(values)
            return ci.estimate, ci.low, ci.high
        except ValueError:  # seeds on different item lists
            pass
    return _stored(rows, metric)


def _change(records: Records, run: str, cells: Any, rows: Any, metric: str, base: str,
            stored: str) -> Estimate:
    """Mean paired ``metric - base`` over seeds and items, its interval over both; else the
    cells' stored change rows (``stored``)."""
    after, before = (_per_seed(records, run, cells, m) for m in (metric, base))
    if after and len(after) == len(before) == len(cells):
        ci = paired_change(before, after)
        if ci is not None:
            return ci.estimate, ci.low, ci.high
    return _stored(rows, stored)


def _outcome(cell_rows: Any, adapter: str, cell_status: str) -> str:
    row = cell_rows[cell_rows["metric"] == "finetune_outcome"]
    if len(row):
        return str(row.iloc[0]["status"])
    if adapter == "none" and cell_status == "ok":
        return "base"
    return str(cell_status)


def finetune_summary(frame: Any, records: Records) -> Any:
    """One row per run, model, precision and adapter with the numbers the table shows."""
    import pandas as pd

    ft = frame[frame["workload"] == WORKLOAD]
    out = []
    for (run, model), group in ft.groupby(["run", "model"], sort=False):
        for precision in precision_order(group["precision"]):
            by_prec = group[group["precision"] == precision]
            for adapter in adapter_order(by_prec["adapter"]):
                rows = by_prec[by_prec["adapter"] == adapter]
                out.append(_summary_row(str(run), str(model), precision, adapter, rows, records))
    return pd.DataFrame(out)


def _summary_row(run: str, model: str, precision: str, adapter: str, rows: Any,
                 records: Records) -> dict[str, Any]:
    cells = rows.drop_duplicates("cell_id")
    outcomes: dict[str, int] = {}
    for cell in cells.itertuples():
        kind = _outcome(rows[rows["cell_id"] == cell.cell_id], adapter, str(cell.cell_status))
        outcomes[kind] = outcomes.get(kind, 0) + 1
    done = cells[cells["cell_status"].isin(FINISHED)]
    measured = rows[rows["cell_id"].isin(set(done["cell_id"]))]
    change = _change(records, run, done, measured, "heldout_loss_after", "heldout_loss_before",
                     "heldout_loss_change")  # fmt: skip
    after = _level(records, run, done, measured, "heldout_loss_after")
    merge = _change(records, run, done, measured, "heldout_loss_merged",
                    "heldout_loss_reloaded", "merge_loss_change")  # fmt: skip
    diffs = metric_values(measured, "reload_max_item_loss_diff")["value"]
    skipped = measured[(measured["metric"] == "heldout_loss_reloaded")
                       & (measured["status"] == "skipped")]
    return {
        "run": run, "model": model, "precision": precision, "adapter": adapter,
        "seeds": len(done), "cells": len(cells),
        "trainable_params": _mean(measured, "trainable_params"),
        "trainable_fraction": _mean(measured, "trainable_fraction"),
        "loss_before": _mean(measured, "heldout_loss_before"),
        "loss_after": _mean(measured, "heldout_loss_after"),
        "after_low": after[1], "after_high": after[2],
        "loss_change": change[0], "change_low": change[1], "change_high": change[2],
        "em_before": _mean(measured, "heldout_exact_match_before"),
        "em_after": _mean(measured, "heldout_exact_match_after"),
        "ppl_before": _mean(measured, "corpus_perplexity_before"),
        "ppl_after": _mean(measured, "corpus_perplexity_after"),
        "reload_max_diff": float(diffs.max()) if len(diffs) else math.nan,
        "reload_skipped": str(skipped.iloc[0]["error"] or "") if len(skipped) else "",
        "merge_change": merge[0], "merge_low": merge[1], "merge_high": merge[2],
        "outcomes": {k: outcomes[k] for k in sorted(outcomes, key=_outcome_rank)},
        "all_ok": bool(outcomes) and set(outcomes) <= {"ok", "base"},
        "peak_bytes": _mean(measured, "finetune_peak_bytes"),
        "tokens_per_s": _mean(measured, "finetune_tokens_per_s"),
    }  # fmt: skip


def _outcome_rank(kind: str) -> int:
    return OUTCOMES.index(kind) if kind in OUTCOMES else len(OUTCOMES)


def _ok(v: Any) -> bool:
    return v is not None and isinstance(v, int | float) and not math.isnan(v)


def _arrow(a: float, b: float, fmt: str) -> str:
    if not _ok(a):
        return ""
    return f"{a:{fmt}}" + (f" → {b:{fmt}}" if _ok(b) else " (before only)")


def _with_interval(v: float, low: float, high: float, fmt: str = "+.3g") -> str:
    if not _ok(v):
        return ""
    text = f"{v:{fmt}}"
    return text + (f" [{low:{fmt}}, {high:{fmt}}]" if _ok(low) and _ok(high) else "")


def _params(n: float, fraction: float) -> str:
    if not _ok(n):
        return ""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            text = f"{n / div:.3g}{unit}"
            break
    else:
        text = f"{n:.0f}"
    if not _ok(fraction):
        return text
    percent = 100 * fraction
    return text + (f" ({percent:.0f}%)" if percent >= 10 else f" ({percent:.2g}%)")


def _reload(diff: float, skipped: str) -> str:
    if _ok(diff):
        return f"{'yes' if diff <= RELOAD_TOLERANCE else 'no'} (max {diff:.2g})"
    return f"skipped: {skipped.split(';')[0].split(':')[0][:60]}" if skipped else ""


def finetune_table(summary: Any) -> Any:
    """The summary as the report shows it (run and model columns only when they differ)."""
    import pandas as pd

    rows = []
    for s in summary.itertuples():
        outcome = ", ".join(f"{n} {k}" for k, n in s.outcomes.items())
        rows.append({
            "run": s.run, "model": s.model, "precision": s.precision, "adapter": s.adapter,
            "seeds": s.seeds,
            "trainable params": _params(s.trainable_params, s.trainable_fraction),
            "held-out loss before → after": _arrow(s.loss_before, s.loss_after, ".3f"),
            "loss change [95% CI]": _with_interval(s.loss_change, s.change_low, s.change_high),
            "exact match before → after": _arrow(s.em_before, s.em_after, ".3f"),
            "corpus ppl before → after": _arrow(s.ppl_before, s.ppl_after, ".4g"),
            "reload agrees (max item diff)": _reload(s.reload_max_diff, s.reload_skipped),
            "merge change [95% CI]": _with_interval(s.merge_change, s.merge_low, s.merge_high),
            "outcome": outcome,
            "peak MB": f"{s.peak_bytes / 1e6:.1f}" if _ok(s.peak_bytes) else "",
        })  # fmt: skip
    table = pd.DataFrame(rows)
    for column in ("run", "model"):
        if len(table) and table[column].nunique() == 1:
            table = table.drop(columns=column)
    return table


TABLE_NOTE = (
    "One row per precision and adapter; seeds aggregated (mean over the seeds whose run "
    "finished, their count in 'seeds'). Held-out loss: mean completion NLL (nats/token) on "
    "the held-out items, the same items for every cell. Loss change: after - before, item by "
    "item, averaged over seeds, with a 95% interval from a bootstrap that resamples seeds and "
    "then items (negative = learned). Exact match: greedy decoding reproduces the answer. "
    "Corpus perplexity: windows of the builtin corpus' test split (higher after = forgetting). "
    f"Reload: the saved adapter loaded into a fresh base, largest per-item loss difference "
    f"(agrees within {RELOAD_TOLERANCE:g} nats/token). Merge change: merged - reloaded "
    "loss, paired as the loss change. Outcome: seeds ok / diverged / no_learning (or failed). "
    "Peak: the first training step's memory phase (live tensors + process growth)."
)


# ---------------------------------------------------------------------------------------------
# figures


def _mean_curve(curves: list[tuple[list, list]]) -> tuple[list, list]:
    """Mean over seeds at every step some seed reached."""
    by_step: dict[float, list[float]] = {}
    for steps, values in curves:
        for step, value in zip(steps, values, strict=True):
            if value is not None and math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps]


def _finished(frame: Any) -> Any:
    ft = frame[(frame["workload"] == WORKLOAD) & frame["cell_status"].isin(FINISHED)]
    return ft[ft["adapter"] != "none"]


def _log_scale(ax: Any, which: str) -> None:
    """Log ``x`` or ``y`` axis with plain tick labels (0.3, 1, 5), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))

    def minor(v: float, _: Any) -> str:
        mantissa = v / 10 ** math.floor(math.log10(v)) if v > 0 else 0
        return f"{v:.2g}" if round(mantissa, 6) in (2, 3, 5) else ""

    axis.set_minor_formatter(FuncFormatter(minor))


def _place_labels(ax: Any, points: list[tuple[float, float, str]], fontsize: float = 8) -> None:
    """Name every point in its precision's colour: each label takes the first spot around
    its point (right, left, above, below, then farther out) that overlaps no label placed
    before it, no other point and stays inside the axes; a label set apart from its point
    gets a thin leader line."""
    if not points:
        return
    ax.figure.canvas.draw()
    pt = ax.figure.dpi / 72
    x0, y0 = ax.transAxes.transform((0, 0))
    x1, y1 = ax.transAxes.transform((1, 1))
    marks = [ax.transData.transform((x, y)) for x, y, _ in points]
    boxes = [(mx - 5 * pt, my - 5 * pt, mx + 5 * pt, my + 5 * pt) for mx, my in marks]

    def overlap(a: tuple, b: tuple) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    order = sorted(range(len(points)), key=lambda i: (-marks[i][1], marks[i][0]))
    for i in order:
        x, y, name = points[i]
        mx, my = marks[i]
        w, h = 0.62 * fontsize * len(name) * pt, 1.25 * fontsize * pt
        best, best_cost = None, math.inf
        for ring in (1, 2, 3, 4.5):
            d = 6 * pt * ring
            for dx, dy in ((d, 0), (-d - w, 0), (-w / 2, d + h / 2), (-w / 2, -d - h / 2),
                           (d, d), (d, -d), (-d - w, d), (-d - w, -d)):  # fmt: skip
                box = (mx + dx, my + dy - h / 2, mx + dx + w, my + dy + h / 2)
                outside = max(x0 - box[0], 0) + max(box[2] - x1, 0) + max(y0 - box[1], 0) + max(
                    box[3] - y1, 0)  # fmt: skip
                cost = sum(overlap(box, b) for j, b in enumerate(boxes) if j != i) + 50 * outside
                cost += ring  # nearer is better among free spots
                if cost < best_cost:
                    best, best_cost = (dx, dy, box, ring), cost
            if best is not None and best_cost <= ring:
                break
        assert best is not None
        dx, dy, box, ring = best
        boxes.append(box)
        far = ring > 1
        ax.annotate(name, (x, y), xytext=(dx / pt, dy / pt), textcoords="offset points",
                    fontsize=fontsize, ha="left", va="center",
                    color=text_color(name.split("/")[0]), zorder=4,
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none",
                          "alpha": 0.75},
                    arrowprops={"arrowstyle": "-", "color": "#aaa", "linewidth": 0.5,
                                "shrinkA": 0, "shrinkB": 3} if far else None)  # fmt: skip


def _end_labels(ax: Any, ends: list[tuple[float, float, str]], gap_pt: float = 10.0) -> None:
    """Name each curve at its last point, in its colour; names that would overlap are spread
    apart vertically (at least ``gap_pt`` points) and kept inside the axes, joined to their
    curve's end by a thin line when moved."""
    if not ends:
        return
    ax.figure.canvas.draw()  # final limits and scales, so display coordinates hold
    pt = ax.figure.dpi / 72
    bottom, top = ax.transAxes.transform((0, 0))[1], ax.transAxes.transform((0, 1))[1]
    gap = gap_pt * pt
    placed = sorted(((ax.transData.transform((x, y))[1], x, y, name) for x, y, name in ends))
    pos = [p[0] for p in placed]
    for i in range(1, len(pos)):  # push up to clear the one below
        pos[i] = max(pos[i], pos[i - 1] + gap)
    if pos and pos[-1] > top - gap / 2:  # then back down under the top, clearing downwards
        pos[-1] = top - gap / 2
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - gap)
    if pos and pos[0] < bottom + gap / 2:  # a crowded panel: spread evenly over its height
        step = (top - bottom - gap) / max(len(pos) - 1, 1)
        pos = [bottom + gap / 2 + i * step for i in range(len(pos))]
    for (py, x, y, name), target in zip(placed, pos, strict=True):
        moved = abs(target - py) > 1
        ax.annotate(name, (x, y), xytext=(8, (target - py) / pt), textcoords="offset points",
                    fontsize=8, va="center", color=readable(adapter_color(name)),
                    arrowprops={"arrowstyle": "-", "color": "#999", "linewidth": 0.5,
                                "shrinkA": 0, "shrinkB": 2} if moved else None)  # fmt: skip


def loss_curves(frame: Any, records: Records) -> Any:
    """Train loss per step (solid) and held-out loss at its steps (dashed, markers), one panel
    per run, model and precision (three a row), a colour per adapter: means over seeds bold,
    each seed's train loss thin; every adapter named at the end of its train curve."""
    from matplotlib.lines import Line2D

    from harness.report.plots import _grid

    ft = _finished(frame)
    facets = [
        (title, prec, rows[rows["precision"] == prec])
        for title, rows in panels(ft)
        for prec in precision_order(rows["precision"])
    ]
    facets = [f for f in facets if any(
        curve_points(records, (c.run, c.cell_id), "train_loss_curve")
        for c in f[2].drop_duplicates("cell_id").itertuples())]
    if not facets:
        return None
    ncols = min(3, len(facets))
    nrows = math.ceil(len(facets) / ncols)
    fig, axes = _grid(ncols, rows=nrows, width=5.4, height=3.9)
    shown: list[str] = []
    thin = False
    labels = []
    for ax, (title, prec, rows) in zip(axes.flat, facets, strict=False):
        ends, values, right = [], [], 1.0
        for adapter in adapter_order(rows["adapter"]):
            cells = rows[rows["adapter"] == adapter].drop_duplicates("cell_id")
            color = adapter_color(adapter)
            for metric, style, marker in (("train_loss_curve", "-", None),
                                          ("heldout_loss_curve", "--", "o")):  # fmt: skip
                curves = [p for c in cells.itertuples()
                          if (p := curve_points(records, (c.run, c.cell_id), metric))]
                if not curves:
                    continue
                if len(curves) > 1 and metric == "train_loss_curve":
                    thin = True
                    for steps, ys in curves:
                        ax.plot(steps, ys, style, color=color, linewidth=0.6, alpha=0.3)
                steps, mean = _mean_curve(curves)
                if not steps:
                    continue
                ax.plot(steps, mean, style, color=color, linewidth=1.9, marker=marker,
                        markersize=4.5, zorder=3)  # fmt: skip
                values += mean
                right = max(right, max(steps))
                if metric == "train_loss_curve":
                    ends.append((float(steps[-1]), float(mean[-1]), adapter))
                    if adapter not in shown:
                        shown.append(adapter)
        positive = [v for v in values if v > 0]
        if positive and max(positive) > 5 * min(positive):
            _log_scale(ax, "y")
        ax.set_xlim(left=0, right=right * 1.22)  # room for the names at the curves' ends
        labels.append((ax, ends))
        ax.set_title(" · ".join(t for t in (title, prec) if t), color=text_color(prec))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
    for ax in list(axes.flat)[len(facets):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=adapter_color(a), linewidth=2, label=a)
               for a in adapter_order(shown)]
    handles += [
        Line2D([], [], color="#444", linewidth=1.9, label="train loss (each step)"),
        Line2D([], [], color="#444", linewidth=1.9, linestyle="--", marker="o", markersize=4.5,
               label="held-out loss (curve items)"),
    ]
    if thin:
        handles.append(Line2D([], [], color="#444", linewidth=0.7, alpha=0.5,
                              label="train loss of single seeds (thin)"))  # fmt: skip
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    for ax, ends in labels:  # once the layout holds the legend: positions are final
        _end_labels(ax, ends)
    return fig


def quality_vs_memory(summary: Any) -> Any:
    """Held-out loss after fine-tuning (mean over seeds, 95% seed x item interval) against the
    first training step's peak memory, a point per precision and adapter, labelled, with the
    frontier of points no other point beats on both; hollow where not every seed ended ok."""
    from matplotlib.lines import Line2D

    from harness.report.plots import _grid, _pareto

    if summary is None or not len(summary):
        return None
    pts = summary[(summary["adapter"] != "none") & summary["peak_bytes"].notna()
                  & summary["loss_after"].notna()]  # fmt: skip
    if not len(pts):
        return None
    div, unit = human_bytes_unit(float(pts["peak_bytes"].max()))
    plist = list(pts.groupby(["run", "model"], sort=False))
    many_runs, many_models = pts["run"].nunique() > 1, pts["model"].nunique() > 1
    most = max(len(rows) for _, rows in plist)
    scale = min(1.0 + max(most - 8, 0) / 16, 1.8)  # room for the labels of a large matrix
    fig, axes = _grid(len(plist), width=6.4 * scale, height=4.8 * scale)
    methods: list[str] = []
    hollow = frontier = False
    labels = []
    for ax, ((run, model), rows) in zip(axes[0], plist, strict=True):
        labelled = []
        for p in rows.itertuples():
            x, y = p.peak_bytes / div, p.loss_after
            err = None
            if _ok(p.after_low) and _ok(p.after_high):
                err = [[max(y - p.after_low, 0)], [max(p.after_high - y, 0)]]
            color = precision_color(p.precision)
            ax.errorbar(x, y, yerr=err, fmt="none", ecolor=color, elinewidth=1.1, capsize=3,
                        zorder=2)  # fmt: skip
            ax.scatter(x, y, s=64, marker=adapter_marker(p.adapter), zorder=3,
                       color=color if p.all_ok else "white", edgecolor=color if not p.all_ok
                       else "black", linewidth=1.4 if not p.all_ok else 0.6)  # fmt: skip
            hollow |= not p.all_ok
            labelled.append((float(x), float(y), f"{p.precision}/{p.adapter}"))
            if adapter_method(p.adapter) not in methods:
                methods.append(adapter_method(p.adapter))
        xs = [x for x, _, _ in labelled]
        if max(xs) > 4 * max(min(xs), 1e-9):
            _log_scale(ax, "x")
        ax.margins(x=0.2, y=0.1)
        labels.append((ax, labelled))
        front = _pareto([(x, y) for x, y, _ in labelled], higher_better=False)
        if len(front) > 1:
            frontier = True
            ax.step(*zip(*front, strict=True), where="post", color="#555", linestyle="--",
                    linewidth=1, zorder=1)  # fmt: skip
        ax.set_xlabel(f"fine-tuning peak memory ({unit}; first training step)")
        ax.set_ylabel("held-out loss after (nats/token; lower is better)")
        parts = ([str(run)] if many_runs else []) + ([str(model)] if many_models else [])
        ax.set_title(" · ".join(parts))
    handles = [Line2D([], [], linestyle="none", marker=adapter_marker(m), color="#888",
                      markeredgecolor="black", markersize=7, label=m) for m in methods]
    if frontier:
        handles.append(Line2D([], [], color="#555", linestyle="--", label="Pareto frontier"))
    if hollow:
        handles.append(Line2D([], [], linestyle="none", marker="o", color="white",
                              markeredgecolor="#444", markersize=7,
                              label="hollow: not every seed ok"))  # fmt: skip
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    for ax, labelled in labels:
        _place_labels(ax, labelled)
    return fig
