"""One cell in its own process group: timeout, crash and OOM capture, and no orphans.

The cell process starts a new session so a terminal's Ctrl-C reaches only the driver, which
then ends the whole group itself: an interrupt never leaves a cell computing. If the driver
dies without that chance (SIGKILL, a crash), the cell notices by itself (see
``harness.runner.worker``) and ends its group too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from harness.config import Cell
from harness.measure.env import collect as collect_env
from harness.results import make_record
from harness.runner.worker import ENDED_BY_SIGNAL

OOM_MARKERS = ("out of memory", "MemoryError", "OutOfMemoryError")


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP reached the driver; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``Interrupted`` while a matrix runs.

    SIGTERM and SIGHUP would otherwise end the driver without running any cleanup, leaving its
    cell running. Outside the main thread handlers cannot be set; there it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    before = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def execute_cell(cell: Cell, pending: Path, log_path: Path) -> dict[str, Any]:
    """Run ``cell`` in a fresh interpreter; its record, or a failure record if it died.

    The worker writes its record to ``pending`` and its output to ``log_path``; the Ray
    launcher calls this on a cluster node with scratch paths. Any exception here (an
    interrupt above all) kills the cell's process group and removes ``pending`` first.
    """
    pending.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pending.unlink(missing_ok=True)
    started = time.time()
    command = [sys.executable, "-m", "harness.runner.worker", str(pending), str(os.getpid())]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            timed_out = _wait(proc, cell.model_dump_json(), cell.timeout_s)
        except BaseException:
            kill_group(proc)
            pending.unlink(missing_ok=True)
            raise
    if pending.is_file() and not timed_out:
        record = json.loads(pending.read_text())
        pending.unlink()
        return record
    pending.unlink(missing_ok=True)
    return failure_record(cell, proc.returncode, timed_out, log_path, started)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the cell's whole process group (the cell leads it) and reap the cell."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait(proc: subprocess.Popen, stdin: str, timeout_s: float) -> bool:
    """Feed the cell, wait; on timeout kill the whole process group. True if it timed out."""
    try:
        proc.communicate(stdin.encode(), timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        return True


def failure_record(
    cell: Cell, returncode: int | None, timed_out: bool, log_path: Path, started: float
) -> dict[str, Any]:
    tail = _tail(log_path)
    if timed_out:
        status, error = "timeout", f"cell exceeded its timeout of {cell.timeout_s:g} s"
    elif ENDED_BY_SIGNAL in tail:
        status, error = "error", ENDED_BY_SIGNAL.removeprefix("harness: ")
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
