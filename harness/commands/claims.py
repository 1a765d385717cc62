"""``harness claims``: each published claim against one or more results directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_STYLE = {"reproduced": "green", "not reproduced": "red", "not measured": "yellow"}


def check_claims(
    dirs: list[Path],
    *,
    registry: Path | None = None,
    labels: list[str] | None = None,
    console: Console | None = None,
) -> Any:
    """Print one line per claim, run and model; returns the verdict table."""
    from harness.report import load_runs
    from harness.report.claims import evaluate, load_claims, verdict_table

    console = console or Console()
    frame = load_runs(dirs, labels)
    verdicts = verdict_table(evaluate(load_claims(registry), frame))
    table = Table(title="Published claims", show_lines=True)
    for column in ("claim", "run", "verdict", "measured", "expected", "published", "note"):
        table.add_column(column, overflow="fold")
    for row in verdicts.itertuples(index=False):
        style = _STYLE.get(row.verdict, "")
        value = row.measured
        measured = "" if value is None or value != value else f"{value:g}"
        table.add_row(row.claim, row.run, f"[{style}]{row.verdict}[/]", measured, row.expected,
                      row.published, f"{row.note}\n[dim]scope: {row.scope}[/]")
    console.print(table)
    counts = verdicts["verdict"].value_counts().to_dict()
    console.print(", ".join(f"{n} {v}" for v, n in counts.items()))
    return verdicts
