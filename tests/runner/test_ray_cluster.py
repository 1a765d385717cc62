"""The Ray launcher: the same cells as Ray tasks on a local cluster of two CPUs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import expand, load_experiment
from harness.errors import HarnessError
from harness.results import collect
from harness.runner.local import run_matrix
from harness.runner.worker import FAULT_ENV
from tests.conftest import write_experiment
from tests.runner.test_local import FAST

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture()
def cells(tmp_path: Path, synthetic_cache: Path):
    return expand(load_experiment(write_experiment(tmp_path / "e.yaml", FAST)), "cpu")


def _footprint(frame, precision):
    rows = frame[(frame["precision"] == precision) & (frame["workload"] == "footprint")]
    rows = rows[rows["metric"] != "wall_time_s"]  # a time, not a footprint
    return dict(zip(rows["metric"], rows["value"], strict=True))


def test_cells_run_as_tasks_failures_are_rows_and_resume_works(
    tmp_path, cells, cluster, monkeypatch
):
    from harness.runner.ray_cluster import run_matrix_ray

    out = tmp_path / "ray"
    monkeypatch.setenv(FAULT_ENV, "crash:*fp32*")  # forwarded to the task's environment
    first = run_matrix_ray(cells, out, cpus_per_cell=1)
    assert [o.cell.precision for o in first] == ["fp32", "bf16"]  # matrix order kept
    assert [o.record["status"] for o in first] == ["error", "ok"]
    assert "exit code" in first[0].record["error"]
    assert (out / "logs" / f"{cells[1].id}.log").is_file()
    assert first[1].record["env"]["torch_threads"] == 1  # one reserved core, one thread
    assert first[1].record["env"]["ray_node_ip"]  # the node that measured it

    monkeypatch.delenv(FAULT_ENV)
    again = run_matrix_ray(cells, out)
    assert all(o.reused for o in again)
    forced = run_matrix_ray(cells, out, force=True)
    assert [o.record["status"] for o in forced] == ["ok", "ok"]

    run_matrix(cells, tmp_path / "local")
    on_ray = collect(out, cells)
    local = collect(tmp_path / "local", cells)
    for precision in ("fp32", "bf16"):
        assert _footprint(on_ray, precision) == _footprint(local, precision)
    assert _footprint(on_ray, "bf16")["bits_per_param"] == 16.0


def test_cli_runs_a_matrix_on_ray(tmp_path, cluster, synthetic_cache) -> None:
    path = write_experiment(tmp_path / "e.yaml", FAST)
    args = ["run", str(path), "--out", str(tmp_path / "o"), "--launcher", "ray"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "on Ray (1 cores/cell)" in result.output and "2 cells run" in result.output


def test_bad_launcher_options_are_refused(tmp_path) -> None:
    path = write_experiment(tmp_path / "e.yaml", FAST)
    runner = CliRunner()
    out = ["--out", str(tmp_path / "o")]
    bad = runner.invoke(app, ["run", str(path), *out, "--launcher", "slurm"])
    assert bad.exit_code == 2 and "allowed: local, ray" in bad.output
    stray = runner.invoke(app, ["run", str(path), *out, "--cpus-per-cell", "4"])
    assert stray.exit_code == 2 and "need --launcher ray" in stray.output
    assert not (tmp_path / "o").exists()


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path, cells) -> None:
    from harness.runner.ray_cluster import run_matrix_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(HarnessError, match="pip install 'harness\\[ray\\]'"):
        run_matrix_ray(cells, tmp_path / "out")
    with pytest.raises(HarnessError, match="at least 1"):
        run_matrix_ray(cells, tmp_path / "out", cpus_per_cell=0)


def test_a_lost_task_becomes_an_error_record(cells) -> None:
    from harness.runner.ray_cluster import _lost_record

    record = _lost_record(cells[0], RuntimeError("traceback ...\nWorkerCrashedError: node lost"))
    assert record["status"] == "error" and record["rows"] == []
    assert record["error"] == "Ray task failed: RuntimeError: WorkerCrashedError: node lost"


def test_an_interrupt_force_cancels_every_unfinished_task(tmp_path, cells) -> None:
    from types import SimpleNamespace

    from harness.results_dir import ResultsDir
    from harness.runner.ray_cluster import _run_tasks

    cancelled = []

    def wait(refs, num_returns):
        raise KeyboardInterrupt

    task = SimpleNamespace(remote=lambda cell_json: f"ref-{len(cell_json)}-{id(cell_json)}")
    fake = SimpleNamespace(
        remote=lambda fn: SimpleNamespace(options=lambda **kw: task),
        wait=wait,
        cancel=lambda ref, force: cancelled.append((ref, force)),
    )
    with pytest.raises(KeyboardInterrupt):
        list(_run_tasks(fake, cells, ResultsDir(tmp_path), 1, None))
    assert len(cancelled) == len(cells) and all(force for _, force in cancelled)
