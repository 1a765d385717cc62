"""The command line as a user meets it: help, list, env, bad input, a real matrix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from harness.cli import app
from tests.conftest import TINY_EXPERIMENT, write_experiment

runner = CliRunner()


def test_list_names_every_precision_model_and_workload() -> None:
    result = runner.invoke(app, ["list"], terminal_width=200)
    assert result.exit_code == 0
    for name in [
        "fp32",
        "tf32",
        "bf16",
        "builtin:smollm2-135m",
        "synthetic:tiny-llama",
        "footprint",
        "inference",
        "perplexity",
    ]:
        assert name in result.output


def test_env_reports_versions_and_device() -> None:
    result = runner.invoke(app, ["env", "--device", "cpu"], terminal_width=200)
    assert result.exit_code == 0
    assert "torch_version" in result.output and "git_sha" in result.output


@pytest.mark.parametrize(
    "text,message",
    [
        (TINY_EXPERIMENT.replace("[fp32, bf16]", "[fp32, int2]"), "unknown precision 'int2'"),
        (TINY_EXPERIMENT + "colour: red\n", "colour: unknown key"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(tmp_path: Path, text: str, message: str) -> None:
    path = write_experiment(tmp_path / "bad.yaml", text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 2
    assert message in result.output and str(path) in result.output
    assert not out.exists()


def test_unknown_device_and_empty_selection_exit_2(tmp_path: Path) -> None:
    path = write_experiment(tmp_path / "e.yaml", TINY_EXPERIMENT)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--device", "tpu"])
    assert result.exit_code == 2 and "allowed: auto, cpu, cuda" in result.output
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--only", "*fp8*"])
    assert result.exit_code == 2 and "matches no cell" in result.output
    assert not out.exists()


BUILTIN_PAIR = """
name: builtin-pair
models: [builtin:smollm2-135m]
precisions: [fp32, bf16]
timeout_s: 900
workloads:
  inference: {prompt_len: 32, new_tokens: 4, warmup: 0, repeats: 2}
  perplexity: {max_tokens: 4096, window: 1024}
"""


@pytest.mark.integration
def test_two_cell_matrix_on_builtin_model_through_cli(tmp_path: Path) -> None:
    path = write_experiment(tmp_path / "pair.yaml", BUILTIN_PAIR)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "2 cells run, 0 reused" in result.output
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame["cell_status"]) == {"ok"}
    ppl = frame[frame["metric"] == "perplexity"].set_index("precision")["value"]
    assert 5 < ppl["fp32"] < 40, "the builtin model should read its own docs fluently"
    assert abs(ppl["bf16"] / ppl["fp32"] - 1) < 0.02
    bits = frame[frame["metric"] == "bits_per_param"].set_index("precision")["value"]
    assert bits.to_dict() == {"fp32": 32.0, "bf16": 16.0}
    decode = frame[(frame["metric"] == "decode_tokens_per_s") & (frame["stat"] == "median")]
    assert (decode["value"] > 0).all()
    again = runner.invoke(app, ["run", str(path), "--out", str(out)], terminal_width=200)
    assert again.exit_code == 0 and "0 cells run, 2 reused" in again.output


def test_run_help_keeps_defaults_and_extras_visible() -> None:
    result = runner.invoke(app, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    expected = ("[default: ./results/NAME]", "harness[ray]", "--launcher",
                "--cpus-per-cell")
    for text in expected:
        assert text in result.output


def test_python_dash_m_harness_runs_the_cli() -> None:
    """Machines that only put the source on PYTHONPATH use ``python -m harness``."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "harness", "list"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "synthetic:small-llama" in done.stdout and "spqr-w3" in done.stdout
