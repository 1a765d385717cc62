"""Run a matrix on this machine: one subprocess per cell, each with a timeout.

A cell whose process crashes, is killed or runs out of time still gets a record (status
``error``, ``oom`` or ``timeout`` with the tail of its log), and the matrix goes on. Cells
with a stored, valid result are skipped unless ``force``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import Cell
from harness.measure.env import collect as collect_env
from harness.results import make_record, read_record, stored_status, write_record

OOM_MARKERS = ("out of memory", "MemoryError", "OutOfMemoryError")


@dataclass
class CellOutcome:
    cell: Cell
    record: dict[str, Any]
    reused: bool
    """True when a stored result was kept instead of running the cell."""


def run_matrix(
    cells: Iterable[Cell],
    out_dir: Path,
    *,
    force: bool = False,
    on_start: Callable[[Cell], None] | None = None,
    on_done: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    outcomes = []
    for cell in cells:
        if not force and stored_status(out_dir, cell) is not None:
            outcome = CellOutcome(cell, read_record(out_dir / "cells" / f"{cell.id}.json"), True)
        else:
            if on_start:
                on_start(cell)
            outcome = CellOutcome(cell, run_in_subprocess(cell, out_dir), False)
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    return outcomes


def run_in_subprocess(cell: Cell, out_dir: Path) -> dict[str, Any]:
    """Run ``cell`` in a fresh interpreter and store its record; never raises for cell faults."""
    pending = out_dir / "cells" / f".{cell.id}.pending.json"
    log_path = out_dir / "logs" / f"{cell.id}.log"
    record = execute_cell(cell, pending, log_path)
    write_record(out_dir, cell, record)
    return record


def execute_cell(cell: Cell, pending: Path, log_path: Path) -> dict[str, Any]:
    """Run ``cell`` in a fresh interpreter; its record, or a failure record if it died.

    The worker writes its record to ``pending`` and its output to ``log_path``; the
    Ray launcher calls this on a cluster node with scratch paths.
    """
    pending.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pending.unlink(missing_ok=True)
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.runner.worker", str(pending)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        timed_out = _wait(proc, cell.model_dump_json(), cell.timeout_s)
    if pending.is_file() and not timed_out:
        record = json.loads(pending.read_text())
        pending.unlink()
        return record
    return _failure_record(cell, proc.returncode, timed_out, log_path, started)


def _wait(proc: subprocess.Popen, stdin: str, timeout_s: float) -> bool:
    """Feed the cell, wait; on timeout kill the whole process group. True if it timed out."""
    try:
        proc.communicate(stdin.encode(), timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _failure_record(
    cell: Cell, returncode: int | None, timed_out: bool, log_path: Path, started: float
) -> dict[str, Any]:
    tail = _tail(log_path)
    if timed_out:
        status, error = "timeout", f"cell exceeded its timeout of {cell.timeout_s:g} s"
    elif returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        status = "oom"
        error = "process killed by SIGKILL, most likely the out-of-memory killer"
    elif any(marker in tail for marker in OOM_MARKERS):
        status, error = "oom", f"out of memory (exit code {returncode})"
    else:
        status, error = "error", f"cell process died with exit code {returncode}"
    if tail:
        error += f"; log {log_path.name} ends with: {tail}"
    return make_record(
        cell,
        status,
        [],
        error=error,
        env=collect_env(cell.device),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(started)),
        duration_s=time.time() - started,
    )


def _tail(path: Path, lines: int = 6, chars: int = 800) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-chars:]
