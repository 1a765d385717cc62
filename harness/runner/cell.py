"""Run one cell in this process: load, apply the precision, attach the adapter, run its
workloads, make a record.

Failures are data: a workload that raises becomes a row with status ``error`` (or ``oom``) and
the other workloads still run; a cell that cannot run here is ``skipped`` with the reason,
decided before loading where the cell alone tells (``preflight``).
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
from contextlib import nullcontext
from typing import Any

from harness.config import Cell
from harness.errors import SkipCell
from harness.measure import allocator
from harness.measure.env import collect as collect_env
from harness.measure.memory import baseline_rows, phase_rows, track_phase
from harness.results import make_record
from harness.runner.preflight import preflight


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc)


def _failure_row(workload: str, exc: BaseException) -> dict[str, Any]:
    status = "oom" if _is_oom(exc) else "error"
    return {"workload": workload, "metric": "", "status": status, "error": _describe(exc)}


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename.split('/')[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _cell_status(rows: list[dict[str, Any]]) -> str:
    statuses = {r.get("status", "ok") for r in rows}
    for worst in ("oom", "error", "timeout", "diverged", "no_learning"):
        if worst in statuses:
            return worst
    return "ok"


def allocator_rows() -> list[dict[str, Any]]:
    """The mmap threshold memory phases and timed calls ran with (None: not glibc)."""
    known = allocator.current() is not None
    return [
        {
            "workload": "load",
            "metric": f"allocator_{mode}_mmap_threshold_bytes",
            "unit": "bytes",
            "value": float(allocator.SETTINGS[mode][0]) if known else None,
            "method": allocator.describe(mode),
            **({} if known else {"status": "skipped", "error": "the allocator is not glibc"}),
        }
        for mode in ("memory", "timing")
    ]


def _wall_row(name: str, seconds: float) -> dict[str, Any]:
    """How long a workload took in all (warmups, memory phases, timed calls), so a cell's
    time can be checked against its projection (``budget.projected_s``)."""
    method = "wall time of the whole workload in this cell, warmups and memory phases included"
    return {
        "workload": name,
        "metric": "wall_time_s",
        "value": seconds,
        "unit": "s",
        "method": method,
    }


def run_cell(cell: Cell) -> dict[str, Any]:
    """Everything one cell measures, as a results record (see harness.results)."""
    import torch

    from harness import models
    from harness.adapters import attach
    from harness.budget import adapt as adapt_budget
    from harness.schemes import get_handler
    from harness.workloads import get_entry, get_runner

    allocator.use("memory")  # before anything large is allocated; timed calls switch
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    env = collect_env(cell.device)

    def record(status: str, rows: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        duration = time.perf_counter() - t0
        return make_record(
            cell, status, rows, env=env, started_at=started, duration_s=duration, **kw
        )

    reason = preflight(cell)  # before loading: calibration can take minutes
    if reason:
        return record("skipped", [], error=reason)
    handler = get_handler(cell.precision)
    opts = handler.Options(**cell.precision_options)
    torch.manual_seed(cell.seed)
    try:
        with track_phase(cell.device) as load_mem:
            t_load = time.perf_counter()
            loaded = handler.load(models.resolve(cell.model), opts, cell.device)
            load_s = time.perf_counter() - t_load
    except SkipCell as exc:
        return record("skipped", [], error=str(exc))
    except Exception as exc:
        return record("oom" if _is_oom(exc) else "error", [], error=_describe(exc))
    rows = [
        {
            "workload": "load",
            "metric": "load_time_s",
            "value": load_s,
            "unit": "s",
            "method": f"inside the load memory window ({allocator.describe('memory')})",
        },
        *allocator_rows(),
        *({"workload": "load", **r} for r in phase_rows("load", load_mem)),
        *({"workload": "load", **r} for r in loaded.rows),
    ]
    try:
        rows.extend({"workload": "adapter", **r} for r in attach(loaded, cell))
    except SkipCell as exc:
        return record("skipped", [], error=str(exc), storage=loaded.storage)
    except Exception as exc:
        rows.append(_failure_row("adapter", exc))
        return record(_cell_status(rows), rows, storage=loaded.storage)
    try:
        rows.extend({"workload": "load", **r} for r in baseline_rows(loaded.model, cell.device))
    except Exception as exc:  # the baseline is a measurement like any other: a row, not a crash
        rows.append(_failure_row("load", exc))
    names = list(cell.workloads.enabled())
    budgets = {n: getattr(cell.workloads, n) for n in names}
    probed = False
    for name in names:
        if not probed and get_entry(name).runs_model:  # see WorkloadEntry.runs_model
            elapsed = time.perf_counter() - t0  # loading counts against the cell's target
            try:
                budgets, budget_rows = adapt_budget(
                    cell.workloads, names, cell.device, loaded, cell.cell_target_s, elapsed
                )
            except Exception as exc:  # the workloads still run, on the budget as written
                budget_rows = [_failure_row("budget", exc)]
            rows.extend(budget_rows)
            probed = True
        settings = budgets[name]
        # a workload without memory phases runs as a user's process would, fast
        window = nullcontext() if get_entry(name).tracks_memory else allocator.timing_window()
        start, before = time.perf_counter(), len(rows)
        try:
            with window:
                produced = get_runner(name)(loaded, cell, settings)
            rows.extend({"workload": name, **r} for r in produced)
        except Exception as exc:
            rows.append(_failure_row(name, exc))
        if len(rows) > before:  # a workload with nothing to do in this cell stays silent
            rows.append(_wall_row(name, time.perf_counter() - start))
    return record(_cell_status(rows), rows, storage=loaded.storage)
