"""The double-quantization curve: measured by a benchmark into a table, plotted by reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import harness.measure.bnb_storage as bnb_storage
import harness.report.dq_curve as dq_report
from harness.measure.dq_curve import TABLE, measure
from harness.paths import repo_root

TOTALS = pd.DataFrame(
    [{"precision": "nf4-dq", "metric": "dq_saving_bits.total", "value": 0.357, "status": "ok",
      "stat": None, "workload": "footprint"}]
)


def _no_measuring(*args, **kwargs):
    raise AssertionError("the report measured instead of reading the stored table")


def test_absent_table_means_no_figure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dq_report, "TABLE", tmp_path / "missing.csv")
    assert dq_report.dq_saving_curve(TOTALS) is None
    assert "benchmarks/dq_curve.py" in dq_report.NEEDS


def test_figure_plots_the_stored_numbers_only(tmp_path: Path, monkeypatch) -> None:
    table = tmp_path / "results.csv"
    stored = pd.DataFrame({"weights": [4096, 1024], "saving_bits": [0.31, 0.2]})
    stored.to_csv(table, index=False)
    monkeypatch.setattr(dq_report, "TABLE", table)
    monkeypatch.setattr(bnb_storage, "dq_saving_for_layer", _no_measuring)
    fig = dq_report.dq_saving_curve(TOTALS)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [1024, 4096]  # sorted by layer size
    assert list(line.get_ydata()) == [0.2, 0.31]


def test_measure_rows_are_what_bitsandbytes_stores() -> None:
    (row,) = measure([(64, 128)])
    direct = bnb_storage.dq_saving_for_layer(64, 128)
    assert row["weights"] == 64 * 128
    assert row["saving_bits"] == pytest.approx(direct["saving"])
    assert row["saving_bits"] == pytest.approx(row["bits_nf4"] - row["bits_nf4_dq"])


def test_committed_table_approaches_the_published_saving() -> None:
    frame = pd.read_csv(repo_root() / TABLE).sort_values("weights")
    savings = frame["saving_bits"].tolist()
    assert savings == sorted(savings)  # the fixed code table is amortised as layers grow
    assert abs(savings[-1] - 0.373) < 0.002
    assert frame["bitsandbytes_version"].notna().all() and frame["cpu"].notna().all()
