"""Paired comparisons read per-item samples from cell records."""

from __future__ import annotations

import json
from pathlib import Path

from harness.report.paired import paired_table


def _record(path: Path, precision: str, nlls: list[float]) -> None:
    cell = {"model": "m", "adapter": "none", "seed": 0, "precision": precision}
    rows = [
        {"metric": "perplexity", "samples": nlls, "status": "ok"},
        {"metric": "bits_per_param", "value": 4.0},
    ]
    record = {"schema": 1, "cell_id": path.stem, "cell": cell, "status": "ok", "rows": rows}
    path.write_text(json.dumps(record))


def test_a_consistent_small_increase_is_significant_and_noise_is_not(tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    base = [2.0 + 0.5 * ((i * 7) % 11) / 11 for i in range(40)]
    _record(cells / "a.json", "fp32", base)
    _record(cells / "b.json", "int8", [x + 0.01 for x in base])
    _record(
        cells / "c.json", "bf16", [x + (0.001 if i % 2 else -0.001) for i, x in enumerate(base)]
    )
    table = paired_table([tmp_path], ["run"]).set_index("precision")
    assert table.loc["int8", "difference"] == 0.01 and table.loc["int8", "significant"] == "yes"
    assert table.loc["bf16", "significant"] == "no"
    assert set(table["metric"]) == {"window NLL"} and "fp32" not in table.index


def test_records_outside_the_results_table_are_left_out(tmp_path: Path) -> None:
    """A cells/ folder may keep records of cells no longer in the table (older code, dropped
    cells): only the table's cells are compared."""
    cells = tmp_path / "cells"
    cells.mkdir()
    base = [2.0 + 0.1 * i for i in range(20)]
    _record(cells / "a.json", "fp32", base)
    _record(cells / "b.json", "int8", [x + 0.01 for x in base])
    _record(cells / "old.json", "bf16", [x + 0.5 for x in base])
    every = paired_table([tmp_path], ["run"])
    listed = paired_table([tmp_path], ["run"], cell_ids={"a", "b"})
    assert set(every["precision"]) == {"int8", "bf16"}
    assert set(listed["precision"]) == {"int8"}


def test_finetune_items_are_paired_but_curves_are_not(tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    for name, precision, shift in (("a", "fp32", 0.0), ("b", "nf4-dq", 0.2)):
        items = [1.0 + 0.1 * i + shift for i in range(10)]
        rows = [
            {"metric": "heldout_loss_after", "samples": items, "status": "ok"},
            {"metric": "heldout_loss_curve", "samples": items[:3], "status": "ok"},
        ]
        cell = {"model": "m", "adapter": "lora-r8", "seed": 1, "precision": precision}
        record = {"schema": 1, "cell_id": name, "cell": cell, "status": "ok", "rows": rows}
        (cells / f"{name}.json").write_text(json.dumps(record))
    table = paired_table([tmp_path], ["run"])
    assert list(table["metric"]) == ["heldout_loss_after"]
    assert table.iloc[0]["difference"] == 0.2 and table.iloc[0]["items"] == 10
