"""Nothing lost or misplaced: damaged cells are named and kept, --only keeps the table whole,
file-system problems and bad models are exit 2 with the path or name, before any cell runs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import expand, load_experiment
from harness.results import collect, load_table, make_record, write_record
from harness.results_dir import DAMAGED, ResultsDir, ReusePolicy
from tests.conftest import TINY_EXPERIMENT, write_experiment

runner = CliRunner()
ENV = {"device": "cpu", "device_name": "test cpu", "git_sha": "abc"}


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    return write_experiment(tmp_path / "e.yaml", TINY_EXPERIMENT)


def _store(out: Path, cells: list, value: float = 12.5) -> None:
    for cell in cells:
        row = {"workload": "perplexity", "metric": "perplexity", "value": value, "n": 4}
        write_record(out, cell, make_record(cell, "ok", [row], env=ENV, duration_s=1.0))


def test_a_truncated_cell_is_named_and_left_out_even_with_a_table(
    tmp_path: Path, experiment: Path
) -> None:
    cells = expand(load_experiment(experiment), "cpu")
    out = tmp_path / "out"
    _store(out, cells)
    collect(out, cells)
    damaged = out / "cells" / f"{cells[1].id}.json"
    damaged.write_text(damaged.read_text()[:40])  # cut in half after the table was written
    warnings: list[str] = []
    frame = load_table(out, warn=warnings.append)
    assert list(frame["cell_id"].unique()) == [cells[0].id]
    assert len(warnings) == 1 and str(damaged) in warnings[0]


def test_values_come_from_the_cell_files_not_a_stale_table(
    tmp_path: Path, experiment: Path
) -> None:
    cells = expand(load_experiment(experiment), "cpu")
    out = tmp_path / "out"
    _store(out, cells, value=12.5)
    collect(out, cells)
    _store(out, cells[:1], value=99.0)  # the truth changed; the parquet did not
    frame = load_table(out, warn=pytest.fail)
    values = frame.set_index("cell_id")["value"]
    assert values[cells[0].id] == 99.0 and values[cells[1].id] == 12.5


def test_a_damaged_record_is_set_aside_before_its_cell_reruns(
    tmp_path: Path, experiment: Path, capsys: pytest.CaptureFixture
) -> None:
    cells = expand(load_experiment(experiment), "cpu")
    out = tmp_path / "out"
    _store(out, cells[:1])
    path = out / "cells" / f"{cells[0].id}.json"
    path.write_text("{half a record")
    decision = ResultsDir(out).decide(cells[0], ReusePolicy())
    assert decision.record is None and not path.exists()
    kept = list((out / DAMAGED).iterdir())
    assert len(kept) == 1 and kept[0].read_text() == "{half a record"
    assert str(kept[0]) in capsys.readouterr().err


def test_result_files_are_readable_by_others(tmp_path: Path, experiment: Path) -> None:
    cells = expand(load_experiment(experiment), "cpu")
    old = os.umask(0o022)
    try:
        _store(tmp_path, cells[:1])
        collect(tmp_path, cells)
    finally:
        os.umask(old)
    for path in (tmp_path / "cells" / f"{cells[0].id}.json", tmp_path / "results.parquet"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_only_never_drops_stored_cells_from_the_table(tmp_path: Path, experiment: Path) -> None:
    cells = expand(load_experiment(experiment), "cpu")
    out = tmp_path / "out"
    _store(out, cells)
    # stored cells from a test environment: reused as foreign, so nothing runs
    args = ["run", str(experiment), "--out", str(out), "--keep-foreign", "--only", "*__fp32__*"]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "0 cells run, 1 reused" in result.output
    assert set(load_table(out)["cell_id"]) == {c.id for c in cells}


def test_results_go_under_the_current_directory(
    tmp_path: Path, experiment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.commands.run import default_out

    monkeypatch.chdir(tmp_path)
    assert default_out("tiny") == tmp_path / "results" / "tiny"


def test_out_naming_a_file_is_exit_2_with_the_path(tmp_path: Path, experiment: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = runner.invoke(app, ["run", str(experiment), "--out", str(blocker / "sub")])
    assert result.exit_code == 2
    assert f"{blocker} is a file" in result.output and "Traceback" not in result.output


def test_a_file_system_error_is_exit_2_naming_the_path(
    tmp_path: Path, experiment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"

    def refuse(self: ResultsDir):
        raise PermissionError(13, "Permission denied", str(self.root / ".lock"))

    monkeypatch.setattr(ResultsDir, "lock", refuse)
    result = runner.invoke(app, ["run", str(experiment), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 2
    assert f"cannot use {out / '.lock'}: Permission denied" in result.output


def test_an_unknown_hub_model_is_refused_once_before_any_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = TINY_EXPERIMENT.replace("synthetic:tiny-llama", "nobody-here/no-such-model")
    path = write_experiment(tmp_path / "hub.yaml", text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 2
    assert "cannot read the config of nobody-here/no-such-model" in result.output
    assert result.output.count("cannot read the config") == 1 and not out.exists()


def test_a_rank_above_the_model_width_is_refused_before_running(tmp_path: Path) -> None:
    text = TINY_EXPERIMENT.replace("precisions: [fp32, bf16]", "precisions: [fp32]\n"
                                   "adapters: [lora-r8, lora-r100000]")
    path = write_experiment(tmp_path / "wide.yaml", text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 2
    assert "LoRA rank 100000 exceeds the width of synthetic:tiny-llama (64)" in result.output
    assert not out.exists()


def test_show_names_a_damaged_cell(tmp_path: Path, experiment: Path) -> None:
    cells = expand(load_experiment(experiment), "cpu")
    out = tmp_path / "out"
    _store(out, cells)
    collect(out, cells)
    (out / "cells" / f"{cells[0].id}.json").write_text(json.dumps({"schema": 1}))
    result = runner.invoke(app, ["show", str(out)], terminal_width=200)
    assert result.exit_code == 0
    assert f"{cells[0].id}.json" in result.output and "left out" in result.output


def test_show_beside_a_reference_gives_ratios_and_environment(
    tmp_path: Path, experiment: Path
) -> None:
    cells = expand(load_experiment(experiment), "cpu")
    mine, ref = tmp_path / "mine", tmp_path / "ref"
    _store(mine, cells, value=12.5)
    for cell in cells[:1]:  # the reference measured one cell, on another CPU
        row = {"workload": "perplexity", "metric": "perplexity", "value": 10.0, "n": 4}
        env = {**ENV, "device_name": "other cpu"}
        write_record(ref, cell, make_record(cell, "ok", [row], env=env, duration_s=1.0))
    result = runner.invoke(app, ["show", str(mine), "--reference", str(ref)],
                           terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "12.500 / 10.000 (1.25x)" in result.output
    assert result.output.count("12.500 /") == 1  # only the cell both measured
    assert "device_name 'other cpu' (here 'test cpu')" in result.output
