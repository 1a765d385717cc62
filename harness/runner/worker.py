"""Subprocess entry point: read a cell as JSON on stdin, run it, write its record atomically.

``python -m harness.runner.worker RESULT_PATH PARENT_PID``. One process per cell keeps
measurements independent (allocator state, peak RSS, imported kernels) and lets the parent
survive crashes. The cell leads its own process group and ends that group when its parent
dies, so a killed driver leaves nothing computing (see ``die_with_parent``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from harness.config import Cell
from harness.results import atomic_write_text

FAULT_ENV = "HARNESS_INJECT_FAULT"


def _inject_fault(cell: Cell) -> None:
    """Test hook for the runner: ``crash:GLOB``, ``hang:GLOB``, ``oom:GLOB``, ``slow:GLOB``.

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
    if kind == "slow":  # a few seconds of "work" before the real cell, for interrupt tests
        time.sleep(float(os.environ.get(FAULT_ENV + "_SECONDS", "3")))
    if kind == "oom":
        raise MemoryError("injected out-of-memory")


PR_SET_PDEATHSIG = 1
WATCHDOG_PERIOD_S = 0.5


ENDED_BY_SIGNAL = "harness: cell ended by SIGTERM (its driver is gone or it was signalled)"
"""Written to the cell's log before the group is killed, so the driver does not read the
SIGKILL that follows as the out-of-memory killer's."""


def _end_group(*_: object) -> None:
    """SIGKILL this process group: the cell and anything it started (it leads the group)."""
    os.write(2, (ENDED_BY_SIGNAL + "\n").encode())
    os.killpg(os.getpgrp(), signal.SIGKILL)


def die_with_parent(parent: int) -> None:
    """End this cell's process group as soon as ``parent`` (the driver) is gone.

    On Linux the kernel sends SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), which ends
    the group. A watchdog thread that sees the parent change is the fallback elsewhere and
    covers a handler delayed by a long native call. A parent already gone ends it at once.
    """
    signal.signal(signal.SIGTERM, _end_group)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        _end_group()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCHDOG_PERIOD_S)
        _end_group()

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def main() -> None:
    result_path = Path(sys.argv[1])
    if len(sys.argv) > 2:
        die_with_parent(int(sys.argv[2]))
    cell = Cell.model_validate_json(sys.stdin.read())
    _inject_fault(cell)
    from harness.runner.cell import run_cell

    record = run_cell(cell)
    atomic_write_text(result_path, json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
