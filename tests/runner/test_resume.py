"""Resume: foreign results are measured again (or kept on request and named), failed cells
are retried on request, and ``harness run`` exits 3 when a cell failed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import expand, load_experiment
from harness.measure.env import collect
from harness.results import make_record, read_record
from harness.results_dir import ELSEWHERE, ResultsDir, ReusePolicy
from harness.runner.worker import FAULT_ENV
from tests.conftest import write_experiment
from tests.runner.test_local import FAST


@pytest.fixture()
def cells(tmp_path: Path):
    return expand(load_experiment(write_experiment(tmp_path / "e.yaml", FAST)), "cpu")


def _store(out: Path, cell, status="ok", **env_changes):
    env = {**collect(cell.device), **env_changes}
    record = make_record(cell, status, [], env=env, error=None if status == "ok" else "boom")
    ResultsDir(out).write(cell, record)
    return record


def test_a_result_from_this_environment_is_reused(tmp_path, cells) -> None:
    _store(tmp_path, cells[0])
    decision = ResultsDir(tmp_path).decide(cells[0], ReusePolicy())
    assert decision.record is not None and decision.foreign == []


@pytest.mark.parametrize(
    "change",
    [
        {"cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz"},
        {"torch_version": "1.0.0"},
        {"harness_code": "0" * 16},
        {"device_name": "NVIDIA A100"},
    ],
)
def test_a_result_from_elsewhere_is_measured_again_and_kept_aside(tmp_path, cells, change) -> None:
    stored = _store(tmp_path, cells[0], **change)
    results = ResultsDir(tmp_path)
    assert results.decide(cells[0], ReusePolicy()).record is None
    (archived,) = (tmp_path / ELSEWHERE).glob("*/cells/*.json")
    assert read_record(archived) == stored
    kept = results.decide(cells[0], ReusePolicy(keep_foreign=True))
    key = next(iter(change))
    assert kept.record == stored and kept.foreign and kept.foreign[0].startswith(key)


def test_a_record_without_the_code_version_counts_as_foreign(tmp_path, cells) -> None:
    """Records written before fingerprints (the committed reference runs) are not reused."""
    record = _store(tmp_path, cells[0])
    record["env"].pop("harness_code")
    record.pop("fingerprint")
    ResultsDir(tmp_path).write(cells[0], record)
    assert ResultsDir(tmp_path).decide(cells[0], ReusePolicy()).record is None


def test_volatile_fields_do_not_make_a_result_foreign(tmp_path, cells) -> None:
    _store(tmp_path, cells[0], torch_threads=7, memory_total_bytes=1, platform="x", git_sha="y")
    assert ResultsDir(tmp_path).decide(cells[0], ReusePolicy()).record is not None


def test_ray_compares_software_only(tmp_path, cells) -> None:
    _store(tmp_path, cells[0], cpu="another node's CPU")
    policy = ReusePolicy(hardware=False)
    assert ResultsDir(tmp_path).decide(cells[0], policy).record is not None


@pytest.mark.parametrize("status", ["error", "oom", "timeout"])
def test_retry_failed_reruns_failures_and_keeps_the_rest(tmp_path, cells, status) -> None:
    _store(tmp_path, cells[0], "ok")
    _store(tmp_path, cells[1], status)
    results, policy = ResultsDir(tmp_path), ReusePolicy(retry_failed=True)
    assert results.decide(cells[0], policy).record is not None
    assert results.decide(cells[1], policy).record is None
    assert results.decide(cells[1], ReusePolicy()).record is not None  # kept by default


def test_show_names_cells_from_elsewhere(tmp_path, cells) -> None:
    _store(tmp_path, cells[0], cpu="Intel(R) Xeon(R) CPU @ 2.20GHz")
    _store(tmp_path, cells[1])
    result = CliRunner().invoke(app, ["show", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "1 of 2 cells were measured in another environment" in result.output
    note = result.output.split("another environment")[-1]
    assert cells[0].id in note and cells[1].id not in note


def test_run_exits_3_on_a_failed_cell_and_retry_failed_reruns_only_it(
    tmp_path, synthetic_cache, monkeypatch
) -> None:
    exp = write_experiment(tmp_path / "e.yaml", FAST)
    out = tmp_path / "out"
    cli = ["run", str(exp), "--out", str(out)]
    monkeypatch.setenv(FAULT_ENV, "crash:*bf16*")
    first = CliRunner().invoke(app, cli)
    assert first.exit_code == 3, first.output
    assert "1 cells ended error, oom or timeout" in first.output
    monkeypatch.delenv(FAULT_ENV)
    plain = CliRunner().invoke(app, cli)
    assert plain.exit_code == 3 and "0 cells run, 2 reused" in plain.output
    retried = CliRunner().invoke(app, [*cli, "--retry-failed"])
    assert retried.exit_code == 0, retried.output
    assert "1 cells run, 1 reused" in retried.output
