"""``harness run``: validate, expand, run the cells with a progress bar, collect, summarise."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness.config import expand, load_experiment
from harness.errors import HarnessError
from harness.paths import repo_root
from harness.results import collect
from harness.runner.local import CellOutcome, run_matrix
from harness.summary import cell_line, summary_table

LAUNCHERS = ("local", "ray")


@dataclass(frozen=True)
class Launch:
    """Where the cells run: ``local`` (one at a time here) or ``ray`` (concurrent tasks)."""

    launcher: str = "local"
    ray_address: str | None = None
    cpus_per_cell: int = 1

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            allowed = ", ".join(LAUNCHERS)
            raise HarnessError(f"unknown launcher '{self.launcher}'; allowed: {allowed}")
        if self.launcher != "ray" and (self.ray_address or self.cpus_per_cell != 1):
            raise HarnessError("--ray-address and --cpus-per-cell need --launcher ray")

    def run(self, cells: list, out_dir: Path, **kw: Any) -> list[CellOutcome]:
        if self.launcher == "local":
            return run_matrix(cells, out_dir, **kw)
        from harness.runner.ray_cluster import run_matrix_ray

        return run_matrix_ray(
            cells, out_dir, address=self.ray_address, cpus_per_cell=self.cpus_per_cell, **kw
        )


def run_experiment(
    path: Path,
    *,
    out: Path | None = None,
    device: str | None = None,
    force: bool = False,
    only: str | None = None,
    launch: Launch | None = None,
    console: Console | None = None,
) -> Any:
    console = console or Console()
    launch = launch or Launch()
    exp = load_experiment(path)
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise HarnessError(f"unknown device '{device}'; allowed: auto, cpu, cuda")
    cells = expand(exp, device)
    if only:
        cells = [c for c in cells if fnmatch.fnmatch(c.id, only)]
        if not cells:
            raise HarnessError(f"--only '{only}' matches no cell of {exp.name}")
    out_dir = out or _default_out(exp.name)
    where = "" if launch.launcher == "local" else f" on Ray ({launch.cpus_per_cell} cores/cell)"
    console.print(f"[bold]{exp.name}[/]: {len(cells)} cells{where} -> {out_dir}")
    with _progress(console) as progress:
        task = progress.add_task("cells", total=len(cells), cell="")

        running: set[str] = set()

        def show_running() -> None:
            # local runs one cell at a time; Ray queues them all at once: count those not yet done
            label = next(iter(running)) if len(running) == 1 else f"{len(running)} cells in flight"
            progress.update(task, cell=label if running else "")

        def on_start(cell: Any) -> None:
            running.add(cell.id)
            show_running()

        def on_done(outcome: CellOutcome) -> None:
            running.discard(outcome.cell.id)
            show_running()
            progress.console.print(cell_line(outcome), highlight=False)
            progress.advance(task)

        outcomes = launch.run(cells, out_dir, force=force, on_start=on_start, on_done=on_done)
    frame = collect(out_dir, cells)
    console.print(summary_table(frame, exp.name))
    reused = sum(o.reused for o in outcomes)
    console.print(
        f"{len(outcomes) - reused} cells run, {reused} reused from earlier runs. "
        f"Results: {out_dir / 'results.parquet'} and {out_dir / 'results.csv'}"
    )
    return frame


def _default_out(name: str) -> Path:
    root = Path.cwd() if (Path.cwd() / "experiments").is_dir() else repo_root()
    return root / "results" / name


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[cell]}"),
        console=console,
    )
