"""The report's first screen: what was run, one row per precision x adapter, the verdicts.

Rows are the summary's per-cell key metrics (``summary.wide``, the columns ``harness show``
prints) averaged over a precision x adapter's seeds, plus the largest inference phase peak and
the perplexity interval of the first seed's cell (over windows). A column appears only where
some cell measured it.
"""

from __future__ import annotations

from typing import Any

from harness.summary import KEY_METRICS, SCALE, wide

HEADLINE = ["bits/param", "stored MB", "ppl", "inference peak MB", "train peak MB",
            "finetune peak MB", "prefill tok/s", "decode tok/s", "KL vs fp32",
            "held-out loss after", "exact match after"]
PEAKS = ("prefill_peak_bytes", "decode_peak_bytes")
FORMATS = {title: (fmt, SCALE.get(metric, 1.0)) for metric, _, title, fmt in KEY_METRICS}
FORMATS["inference peak MB"] = ("{:.0f}", 1e-6)


def headline_table(frame: Any) -> Any:
    """One row per run, model, precision and adapter (matrix order), the key figures."""
    import pandas as pd

    ok = frame[frame["cell_status"].isin(["ok", "diverged", "no_learning"])]
    rows = []
    for run, part in ok.groupby("run", sort=False):
        view = wide(part)
        peaks = part[part["metric"].isin(PEAKS)].groupby("cell_id")["value"].max()
        view["inference peak MB"] = view["cell_id"].map(peaks)
        ppl = part[part["metric"] == "perplexity"].drop_duplicates("cell_id")
        for (model, precision, adapter), cells in view.groupby(
                ["model", "precision", "adapter"], sort=False):
            row = {"run": run, "model": model, "precision": precision, "adapter": adapter,
                   "seeds": len(cells)}
            for title in HEADLINE:
                values = cells[title].dropna() if title in cells else []
                if len(values):
                    fmt, scale = FORMATS[title]
                    row[title] = fmt.format(float(values.mean()) * scale)
            first = ppl[ppl["cell_id"].isin(cells["cell_id"])]
            if "ppl" in row and len(first) and pd.notna(first.iloc[0].get("ci_low")):
                row["ppl"] += f" [{first.iloc[0]['ci_low']:.2f}, {first.iloc[0]['ci_high']:.2f}]"
            statuses = sorted(set(cells["cell_status"]) - {"ok"})
            row["status"] = ", ".join(statuses) if statuses else "ok"
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for column, single in (("run", 1), ("model", 1)):
        if table[column].nunique() == single:
            table = table.drop(columns=column)
    if (table["seeds"] == 1).all():
        table = table.drop(columns="seeds")
    return table.rename(columns={"ppl": "perplexity"})


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
