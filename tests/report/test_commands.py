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


def test_claims_over_several_directories_give_one_verdict_per_claim(
    tmp_path: Path, results_dir: Path
) -> None:
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(results_dir, copy)
    result = runner.invoke(app, ["claims", str(results_dir), str(copy), "--json"],
                           terminal_width=250)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["measured"]
    ids = [row["claim"] for row in rows]
    assert len(ids) == len(set(ids)), "each claim once, whatever the number of directories"
    quarter = next(r for r in rows if r["claim"] == "int8-quarter-of-fp32-layers")
    assert quarter["run"] == f"{results_dir.name}, copy" and quarter["verdict"] == "reproduced"
    table = runner.invoke(app, ["claims", str(results_dir), str(copy)], terminal_width=250)
    assert table.output.count("Not measured by these runs") == 1


def test_claims_from_runs_that_disagree_are_undecided() -> None:
    from harness.report.claims import DISAGREE, Verdict, combine, load_claims

    claim = load_claims()[0]
    verdicts = [Verdict(claim, "a", "m", "reproduced", 1.0, cells=["x"]),
                Verdict(claim, "b", "m", "not reproduced", 2.0, cells=["y"]),
                Verdict(claim, "c", "m", "not measured")]
    (only,) = combine(verdicts)
    assert only.verdict == DISAGREE and only.cells == ["x", "y"] and only.run == "a, b"
    assert "a: reproduced 1" in only.detail and "b: not reproduced 2" in only.detail


def test_show_and_predict_speak_json_and_version_prints() -> None:
    import json

    result = runner.invoke(app, ["predict", "--model", "smollm2-135m", "--precision", "nf4",
                                 "--adapter", "none", "--adapter", "lora-r8", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["adapter"] for r in rows] == ["none", "lora-r8"]
    assert rows[1]["adapters"] > 0 == rows[0]["adapters"]
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("harness 0.")


def test_show_json_has_one_object_per_cell(results_dir: Path) -> None:
    import json

    result = runner.invoke(app, ["show", str(results_dir), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == len({r["cell_id"] for r in rows}) > 0
    from harness.results import STATUSES

    assert {r["cell_status"] for r in rows} <= set(STATUSES) and "precision" in rows[0]
