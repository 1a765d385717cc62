"""A precision added by registering one handler: run, predict, report and claims all take it.

The handler (``tests/schemes/toy_scheme.py``) is entered into a test-only copy of the registry;
no other file of the harness learns about it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from harness import schemes
from harness.config import expand, load_experiment
from harness.results import collect, write_record
from harness.runner.cell import run_cell
from tests.conftest import write_experiment

NAME = "toy-bf16-linears"
EXPERIMENT = f"""
name: toy
models: [synthetic:tiny-llama]
precisions: [fp32, {NAME}]
timeout_s: 120
workloads:
  footprint: {{}}
  inference: {{enabled: false}}
  perplexity: {{max_tokens: 128, window: 64}}
"""
CLAIMS = f"""
claims:
  - id: toy-halves-the-linears
    source: "this test"
    statement: "bf16 linears store half the fp32 bytes"
    kind: memory
    measure: {{metric: bytes.linear_weights, precision: {NAME}}}
    published: 0
    unit: bytes
    comparison: ">"
    tolerance: 0
    tolerance_kind: absolute
    scope: "tiny-llama"
    likely_reason: "none"
"""


@pytest.fixture()
def toy_registry(monkeypatch):
    entry = schemes.SchemeEntry(
        NAME, "tests.schemes.toy_scheme:ToyScheme", "test-only: bf16 linears", {}
    )
    monkeypatch.setattr(schemes, "REGISTRY", {**schemes.REGISTRY, NAME: entry})


@pytest.fixture()
def toy_results(tmp_path: Path, synthetic_cache, toy_registry) -> tuple[Path, Path]:
    experiment = write_experiment(tmp_path / "toy.yaml", EXPERIMENT)
    out = tmp_path / "results"
    for cell in expand(load_experiment(experiment), "cpu"):
        write_record(out, cell, run_cell(cell))
    collect(out)
    return experiment, out


def _value(frame, precision: str, metric: str) -> float:
    rows = frame[(frame["precision"] == precision) & (frame["metric"] == metric)]
    assert len(rows) == 1, (precision, metric)
    return float(rows["value"].iloc[0])


def test_new_scheme_runs_predicts_reports_and_is_judged(toy_results, tmp_path: Path) -> None:
    from harness.commands.claims import check_claims
    from harness.commands.predict import predict_experiment
    from harness.commands.report import make_report
    from harness.results import load_table

    experiment, out = toy_results
    frame = load_table(out)
    assert set(frame["cell_status"]) == {"ok"}
    fp32 = _value(frame, "fp32", "bytes.linear_weights")
    assert _value(frame, NAME, "bytes.linear_weights") == fp32 / 2
    assert _value(frame, NAME, "toy_linears_cast") == 1.0
    assert _value(frame, NAME, "perplexity") > 1.0

    quiet = Console(file=open(tmp_path / "console.txt", "w"), width=200)  # noqa: SIM115
    predicted = {r["precision"]: r for r in predict_experiment(experiment, console=quiet)}
    # the memory model asks the handler: its error on the toy is exactly its error on fp32
    # (parts outside the linears, e.g. buffers), so the linears it predicts are the measured ones
    errors = {p: _value(frame, p, "bytes.total") - predicted[p]["weights"] for p in ("fp32", NAME)}
    assert errors[NAME] == errors["fp32"]
    assert predicted["fp32"]["weights"] - predicted[NAME]["weights"] == fp32 / 2

    paths = make_report([out], out=tmp_path / "report", console=quiet)
    assert NAME in paths["markdown"].read_text()

    claims = write_experiment(tmp_path / "claims.yaml", CLAIMS)
    verdicts = check_claims([out], registry=claims, console=quiet)
    assert verdicts["verdict"].tolist() == ["reproduced"]
