"""Run a matrix on a Ray cluster: the same cells, each a Ray task, when one machine is not enough.

Each task runs its cell exactly as the local runner does, in a fresh interpreter with a
timeout (``local.execute_cell``) on whichever node Ray picks, and sends the record and the
log back; the driver stores them under the results directory, so nodes need no shared
file system. A CUDA cell reserves one GPU (Ray sets ``CUDA_VISIBLE_DEVICES``), a CPU cell
``cpus_per_cell`` cores, and its torch runs that many threads: cells sharing a node do not
fight over cores, and ``torch_threads`` in every row says what a throughput figure had.

Every node needs the harness installed (same version: ``git_sha`` and library versions are
recorded per row, so a mismatch shows in the results). Ray is an optional dependency
(``pip install 'harness[ray]'``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness.config import Cell
from harness.errors import HarnessError
from harness.results import make_record, read_record, stored_status, write_record
from harness.runner.local import CellOutcome, execute_cell

FORWARDED_ENV_PREFIXES = ("HARNESS_", "HF_", "TRANSFORMERS_", "TRITON_")
"""Environment variables the driver passes on to cells on other processes and nodes."""


def run_matrix_ray(
    cells: Iterable[Cell],
    out_dir: Path,
    *,
    force: bool = False,
    address: str | None = None,
    cpus_per_cell: int = 1,
    on_start: Callable[[Cell], None] | None = None,
    on_done: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    """Like ``local.run_matrix``, with the cells run concurrently as Ray tasks.

    ``address``: an existing cluster (``auto``, ``ray://host:10001``, ...); ``None`` joins
    the cluster this process is already connected to, or starts one on this machine.
    """
    if cpus_per_cell < 1:
        raise HarnessError(f"cpus per cell must be at least 1, got {cpus_per_cell}")
    ray = _import_ray()
    cells = list(cells)
    done: dict[str, CellOutcome] = {}
    todo = []
    for cell in cells:
        if not force and stored_status(out_dir, cell) is not None:
            done[cell.id] = CellOutcome(
                cell, read_record(out_dir / "cells" / f"{cell.id}.json"), True
            )
            if on_done:
                on_done(done[cell.id])
        else:
            todo.append(cell)
    if todo:
        started_here = _connect(ray, address)
        try:
            for outcome in _run_tasks(ray, todo, out_dir, cpus_per_cell, on_start):
                done[outcome.cell.id] = outcome
                if on_done:
                    on_done(outcome)
        finally:
            if started_here:
                ray.shutdown()
    return [done[cell.id] for cell in cells]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise HarnessError(
            "the ray launcher needs Ray, which is not installed: pip install 'harness[ray]'"
        ) from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join or start a cluster; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise HarnessError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return True


def _run_tasks(
    ray: Any,
    cells: list[Cell],
    out_dir: Path,
    cpus_per_cell: int,
    on_start: Callable[[Cell], None] | None,
):
    """Submit every cell, then yield outcomes as tasks finish (stored before they are yielded)."""
    remote = ray.remote(_run_on_node)
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    pending = {}
    for cell in cells:
        options = {
            "num_cpus": cpus_per_cell,
            "num_gpus": 1 if cell.device == "cuda" else 0,
            "max_retries": 0,  # a rerun would silently replace a measurement
            "runtime_env": {"env_vars": {**env, "OMP_NUM_THREADS": str(cpus_per_cell)}},
        }
        pending[remote.options(**options).remote(cell.model_dump_json())] = cell
        if on_start:
            on_start(cell)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        cell = pending.pop(ref)
        try:
            record, log_text = ray.get(ref)
        except Exception as exc:  # the task itself failed: node lost, worker killed, ...
            record, log_text = _lost_record(cell, exc), ""
        log_path = out_dir / "logs" / f"{cell.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(log_text)
        write_record(out_dir, cell, record)
        yield CellOutcome(cell, record, False)


def _run_on_node(cell_json: str) -> tuple[dict[str, Any], str]:
    """The Ray task: run one cell in a scratch directory, return its record and log."""
    cell = Cell.model_validate_json(cell_json)
    with tempfile.TemporaryDirectory(prefix="harness-cell-") as scratch:
        log_path = Path(scratch) / "cell.log"
        record = execute_cell(cell, Path(scratch) / "record.json", log_path)
        log_text = log_path.read_text(errors="replace")
    # which node measured it: nodes of one cluster can differ in hardware
    record.setdefault("env", {})["ray_node_ip"] = _node_ip()
    return record, log_text


def _node_ip() -> str | None:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside a Ray worker (direct calls in tests)
        return None


def _lost_record(cell: Cell, exc: BaseException) -> dict[str, Any]:
    message = str(exc).strip().splitlines()
    detail = message[-1] if message else type(exc).__name__
    return make_record(cell, "error", [], error=f"Ray task failed: {type(exc).__name__}: {detail}")
