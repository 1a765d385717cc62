"""Run a matrix on a Ray cluster: the same cells, each a Ray task, when one machine is not enough.

Each task runs its cell exactly as the local runner does, in a fresh interpreter with a
timeout (``isolation.execute_cell``) on whichever node Ray picks, and sends the record and the
log back; the driver stores them under the results directory, so nodes need no shared
file system. A CUDA cell reserves one GPU (Ray sets ``CUDA_VISIBLE_DEVICES``), a CPU cell
``cpus_per_cell`` cores, and its torch runs that many threads: cells sharing a node do not
fight over cores, and ``torch_threads`` in every row says what a throughput figure had.

Every node needs the harness installed (same version: ``git_sha`` and library versions are
recorded per row, so a mismatch shows in the results). Ray is an optional dependency
(``pip install 'harness[ray]'``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness.config import Cell
from harness.errors import HarnessError
from harness.measure.env import collect as collect_env
from harness.results import make_record
from harness.results_dir import ResultsDir, ReusePolicy
from harness.runner.isolation import execute_cell
from harness.runner.matrix import CellOutcome, reuse_stored, run_cells

FORWARDED_ENV_PREFIXES = ("HARNESS_", "HF_", "TRANSFORMERS_", "TRITON_")
"""Environment variables the driver passes on to cells on other processes and nodes."""


def run_matrix_ray(
    cells: Iterable[Cell],
    out_dir: Path,
    *,
    force: bool = False,
    retry_failed: bool = False,
    keep_foreign: bool = False,
    address: str | None = None,
    cpus_per_cell: int = 1,
    on_start: Callable[[Cell], None] | None = None,
    on_done: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    """Like ``local.run_matrix``, with the cells run concurrently as Ray tasks."""
    policy = ReusePolicy(force, retry_failed, keep_foreign, hardware=False)
    return run_cells(
        "ray",
        list(cells),
        out_dir,
        policy,
        address=address,
        cpus_per_cell=cpus_per_cell,
        on_start=on_start,
        on_done=on_done,
    )


def run_ray(
    cells: list[Cell],
    results: ResultsDir,
    policy: ReusePolicy,
    *,
    address: str | None = None,
    cpus_per_cell: int = 1,
    on_start: Callable[[Cell], None] | None = None,
    on_done: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    """The ``ray`` launcher. Stored results are compared by software only: Ray picks the node.

    ``address``: an existing cluster (``auto``, ``ray://host:10001``, ...); ``None`` joins
    the cluster this process is already connected to, or starts one on this machine.
    """
    if cpus_per_cell < 1:
        raise HarnessError(f"cpus per cell must be at least 1, got {cpus_per_cell}")
    ray = _import_ray()
    policy = ReusePolicy(policy.force, policy.retry_failed, policy.keep_foreign, hardware=False)
    done, todo = reuse_stored(cells, results, policy, on_done)
    if todo:
        started_here = _connect(ray, address)
        try:
            for outcome in _run_tasks(ray, todo, results, cpus_per_cell, on_start):
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
    results: ResultsDir,
    cpus_per_cell: int,
    on_start: Callable[[Cell], None] | None,
):
    """Submit every cell, then yield outcomes as tasks finish (stored before they are yielded).

    On an interrupt every unfinished task is cancelled with ``force``: Ray kills its worker
    process, and the cell process under it ends itself when its parent dies.
    """
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
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            try:
                record, log_text = ray.get(ref)
            except Exception as exc:  # the task itself failed: node lost, worker killed, ...
                record, log_text = _lost_record(cell, exc), ""
            results.write_log(cell, log_text)
            results.write(cell, record)
            yield CellOutcome(cell, record, False)
    except BaseException:
        cancel_all(ray, list(pending))
        raise


def cancel_all(ray: Any, refs: list[Any]) -> None:
    """Force-cancel unfinished tasks; one that already finished or vanished is no error."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


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
    # the driver's environment: the node that ran the task is unknown
    error = f"Ray task failed: {type(exc).__name__}: {detail}"
    return make_record(cell, "error", [], error=error, env=collect_env(cell.device))
