"""The results store: atomic cell records, validity checks, the tidy table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.config import expand, load_experiment
from harness.errors import HarnessError
from harness.results import (
    cell_path,
    collect,
    load_table,
    make_record,
    read_record,
    write_record,
)
from harness.results_dir import stored_status
from tests.conftest import TINY_EXPERIMENT, write_experiment


@pytest.fixture()
def cells(tmp_path: Path):
    return expand(load_experiment(write_experiment(tmp_path / "e.yaml", TINY_EXPERIMENT)), "cpu")


ENV = {"device": "cpu", "device_name": "test cpu", "git_sha": "abc", "torch_version": "2"}


def _record(cell, status="ok"):
    rows = [
        {
            "workload": "perplexity",
            "metric": "perplexity",
            "value": 12.5,
            "unit": "ppl",
            "n": 100,
            "protocol": "token-windows",
            "samples": [2.5, 2.6],
        },
        {
            "workload": "inference",
            "metric": "decode_tokens_per_s",
            "value": 20.0,
            "unit": "tokens/s",
            "stat": "median",
            "n": 3,
        },
    ]
    return make_record(
        cell,
        status,
        rows if status == "ok" else [],
        env=ENV,
        storage="dense",
        error=None if status == "ok" else "boom",
        started_at="t",
        duration_s=1.5,
    )


def test_round_trip_through_json_parquet_and_csv(tmp_path: Path, cells) -> None:
    out = tmp_path / "out"
    write_record(out, cells[0], _record(cells[0]))
    write_record(out, cells[1], _record(cells[1], "error"))
    frame = collect(out, cells)
    assert (out / "results.parquet").is_file() and (out / "results.csv").is_file()
    again = pd.read_parquet(out / "results.parquet")
    assert len(again) == 3
    ppl = again[again["metric"] == "perplexity"].iloc[0]
    assert ppl["value"] == 12.5 and ppl["protocol"] == "token-windows"
    assert ppl["precision"] == "fp32" and ppl["device_name"] == "test cpu"
    assert ppl["git_sha"] == "abc" and ppl["cell_status"] == "ok"
    failed = again[again["cell_id"] == cells[1].id].iloc[0]
    assert failed["status"] == "error" and failed["error"] == "boom"
    assert list(frame.columns) == list(again.columns)
    csv = pd.read_csv(out / "results.csv")
    assert csv["value"].max() == 20.0


def test_collect_keeps_matrix_order_and_only_listed_cells(tmp_path: Path, cells) -> None:
    out = tmp_path / "out"
    for cell in reversed(cells):
        write_record(out, cell, _record(cell))
    frame = collect(out, cells)
    assert list(dict.fromkeys(frame["cell_id"])) == [c.id for c in cells]
    assert set(collect(out, cells[1:])["cell_id"]) == {cells[1].id}


def test_pending_files_are_never_collected_as_records(tmp_path: Path, cells) -> None:
    """A worker's finished pending file (a dot-file) left by a killed driver is not a result."""
    from harness.results_dir import ResultsDir

    out = tmp_path / "out"
    path = write_record(out, cells[0], _record(cells[0]))
    pending = ResultsDir(out).pending_path(cells[0])
    pending.write_text(path.read_text())
    assert len(collect(out)) == len(_record(cells[0])["rows"])  # the record's rows, once
    assert len(ResultsDir(out).records()) == 1


def test_stored_status_rejects_corrupt_and_stale_records(tmp_path: Path, cells) -> None:
    out = tmp_path / "out"
    assert stored_status(out, cells[0]) is None
    write_record(out, cells[0], _record(cells[0]))
    assert stored_status(out, cells[0]) == "ok"
    path = cell_path(out, cells[0])
    record = json.loads(path.read_text())
    record["cell"]["seed"] = 7  # a record that does not describe this cell
    path.write_text(json.dumps(record))
    assert stored_status(out, cells[0]) is None
    path.write_text("{not json")
    assert stored_status(out, cells[0]) is None
    with pytest.raises(HarnessError, match="corrupt results file"):
        read_record(path)


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path, cells) -> None:
    out = tmp_path / "out"
    write_record(out, cells[0], _record(cells[0]))
    assert [p.name for p in (out / "cells").iterdir()] == [f"{cells[0].id}.json"]


def test_load_table_reports_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "results.parquet").write_bytes(b"garbage")
    with pytest.raises(HarnessError, match="corrupt results table"):
        load_table(tmp_path)
    with pytest.raises(HarnessError, match="no results"):
        load_table(tmp_path / "empty")


def test_git_sha_is_dirty_for_code_changes_not_for_results(tmp_path) -> None:
    import subprocess

    from harness.measure.env import git_sha

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "results" / "cell.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_sha(tmp_path)
    assert clean and len(clean) == 40
    (tmp_path / "results" / "cell.json").write_text('{"rerun": true}\n')
    git_sha.cache_clear()
    assert git_sha(tmp_path) == clean
    (tmp_path / "code.py").write_text("a = 2\n")
    git_sha.cache_clear()
    assert git_sha(tmp_path) == f"{clean}-dirty"


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    from harness.results import atomic_write, atomic_write_text

    target = tmp_path / "a.json"
    atomic_write_text(target, "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_code_hash_follows_measuring_code_not_rendering(tmp_path) -> None:
    from harness.measure.env import code_hash as cached

    code_hash = cached.__wrapped__  # the cache keeps one answer per root
    names = (
        "workloads/inference.py", "report/plots.py", "commands/show.py", "cli.py", "results.py"
    )
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    before = code_hash(tmp_path)
    (tmp_path / "report/plots.py").write_text("x = 2\n")
    (tmp_path / "cli.py").write_text("x = 2\n")
    (tmp_path / "results.py").write_text("x = 2\n")
    assert code_hash(tmp_path) == before
    (tmp_path / "workloads/inference.py").write_text("x = 2\n")
    assert code_hash(tmp_path) != before
