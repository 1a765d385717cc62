"""What every launcher shares: outcomes, the reuse pass over stored results, the registry.

A launcher is ``run(cells, results, policy, on_start=, on_done=, **options)`` returning one
``CellOutcome`` per cell in matrix order; ``LAUNCHERS`` names them for the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.config import Cell
from harness.errors import HarnessError
from harness.results_dir import ResultsDir, ReusePolicy

LAUNCHERS = {
    "local": "harness.runner.local:run_local",
    "ray": "harness.runner.ray_cluster:run_ray",
}


@dataclass
class CellOutcome:
    cell: Cell
    record: dict[str, Any]
    reused: bool
    """True when a stored result was kept instead of running the cell."""
    foreign: list[str] = field(default_factory=list)
    """For a reused result: how its environment differs from this one (empty: same)."""


def get_launcher(name: str) -> Callable[..., list[CellOutcome]]:
    if name not in LAUNCHERS:
        raise HarnessError(f"unknown launcher '{name}'; allowed: {', '.join(LAUNCHERS)}")
    module, _, attr = LAUNCHERS[name].partition(":")
    import importlib

    return getattr(importlib.import_module(module), attr)


def reuse_stored(
    cells: Iterable[Cell],
    results: ResultsDir,
    policy: ReusePolicy,
    on_done: Callable[[CellOutcome], None] | None,
) -> tuple[dict[str, CellOutcome], list[Cell]]:
    """Outcomes of cells whose stored result stands (reported at once), and the cells to run."""
    done: dict[str, CellOutcome] = {}
    todo = []
    for cell in cells:
        decision = results.decide(cell, policy)
        if decision.record is None:
            todo.append(cell)
            continue
        done[cell.id] = CellOutcome(cell, decision.record, True, decision.foreign)
        if on_done:
            on_done(done[cell.id])
    return done, todo


def run_cells(
    launcher: str,
    cells: list[Cell],
    out_dir: Any,
    policy: ReusePolicy,
    **options: Any,
) -> list[CellOutcome]:
    """Run a matrix with the named launcher: the directory locked, stale files removed first,
    and SIGINT/SIGTERM/SIGHUP raising ``Interrupted`` after the running cells are ended."""
    from harness.runner.isolation import interrupts_raise

    run = get_launcher(launcher)
    results = ResultsDir(out_dir)
    with results.lock():
        results.clean_stale()
        with interrupts_raise():
            return run(cells, results, policy, **options)
