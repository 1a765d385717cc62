"""Run a matrix on this machine: one subprocess per cell, one cell at a time.

A cell whose process crashes, is killed or runs out of time still gets a record (status
``error``, ``oom`` or ``timeout`` with the tail of its log), and the matrix goes on. Which
stored results are kept is the ``ReusePolicy``'s call (see ``harness.results_dir``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness.config import Cell
from harness.results_dir import ResultsDir, ReusePolicy
from harness.runner.isolation import execute_cell
from harness.runner.matrix import CellOutcome, reuse_stored, run_cells


def run_matrix(
    cells: Iterable[Cell],
    out_dir: Path,
    *,
    force: bool = False,
    retry_failed: bool = False,
    keep_foreign: bool = False,
    on_start: Callable[[Cell], None] | None = None,
    on_done: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    """Run ``cells`` locally into ``out_dir`` (locked, stale files cleaned, interrupts safe)."""
    policy = ReusePolicy(force=force, retry_failed=retry_failed, keep_foreign=keep_foreign)
    return run_cells("local", list(cells), out_dir, policy, on_start=on_start, on_done=on_done)


def run_local(
    cells: list[Cell],
    results: ResultsDir,
    policy: ReusePolicy,
    *,
    on_start: Callable[[Cell], None] | None = None,
    on_done: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    """The ``local`` launcher: stored results first, then each remaining cell in turn."""
    done, todo = reuse_stored(cells, results, policy, on_done)
    for cell in todo:
        if on_start:
            on_start(cell)
        done[cell.id] = CellOutcome(cell, run_in_subprocess(cell, results), False)
        if on_done:
            on_done(done[cell.id])
    return [done[cell.id] for cell in cells]


def run_in_subprocess(cell: Cell, results: ResultsDir) -> dict[str, Any]:
    """Run ``cell`` in a fresh interpreter and store its record; never raises for cell faults."""
    record = execute_cell(cell, results.pending_path(cell), results.log_path(cell))
    results.write(cell, record)
    return record
