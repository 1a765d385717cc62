"""Subprocess entry point: read a cell as JSON on stdin, run it, write its record atomically.

``python -m harness.runner.worker RESULT_PATH``. One process per cell keeps measurements
independent (allocator state, peak RSS, imported kernels) and lets the parent survive crashes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from pathlib import Path

from harness.config import Cell
from harness.results import atomic_write_text

FAULT_ENV = "HARNESS_INJECT_FAULT"


def _inject_fault(cell: Cell) -> None:
    """Test hook for the runner's failure handling: ``crash:GLOB``, ``hang:GLOB``, ``oom:GLOB``.

    Matching cells abort the interpreter, sleep forever or raise MemoryError, so tests can
    check that a broken cell becomes a row and the matrix goes on.
    """
    spec = os.environ.get(FAULT_ENV, "")
    kind, _, pattern = spec.partition(":")
    if not spec or not fnmatch.fnmatch(cell.id, pattern or "*"):
        return
    if kind == "crash":
        os.abort()
    if kind == "hang":
        time.sleep(10**6)
    if kind == "oom":
        raise MemoryError("injected out-of-memory")


def main() -> None:
    result_path = Path(sys.argv[1])
    cell = Cell.model_validate_json(sys.stdin.read())
    _inject_fault(cell)
    from harness.runner.cell import run_cell

    record = run_cell(cell)
    atomic_write_text(result_path, json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
