"""``harness claims``: each published claim against one or more results directories.

Two tables: one verdict per claim from all the runs given (``claims.combine``), and apart from
them the predictions at the published scale (memory model on the published architecture, with
its measured error band).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_STYLE = {"reproduced": "green", "not reproduced": "red", "not measured": "yellow",
          "predicted: holds": "green", "predicted: fails": "red"}


def _styled(verdict: str) -> str:
    style = _STYLE.get(verdict.split(" (")[0], "yellow" if "undecided" in verdict else "white")
    return f"[{style}]{escape(verdict)}[/]"


def _measured_table(verdicts: Any) -> Table:
    table = Table(title="Published claims: measured on these runs", show_lines=True)
    for column in ("claim", "run", "verdict", "measured", "expected", "published", "note"):
        table.add_column(column, overflow="fold")
    for row in verdicts.itertuples(index=False):
        value = row.measured
        measured = "" if value is None or value != value else f"{value:g}"
        if row.interval:
            measured += f"\n{escape(row.interval)}"
        cells = f"\n[dim]cells: {escape(row.cells)}[/]" if row.cells else ""
        table.add_row(row.claim, row.run, _styled(row.verdict), measured, escape(row.expected),
                      escape(row.published),
                      f"{escape(row.note)}\n[dim]scope: {escape(row.scope)}[/]{cells}")
    return table


def _predicted_table(predicted: Any) -> Table:
    table = Table(title="Published claims: predicted at scale (memory model, not measured)",
                  show_lines=True)
    for column in ("claim", "verdict", "prediction", "setting", "note"):
        table.add_column(column, overflow="fold")
    for row in predicted.itertuples(index=False):
        table.add_row(row.claim, _styled(row.verdict), escape(row.prediction),
                      escape(row.setting), escape(row.note))
    return table


def check_claims(
    dirs: list[Path],
    *,
    registry: Path | None = None,
    labels: list[str] | None = None,
    console: Console | None = None,
    as_json: bool = False,
) -> Any:
    """Print one verdict per claim from all the runs given (the claims no run measured in one
    line) and the predictions at scale; returns the verdict table. ``as_json`` prints both
    tables as one JSON object instead."""
    from harness.report import load_runs, run_labels
    from harness.report.claim_interval import load_samples
    from harness.report.claims import NOT_MEASURED, combine, evaluate, load_claims, verdict_table
    from harness.report.claims_scale import at_scale_table, measured_error_band

    console = console or Console()
    frame = load_runs(dirs, labels)
    claims = load_claims(registry)
    samples = load_samples(list(dirs), labels or run_labels(dirs))
    verdicts = verdict_table(combine(evaluate(claims, frame, samples)))
    predicted = at_scale_table(claims, measured_error_band(frame))
    if as_json:
        print(json.dumps({"measured": verdicts.to_dict(orient="records"),
                          "predicted_at_scale": predicted.to_dict(orient="records")},
                         indent=1, default=str))
        return verdicts
    unmeasured = verdicts[verdicts["verdict"] == NOT_MEASURED]
    measured = verdicts[verdicts["verdict"] != NOT_MEASURED]
    if len(measured):
        console.print(_measured_table(measured))
    counts = measured["verdict"].value_counts().to_dict()
    console.print(", ".join(f"{n} {v}" for v, n in counts.items()) or "no claim measured")
    if len(unmeasured):
        console.print(f"Not measured by these runs ({len(unmeasured)}): "
                      + ", ".join(dict.fromkeys(unmeasured["claim"])), highlight=False)
    if len(predicted):
        console.print(_predicted_table(predicted))
    return verdicts
