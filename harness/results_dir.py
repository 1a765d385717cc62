"""The layout of a results directory, and which stored cells may stand for a new run.

```
results/NAME/cells/<cell_id>.json          the record (written atomically: the truth)
results/NAME/cells/.<cell_id>.pending.json where a cell process writes before it is stored
results/NAME/logs/<cell_id>.log            the cell's output
results/NAME/elsewhere/<fp>/cells/...      records from another environment, kept when replaced
results/NAME/damaged/<cell_id>.<time>.json damaged records, set aside before their cell reruns
results/NAME/.lock                         held by the one run writing here
```

Launchers, commands and reports ask this module for paths and decisions instead of
building them, so the layout lives in one place.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.config import Cell
from harness.errors import HarnessError
from harness.measure.env import differences, fingerprint, fingerprint_id
from harness.results import (
    FAILED,
    SCHEMA_VERSION,
    atomic_write_text,
    cell_path,
    read_record,
    record_fingerprint,
    warn_stderr,
    write_record,
)

ELSEWHERE = "elsewhere"
DAMAGED = "damaged"


@dataclass(frozen=True)
class ReusePolicy:
    """What a run may keep from earlier runs into the same directory."""

    force: bool = False
    """Measure every cell again."""
    retry_failed: bool = False
    """Measure error, oom and timeout cells again; keep ok and skipped ones."""
    keep_foreign: bool = False
    """Keep results measured in another environment (they are still flagged)."""
    hardware: bool = True
    """Compare the hardware part of the fingerprint too (False on Ray: nodes differ)."""


@dataclass(frozen=True)
class Decision:
    record: dict[str, Any] | None
    """The stored record to reuse, or None: run the cell."""
    foreign: list[str]
    """How the stored record's environment differs from this one (empty: same)."""


@lru_cache(maxsize=4)
def _here(device: str) -> tuple[tuple[str, Any], ...]:
    from harness.measure.env import collect

    return tuple(collect(device).items())


def current_fingerprint(device: str, *, hardware: bool = True) -> dict[str, Any]:
    """The fingerprint a cell on ``device`` would record if it ran in this process's place."""
    return fingerprint(dict(_here(device)), hardware=hardware)


class ResultsDir:
    """One results directory: where records, logs and pending files go, and what is reusable."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def record_path(self, cell: Cell) -> Path:
        return cell_path(self.root, cell)

    def pending_path(self, cell: Cell) -> Path:
        return self.root / "cells" / f".{cell.id}.pending.json"

    def log_path(self, cell: Cell) -> Path:
        return self.root / "logs" / f"{cell.id}.log"

    def record_paths(self) -> list[Path]:
        return sorted(
            p for p in (self.root / "cells").glob("*.json") if not p.name.startswith(".")
        )  # pending files are dot-files

    def write(self, cell: Cell, record: dict[str, Any]) -> Path:
        return write_record(self.root, cell, record)

    def write_log(self, cell: Cell, text: str) -> None:
        atomic_write_text(self.log_path(cell), text)

    def stored(self, cell: Cell) -> dict[str, Any] | None:
        """The stored record of exactly this cell, or None when absent, damaged or outdated."""
        path = self.record_path(cell)
        if not path.is_file():
            return None
        try:
            record = read_record(path)
        except HarnessError:
            return None
        if record["schema"] != SCHEMA_VERSION or record["cell"] != cell.model_dump(mode="json"):
            return None
        return record

    def decide(self, cell: Cell, policy: ReusePolicy) -> Decision:
        """Reuse the stored record, or run the cell (archiving a foreign record first)."""
        self._set_aside_if_damaged(cell)
        record = None if policy.force else self.stored(cell)
        if record is None:
            self._archive_if_foreign(cell, policy)
            return Decision(None, [])
        here = current_fingerprint(cell.device, hardware=policy.hardware)
        foreign = differences(record_fingerprint(record, hardware=policy.hardware), here)
        if (policy.retry_failed and record["status"] in FAILED) or (
            foreign and not policy.keep_foreign
        ):
            self._archive_if_foreign(cell, policy)
            return Decision(None, [])
        return Decision(record, foreign)

    def _set_aside_if_damaged(self, cell: Cell) -> Path | None:
        """Move an unreadable record to ``damaged/`` (and say so) so a rerun never replaces
        it unseen; returns where it went."""
        path = self.record_path(cell)
        if not path.is_file():
            return None
        try:
            read_record(path)
            return None
        except HarnessError as exc:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            target = self.root / DAMAGED / f"{path.stem}.{stamp}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            warn_stderr(f"{exc}; set aside as {target}, the cell runs again")
            return target

    def _archive_if_foreign(self, cell: Cell, policy: ReusePolicy) -> None:
        """Keep a record from another environment under ``elsewhere/`` before it is replaced."""
        path = self.record_path(cell)
        try:
            record = read_record(path)
        except HarnessError:
            return
        stored = record_fingerprint(record, hardware=policy.hardware)
        if not differences(stored, current_fingerprint(cell.device, hardware=policy.hardware)):
            return
        target = self.root / ELSEWHERE / fingerprint_id(record_fingerprint(record))
        atomic_write_text(target / "cells" / path.name, path.read_text())

    def clean_stale(self) -> list[Path]:
        """Remove pending and temporary files an interrupted run left; returns them."""
        stale = [
            *(self.root / "cells").glob(".*.pending.json"),
            *(self.root / "cells").glob(".*.tmp"),
            *(self.root / "logs").glob(".*.tmp"),
            *self.root.glob(".*.tmp"),
        ]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for one run; a second concurrent run is refused, not interleaved.

        The lock is an ``flock``, so a killed run releases it with its process.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise HarnessError(
                    f"results directory {self.root} is in use by another run (pid {holder}); "
                    "wait for it or choose another --out"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    def foreign_cells(self, records: list[dict[str, Any]] | None = None) -> dict[str, list[str]]:
        """cell id -> differences, for stored records measured in another environment."""
        out = {}
        for record in records if records is not None else self.records():
            device = record["cell"].get("device", "cpu")
            diff = differences(record_fingerprint(record), current_fingerprint(device))
            if diff:
                out[record["cell_id"]] = diff
        return out

    def records(self) -> list[dict[str, Any]]:
        """Every readable record; damaged files are skipped (``read_record`` names them)."""
        out = []
        for path in self.record_paths():
            try:
                out.append(read_record(path))
            except HarnessError:
                continue
        return out


def stored_status(out_dir: Path, cell: Cell) -> str | None:
    """Status of the stored result for ``cell``; None when there is none or it is unusable."""
    record = ResultsDir(out_dir).stored(cell)
    return record["status"] if record else None
