"""The results store: one JSON per cell, written atomically, collected into a tidy table.

The per-cell JSON is the truth; ``results.parquet`` and ``results.csv`` are rebuilt from it.
The table is long: one row per cell x metric, with the cell's settings and environment
repeated on every row so any row stands on its own.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.adapter_names import adapter_rank
from harness.config import Cell
from harness.errors import HarnessError
from harness.measure.env import fingerprint, fingerprint_id

SCHEMA_VERSION = 1
STATUSES = ("ok", "skipped", "diverged", "no_learning", "error", "oom", "timeout")
LEARNING = ("diverged", "no_learning")
"""Outcomes of a fine-tuning run that finished but did not learn: measured, not failed, and
never reported as ``ok``."""
FINISHED = ("ok", "skipped", *LEARNING)
FAILED = ("error", "oom", "timeout")
ROW_FIELDS = [
    "workload",
    "metric",
    "value",
    "unit",
    "stat",
    "n",
    "ci_low",
    "ci_high",
    "method",
    "protocol",
    "status",
    "error",
]
CELL_FIELDS = [
    "experiment",
    "cell_id",
    "model",
    "precision",
    "precision_options",
    "storage",
    "adapter",
    "rank",
    "seed",
    "cell_status",
    "started_at",
    "duration_s",
    "env_fingerprint",
]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    A reader sees the old file or the new one, never half of one; an interrupted write leaves
    at most a ``.<name>.*.tmp`` file, which ``ResultsDir.clean_stale`` removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE & ~_umask())  # mkstemp makes 0600; results are read like logs
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


FILE_MODE = 0o666
"""Mode of every file the store writes, less the umask (what ``open`` would give)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def cell_path(out_dir: Path, cell: Cell) -> Path:
    return out_dir / "cells" / f"{cell.id}.json"


def make_record(
    cell: Cell,
    status: str,
    rows: list[dict[str, Any]],
    *,
    error: str | None = None,
    env: dict[str, Any] | None = None,
    storage: str | None = None,
    started_at: str | None = None,
    duration_s: float | None = None,
) -> dict[str, Any]:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not in {STATUSES}")
    return {
        "schema": SCHEMA_VERSION,
        "cell_id": cell.id,
        "cell": cell.model_dump(mode="json"),
        "status": status,
        "error": error,
        "storage": storage,
        "env": env or {},
        "fingerprint": fingerprint(env) if env else None,
        "started_at": started_at,
        "duration_s": duration_s,
        "rows": [_clean_row(r) for r in rows],
    }


def _clean_row(row: dict[str, Any]) -> dict[str, Any]:
    value = row.get("value")
    if isinstance(value, float) and not math.isfinite(value):
        row = {**row, "value": None, "status": row.get("status", "error")}
    return row


def write_record(out_dir: Path, cell: Cell, record: dict[str, Any]) -> Path:
    path = cell_path(out_dir, cell)
    atomic_write_text(path, json.dumps(record, indent=1, default=str))
    return path


