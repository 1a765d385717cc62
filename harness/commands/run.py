"""``harness run``: validate, expand, run the cells with a progress bar, collect, summarise."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness.commands.matrix_checks import check_matrix
from harness.config import check_device, expand, load_experiment
from harness.errors import HarnessError
from harness.results import FAILED, collect
from harness.results_dir import ReusePolicy
from harness.runner.matrix import LAUNCHERS, CellOutcome, run_cells
from harness.summary import cell_line, summary_table

EXIT_FAILED_CELLS = 3
"""``harness run`` exit code when any cell ended error, oom or timeout (2: bad input)."""


@dataclass(frozen=True)
class Launch:
    """Where the cells run: a launcher of ``runner.matrix.LAUNCHERS`` and its options."""

    launcher: str = "local"
    ray_address: str | None = None
    cpus_per_cell: int = 1

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            allowed = ", ".join(LAUNCHERS)
            raise HarnessError(f"unknown launcher '{self.launcher}'; allowed: {allowed}")
        if self.launcher != "ray" and (self.ray_address or self.cpus_per_cell != 1):
            raise HarnessError("--ray-address and --cpus-per-cell need --launcher ray")

    def run(
        self, cells: list, out_dir: Path, policy: ReusePolicy, **kw: Any
    ) -> list[CellOutcome]:
        if self.launcher == "ray":
            kw |= {"address": self.ray_address, "cpus_per_cell": self.cpus_per_cell}
            policy = ReusePolicy(policy.force, policy.retry_failed, policy.keep_foreign, False)
        return run_cells(self.launcher, cells, out_dir, policy, **kw)


@dataclass
class RunResult:
    """What ``run_experiment`` hands back: the table and the outcome of every cell."""

    frame: Any
    outcomes: list[CellOutcome]

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.record["status"] in FAILED]


def run_experiment(
    path: Path,
    *,
    out: Path | None = None,
    device: str | None = None,
    force: bool = False,
    retry_failed: bool = False,
    keep_foreign: bool = False,
    only: str | None = None,
    launch: Launch | None = None,
    console: Console | None = None,
) -> RunResult:
    """Run the matrix; cells measured elsewhere are run again unless ``keep_foreign``."""
    console = console or Console()
    launch = launch or Launch()
    exp = load_experiment(path)
    if device is not None:
        check_device(device)
    matrix = expand(exp, device)
    cells = matrix
    if only:
        cells = [c for c in matrix if fnmatch.fnmatch(c.id, only)]
        if not cells:
            raise HarnessError(f"--only '{only}' matches no cell of {exp.name}")
    out_dir = Path(out) if out else default_out(exp.name)
    check_writable(out_dir)
    check_matrix(cells)
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

        policy = ReusePolicy(force, retry_failed, keep_foreign)
        outcomes = launch.run(cells, out_dir, policy, on_start=on_start, on_done=on_done)
    frame = collect(out_dir, matrix)  # the whole matrix: --only never drops stored cells
    console.print(summary_table(frame, exp.name))
    result = RunResult(frame, outcomes)
    _print_totals(console, result, out_dir)
    return result


def _print_totals(console: Console, result: RunResult, out_dir: Path) -> None:
    outcomes = result.outcomes
    reused = sum(o.reused for o in outcomes)
    console.print(
        f"{len(outcomes) - reused} cells run, {reused} reused from earlier runs. "
        f"Results: {out_dir / 'results.parquet'} and {out_dir / 'results.csv'}"
    )
    foreign = [o for o in outcomes if o.foreign]
    if foreign:
        console.print(
            f"[yellow]{len(foreign)} reused cells were measured in another environment "
            f"(--keep-foreign): {', '.join(o.cell.id for o in foreign)}; "
            f"first difference: {foreign[0].foreign[0]}[/]",
            highlight=False,
        )
    if result.failed:
        console.print(
            f"[red]{len(result.failed)} cells ended error, oom or timeout "
            f"(exit code {EXIT_FAILED_CELLS}); rerun only them with --retry-failed[/]",
            highlight=False,
        )


def default_out(name: str) -> Path:
    """``./results/NAME`` under the current directory (never inside an installed package)."""
    return Path.cwd() / "results" / name


def check_writable(out_dir: Path) -> None:
    """A results directory that is a file, or that cannot be created or written, is bad input
    named by its path, found before any cell runs."""
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise HarnessError(f"results directory {out_dir}: {existing} is a file, not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise HarnessError(f"results directory {out_dir}: {existing} is not writable")


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
