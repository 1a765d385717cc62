"""The local runner: one process per cell, failures become rows, resume and --force."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import expand, load_experiment
from harness.results import collect, read_record
from harness.runner.local import run_matrix
from harness.runner.worker import FAULT_ENV
from tests.conftest import TINY_EXPERIMENT, write_experiment

FAST = TINY_EXPERIMENT.replace(
    "perplexity: {max_tokens: 256, window: 64}", "perplexity: {enabled: false}"
)


@pytest.fixture()
def cells(tmp_path: Path, synthetic_cache: Path):
    return expand(load_experiment(write_experiment(tmp_path / "e.yaml", FAST)), "cpu")


def test_crash_in_one_cell_does_not_stop_the_matrix(tmp_path, cells, monkeypatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "crash:*fp32*")
    outcomes = run_matrix(cells, tmp_path / "out")
    statuses = {o.cell.precision: o.record["status"] for o in outcomes}
    assert statuses == {"fp32": "error", "bf16": "ok"}
    crashed = outcomes[0].record
    assert "exit code" in crashed["error"] and crashed["rows"] == []
    frame = collect(tmp_path / "out", cells)
    assert set(frame["cell_status"]) == {"error", "ok"}
    bf16_bits = frame[(frame["precision"] == "bf16") & (frame["metric"] == "bits_per_param")]
    assert bf16_bits["value"].iloc[0] == 16.0


def test_resume_skips_finished_and_failed_cells_until_forced(tmp_path, cells, monkeypatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv(FAULT_ENV, "oom:*bf16*")
    first = run_matrix(cells, out)
    assert [o.record["status"] for o in first] == ["ok", "oom"]
    monkeypatch.delenv(FAULT_ENV)
    second = run_matrix(cells, out)
    assert all(o.reused for o in second)
    assert [o.record["status"] for o in second] == ["ok", "oom"]
    third = run_matrix(cells, out, force=True)
    assert not any(o.reused for o in third)
    assert [o.record["status"] for o in third] == ["ok", "ok"]
    assert read_record(out / "cells" / f"{cells[1].id}.json")["status"] == "ok"


def test_a_cell_past_its_timeout_is_killed_and_recorded(tmp_path, cells, monkeypatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "hang:*fp32*")
    cell = cells[0].model_copy(update={"timeout_s": 3.0})
    (outcome,) = run_matrix([cell], tmp_path / "out")
    assert outcome.record["status"] == "timeout"
    assert "timeout of 3 s" in outcome.record["error"]


def test_a_workload_error_is_a_row_and_other_workloads_still_run(tmp_path, synthetic_cache) -> None:
    # a window longer than the corpus slice cannot be scored: the perplexity row says why
    text = TINY_EXPERIMENT.replace("max_tokens: 256, window: 64", "max_tokens: 8, window: 64")
    text = text.replace("[fp32, bf16]", "[fp32]")
    cells = expand(load_experiment(write_experiment(tmp_path / "e.yaml", text)), "cpu")
    (outcome,) = run_matrix(cells, tmp_path / "out")
    rows = outcome.record["rows"]
    failed = [r for r in rows if r.get("status") == "error"]
    assert len(failed) == 1 and failed[0]["workload"] == "perplexity"
    assert "fewer than one window" in failed[0]["error"]
    assert any(r["metric"] == "bits_per_param" and r["value"] == 32.0 for r in rows)
    assert outcome.record["status"] == "error"
