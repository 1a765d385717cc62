"""Human summaries: one line per finished cell, and a wide table of the key metrics."""

from __future__ import annotations

from typing import Any

from rich.table import Table

# (metric, stat, column title, format)
KEY_METRICS = [
    ("bits_per_param", None, "bits/param", "{:.2f}"),
    ("bytes.total", None, "stored MB", "{:.0f}"),
    ("perplexity", None, "ppl", "{:.3f}"),
    ("prefill_tokens_per_s", "median", "prefill tok/s", "{:.0f}"),
    ("decode_tokens_per_s", "median", "decode tok/s", "{:.1f}"),
    ("kl_divergence", None, "KL vs fp32", "{:.4f}"),
    ("train_tokens_per_s", "median", "train tok/s", "{:.0f}"),
    ("train_peak_bytes", None, "train peak MB", "{:.0f}"),
    ("heldout_loss_before", None, "held-out loss before", "{:.3f}"),
    ("heldout_loss_after", None, "held-out loss after", "{:.3f}"),
    ("heldout_exact_match_after", None, "exact match after", "{:.2f}"),
    ("finetune_peak_bytes", None, "finetune peak MB", "{:.0f}"),
]
SCALE = {"bytes.total": 1e-6, "train_peak_bytes": 1e-6, "finetune_peak_bytes": 1e-6}
_MARK = {"ok": "[green]✓[/]", "skipped": "[yellow]-[/]", "diverged": "[red]↯[/]",
         "no_learning": "[yellow]=[/]"}  # fmt: skip


def _value(rows: list[dict[str, Any]], metric: str, stat: str | None) -> float | None:
    for row in rows:
        if row.get("metric") == metric and (stat is None or row.get("stat") == stat):
            return row.get("value")
    return None


def _fmt(metric: str, value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value * SCALE.get(metric, 1.0))


def cell_line(outcome: Any) -> str:
    record = outcome.record
    status = record["status"]
    mark = _MARK.get(status, "[red]✗[/]")
    parts = [f"{mark} {outcome.cell.id}", status]
    if outcome.reused:
        parts.append("(stored result)")
    elif record.get("duration_s") is not None:
        parts.append(f"{record['duration_s']:.1f}s")
    for metric, stat, title, fmt in KEY_METRICS:
        text = _fmt(metric, _value(record["rows"], metric, stat), fmt)
        if text:
            parts.append(f"{title} {text}")
    if status != "ok" and record.get("error"):
        parts.append(f"[dim]{record['error'][:160]}[/]")
    capped = [r for r in record["rows"] if r.get("metric") == "budget.capped"]
    parts += [f"[yellow]capped budget: {r['method'][:200]}[/]" for r in capped]
    failed = [r for r in record["rows"] if r.get("status", "ok") != "ok"]
    parts += [f"[red]{r['workload']}: {r.get('error', '')[:120]}[/]" for r in failed]
    return "  ".join(parts)


def wide(frame: Any) -> Any:
    """One row per cell with the key metrics as columns (derived, never stored)."""
    import pandas as pd

    if frame.empty:
        return frame
    cells = frame.drop_duplicates("cell_id")[
        ["cell_id", "model", "precision", "adapter", "seed", "cell_status", "storage"]
    ].set_index("cell_id")
    for metric, stat, title, _ in KEY_METRICS:
        sel = frame[frame["metric"] == metric]
        if stat is not None:
            sel = sel[sel["stat"] == stat]
        cells[title] = sel.set_index("cell_id")["value"]
    return cells.reset_index().astype({"seed": "int64"}) if len(cells) else pd.DataFrame()


def summary_table(frame: Any, title: str) -> Table:
    table = Table(title=f"{title}: summary")
    if frame.empty:
        return table
    view = wide(frame)
    columns = ["model", "precision", "adapter", "cell_status"] + _present(view)
    for column in columns:
        table.add_column(column, justify="right" if column in _titles() else "left")
    for _, row in view.iterrows():
        table.add_row(*(_cell_text(row, c) for c in columns))
    return table


def _present(view: Any) -> list[str]:
    """Metric columns with at least one value, so a summary shows only what was measured."""
    return [m[2] for m in KEY_METRICS if m[2] in view and view[m[2]].notna().any()]


def _titles() -> set[str]:
    return {m[2] for m in KEY_METRICS}


def _cell_text(row: Any, column: str) -> str:
    value = row.get(column)
    if column not in _titles():
        return str(value)
    metric, _, _, fmt = next(m for m in KEY_METRICS if m[2] == column)
    return "" if value is None or value != value else _fmt(metric, float(value), fmt)


def markdown_table(frame: Any) -> str:
    """The summary as a Markdown table (for READMEs and reports)."""
    view = wide(frame)
    columns = ["precision", "adapter", "cell_status"] + _present(view)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in view.iterrows():
        lines.append("| " + " | ".join(_cell_text(row, c) for c in columns) + " |")
    return "\n".join(lines)