def read_record(path: Path) -> dict[str, Any]:
    """Load one cell JSON; a damaged file raises HarnessError naming it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"corrupt results file {path}: {exc}") from None
    missing = {"schema", "cell_id", "cell", "status", "rows"} - set(record)
    if missing or record.get("status") not in STATUSES:
        raise HarnessError(f"corrupt results file {path}: missing or bad keys {sorted(missing)}")
    return record


def record_fingerprint(record: dict[str, Any], *, hardware: bool = True) -> dict[str, Any]:
    """Where a record was measured: the fingerprint keys of its env (the ``fingerprint`` a
    record also stores is for readers of the file; this recomputes it so that ``hardware=False``
    can leave the hardware keys out)."""
    return fingerprint(record.get("env") or {}, hardware=hardware)


def record_fingerprint_id(record: dict[str, Any]) -> str | None:
    return fingerprint_id(record_fingerprint(record)) if record.get("env") else None


def record_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten one cell record into tidy rows (a failed cell with no metrics keeps one row)."""
    cell = record["cell"]
    base = {
        "experiment": cell["experiment"],
        "cell_id": record["cell_id"],
        "model": cell["model"],
        "precision": cell["precision"],
        "precision_options": json.dumps(cell["precision_options"], sort_keys=True),
        "storage": record.get("storage"),
        "adapter": cell["adapter"],
        "rank": adapter_rank(cell["adapter"]),
        "seed": cell["seed"],
        "cell_status": record["status"],
        "started_at": record.get("started_at"),
        "duration_s": record.get("duration_s"),
        "env_fingerprint": record_fingerprint_id(record),
        **{k: v for k, v in record.get("env", {}).items() if k != "device"},
        "device": cell["device"],
    }
    rows = record["rows"] or [{"status": record["status"], "error": record.get("error")}]
    out = []
    for row in rows:
        flat = {name: row.get(name) for name in ROW_FIELDS}
        flat["status"] = flat["status"] or "ok"
        out.append({**base, **flat})
    return out


def collect(out_dir: Path, cells: list[Cell] | None = None) -> Any:
    """Rebuild results.parquet and results.csv from the cell files; returns the DataFrame.

    With ``cells`` only those cells are collected, so cells dropped from an experiment do not
    linger in its table (their files stay on disk).
    """
    if cells is None:
        paths = sorted(p for p in (out_dir / "cells").glob("*.json") if not p.name.startswith("."))
    else:  # matrix order, so tables and reports list cells as the experiment does
        paths = [cell_path(out_dir, c) for c in cells if cell_path(out_dir, c).is_file()]
    frame = frame_from_records([read_record(p) for p in paths])
    if not frame.empty:
        _atomic_frame_write(frame, out_dir)
    return frame


def frame_from_records(records: list[dict[str, Any]]) -> Any:
    """The tidy table of ``records``, in their order."""
    import pandas as pd

    frame = pd.DataFrame([row for record in records for row in record_rows(record)])
    if frame.empty:
        return frame
    for column in ("value", "ci_low", "ci_high", "duration_s"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object})


def _atomic_frame_write(frame: Any, out_dir: Path) -> None:
    atomic_write(out_dir / "results.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    atomic_write(out_dir / "results.csv", lambda tmp: frame.to_csv(tmp, index=False))


def load_table(results_dir: Path, warn: Callable[[str], None] | None = None) -> Any:
    """The table of a results directory, rebuilt from its cell files (the truth).

    The cells are those ``results.parquet`` lists (so cells dropped from an experiment stay
    out), or every cell file when there is no table. A listed cell whose file is missing or
    damaged is left out and named through ``warn`` (default: stderr), never shown as stored.
    Reading writes nothing.
    """
    import pandas as pd

    warn = warn or warn_stderr
    results_dir = Path(results_dir)
    parquet = results_dir / "results.parquet"
    cells_dir = results_dir / "cells"
    listed = None
    if parquet.is_file():
        try:
            table = pd.read_parquet(parquet)
        except Exception as exc:
            raise HarnessError(f"corrupt results table {parquet}: {exc}") from None
        if not cells_dir.is_dir():
            return table  # a table copied without its cells: nothing to check it against
        listed = list(dict.fromkeys(table["cell_id"])) if "cell_id" in table else []
    elif not cells_dir.is_dir():
        raise HarnessError(f"no results in {results_dir}: expected results.parquet or cells/")
    if listed is None:
        paths = sorted(p for p in cells_dir.glob("*.json") if not p.name.startswith("."))
    else:
        paths = [cells_dir / f"{cell_id}.json" for cell_id in listed]
    records = []
    for path in paths:
        if not path.is_file():
            warn(f"{path} is listed in {parquet.name} but missing: left out")
            continue
        try:
            records.append(read_record(path))
        except HarnessError as exc:
            warn(f"{exc}: left out (rerun the cell to measure it again)")
    return frame_from_records(records)


def warn_stderr(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)
