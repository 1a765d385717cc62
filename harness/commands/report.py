"""``harness report``: figures, claims and tables from one or more results directories."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console

from harness.errors import HarnessError


def make_report(
    dirs: list[Path],
    *,
    out: Path | None = None,
    labels: list[str] | None = None,
    claims: Path | None = None,
    console: Console | None = None,
) -> dict[str, Path]:
    """Load the runs, write report.md / report.html and the figures, print where they are."""
    from harness.report import load_runs, run_labels
    from harness.report.render import write_report

    console = console or Console()
    frame = load_runs(dirs, labels)
    names = labels or run_labels(dirs)
    if out is None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", "+".join(names)).strip("-") or "report"
        out = Path("reports") / slug
    if out.exists() and not out.is_dir():
        raise HarnessError(f"report output {out} exists and is not a directory")
    from harness.report.claim_interval import load_samples
    from harness.report.finetune import load_records
    from harness.report.paired import paired_table

    # only the cells the results tables hold: a cells/ folder may keep records of cells
    # dropped from the experiment or measured by older code
    cell_ids = set(frame["cell_id"])
    paired = paired_table(list(dirs), list(names), cell_ids=cell_ids)
    paths = write_report(
        frame,
        out,
        title=f"Benchmark report: {', '.join(names)}",
        claims_path=claims,
        paired=paired,
        samples=load_samples(list(dirs), list(names)),
        finetune_records=load_records(list(dirs), list(names), cell_ids),
    )
    figures = sorted(p.name for p in out.glob("*.png"))
    console.print(f"report: {paths['markdown']} and {paths['html']} ({len(figures)} figures)")
    return paths
