"""The report's first screen: what was run, one row per precision x adapter, the verdicts.

Rows average a precision x adapter's seeds (a single-seed cell is shown as measured); the
perplexity interval is the cell's own (over windows), the held-out loss the mean over seeds.
A column appears only where some cell measured it.
"""

from __future__ import annotations

from typing import Any

# (column title, metrics whose largest value is shown, scale, decimals)
COLUMNS = [
    ("bits/param", ("bits_per_param",), 1.0, 2),
    ("stored MB", ("bytes.total",), 1e-6, 0),
    ("inference peak MB", ("prefill_peak_bytes", "decode_peak_bytes"), 1e-6, 0),
    ("training peak MB", ("train_peak_bytes", "finetune_peak_bytes"), 1e-6, 0),
    ("prefill tok/s", ("prefill_tokens_per_s",), 1.0, 0),
    ("decode tok/s", ("decode_tokens_per_s",), 1.0, 1),
    ("KL vs fp32", ("kl_divergence",), 1.0, 4),
    ("held-out loss after", ("heldout_loss_after",), 1.0, 3),
    ("exact match after", ("heldout_exact_match_after",), 1.0, 2),
]
SPEED = {"prefill_tokens_per_s", "decode_tokens_per_s"}
"""Throughput has one row per statistic; the headline shows the median."""


def _rows(frame: Any, metrics: tuple[str, ...]) -> Any:
    sel = frame[frame["metric"].isin(metrics)]
    if metrics[0] in SPEED:
        sel = sel[sel["stat"] == "median"]
    return sel


def headline_table(frame: Any) -> Any:
    """One row per run, model, precision and adapter (matrix order), the key figures."""
    import pandas as pd

    keys = ["run", "model", "precision", "adapter"]
    ok = frame[frame["cell_status"].isin(["ok", "diverged", "no_learning"])]
    groups = ok.groupby(keys, sort=False)
    rows = []
    for key, group in groups:
        row = dict(zip(keys, key, strict=True))
        row["seeds"] = group["seed"].nunique()
        for title, metrics, scale, decimals in COLUMNS:
            sel = _rows(group, metrics)
            if not len(sel):
                continue
            per_cell = sel.groupby("cell_id")["value"].max()
            row[title] = f"{float(per_cell.mean()) * scale:.{decimals}f}"
        ppl = group[group["metric"] == "perplexity"]
        if len(ppl):
            first = ppl.iloc[0]
            interval = ""
            if pd.notna(first.get("ci_low")) and pd.notna(first.get("ci_high")):
                interval = f" [{first['ci_low']:.2f}, {first['ci_high']:.2f}]"
            row["perplexity"] = f"{ppl['value'].mean():.3f}{interval}"
        statuses = sorted(set(group["cell_status"]) - {"ok"})
        row["status"] = ", ".join(statuses) if statuses else "ok"
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if table["run"].nunique() == 1:
        table = table.drop(columns="run")
    if table["model"].nunique() == 1:
        table = table.drop(columns="model")
    if (table["seeds"] == 1).all():
        table = table.drop(columns="seeds")
    order = [c for c in table.columns if c not in ("perplexity", "status")]
    at = order.index("bits/param") + 1 if "bits/param" in order else len(order)
    extra = ["perplexity"] if "perplexity" in table else []
    return table[order[:at] + extra + order[at:] + ["status"]]


def verdict_lines(verdicts: Any) -> list[str]:
    """One line per measured claim: id, verdict, measured value and interval."""
    lines = []
    for row in verdicts.itertuples(index=False):
        if row.verdict == "not measured":
            continue
        value = "" if row.measured is None or row.measured != row.measured else (
            f": {row.measured:g}" + (f" {row.interval}" if row.interval else ""))
        lines.append(f"{row.claim}: {row.verdict}{value}")
    return lines
