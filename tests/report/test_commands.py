"""``harness report | claims | predict`` as a user meets them, bad input included."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from harness.cli import app

runner = CliRunner()


def test_report_on_missing_dir_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                           terminal_width=200)
    assert result.exit_code == 2
    assert "does not exist" in result.output and "nope" in result.output
    assert not (tmp_path / "o").exists()


def test_report_on_corrupt_dir_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.parquet").write_bytes(b"not a parquet file")
    result = runner.invoke(app, ["report", str(bad), "--out", str(tmp_path / "o")],
                           terminal_width=200)
    assert result.exit_code == 2 and "corrupt results table" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["claims", str(empty)], terminal_width=200)
    assert result.exit_code == 2 and "no results in" in result.output
    cells = tmp_path / "cells-bad"
    (cells / "cells").mkdir(parents=True)
    (cells / "cells" / "x.json").write_text("{")
    result = runner.invoke(app, ["claims", str(cells)], terminal_width=200)
    assert result.exit_code == 2 and "corrupt results file" in result.output


def test_claims_command_prints_verdicts(results_dir: Path) -> None:
    result = runner.invoke(app, ["claims", str(results_dir)], terminal_width=250)
    assert result.exit_code == 0, result.output
    for text in ("int8-quarter-of-fp32-layers", "reproduced", "not reproduced", "not measured",
                 "embeddings"):
        assert text in result.output


def test_predict_command_on_an_experiment(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: big\nmodels: [llama-70b, builtin:smollm2-135m]\n"
                    "precisions: [fp16, int8, nf4-dq]\n")
    result = runner.invoke(app, ["predict", str(path)], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "llama-70b" in result.output and "nf4-dq" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodels: [nosuch-model-xyz]\nprecisions: [fp16]\n")
    result = runner.invoke(app, ["predict", str(bad)], terminal_width=250)
    assert result.exit_code == 2 and "nosuch-model-xyz" in result.output
