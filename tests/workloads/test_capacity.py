"""The capacity workload: the search finds the boundary, the verdicts follow the measured peaks,
capacity grows with the budget, out-of-memory tries are data, and the prediction stands beside."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from harness.adapters import attach
from harness.config import expand, load_experiment
from harness.memory_model import Workload, model_shape, predict
from harness.schemes import get_handler
from harness.workloads import capacity
from harness.workloads.settings import CapacitySettings
from tests.conftest import write_experiment

MB = 1e-3  # budget_gb of one megabyte


def _cell(tmp_path: Path, adapter: str = "none", **settings):
    opts = ", ".join(f"{k}: {v}" for k, v in settings.items())
    text = f"""
name: cap
models: [synthetic:tiny-llama]
precisions: [fp32]
adapters: [{adapter}]
workloads:
  footprint: {{enabled: false}}
  inference: {{enabled: false}}
  perplexity: {{enabled: false}}
  capacity: {{enabled: true, {opts}}}
"""
    exp = load_experiment(write_experiment(tmp_path / "cap.yaml", text))
    return expand(exp, "cpu")[0]


def _run(tiny_source, cell):
    handler = get_handler(cell.precision)
    loaded = handler.load(tiny_source, handler.options(), "cpu")
    attach(loaded, cell)
    return loaded, capacity.run(loaded, cell, cell.workloads.capacity)


def _tries(rows) -> dict[int, dict[str, float]]:
    """batch -> {metric: value} of every measured try."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["metric"].startswith("try_"):
            batch = int(r["protocol"].split("batch=")[-1].split(";")[0])
            out.setdefault(batch, {})[r["metric"]] = r["value"]
    return out


def _one(rows, metric: str, method_prefix: str) -> float:
    found = [
        r["value"]
        for r in rows
        if r["metric"] == metric and r.get("method", "").startswith(method_prefix)
    ]
    assert len(found) == 1, (metric, method_prefix, found)
    return found[0]


def _predicted_peak(loaded, cell, batch: int) -> int:
    work = Workload(batch=batch, seq=16, train_batch=batch, train_seq=16)
    shape = model_shape(loaded.model.config)
    return predict(shape, "fp32", cell.precision_options, "none", work).inference_peak


def test_search_doubles_then_bisects_to_the_boundary() -> None:
    asked: list[int] = []

    def attempt(n: int) -> capacity.Try:
        asked.append(n)
        return capacity.Try(n, n, fits=n <= 37)

    tries, fit, fail = capacity.search(attempt, 1, 1024, 20, bisect=True)
    assert (fit, fail) == (37, 38)
    assert asked == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert [t.size for t in tries] == asked
    asked.clear()
    assert capacity.search(attempt, 1, 1024, 20, bisect=False)[1:] == (32, 64)
    asked.clear()
    assert capacity.search(attempt, 1, 1024, 3, bisect=True)[1:] == (4, None)  # tries bound
    asked.clear()
    assert capacity.search(attempt, 1, 24, 20, bisect=True)[1:] == (24, None)  # size bound
    assert asked == [1, 2, 4, 8, 16, 24]
    assert capacity.search(attempt, 40, 1024, 20, bisect=True)[1:] == (37, 38)


def test_predicted_capacity_is_the_largest_size_within_budget() -> None:
    assert capacity.predicted_capacity(lambda n: 100 * n, 1050, 1024) == 10
    assert capacity.predicted_capacity(lambda n: 100 * n, 1000, 1024) == 10
    assert capacity.predicted_capacity(lambda n: 100 * n, 99, 1024) == 0
    assert capacity.predicted_capacity(lambda n: 100 * n, 10**9, 64) == 64


def test_measured_capacity_grows_with_the_budget_and_sits_at_the_boundary(
    tiny_source, tmp_path: Path, single_thread
) -> None:
    caps = []
    for budget_mb in (2, 4, 8):
        cell = _cell(tmp_path, budget_gb=budget_mb * MB, seq_len=16, max_batch=512, max_tries=20)
        loaded, rows = _run(tiny_source, cell)
        budget = budget_mb * 1e6
        assert _one(rows, "budget_bytes", "") == budget
        tries = _tries(rows)
        for batch, t in tries.items():
            assert t["try_oom"] == 0
            assert t["try_fits"] == float(t["try_peak_bytes"] <= budget), batch
        fit = int(_one(rows, "capacity_batch", "cpu:"))
        fail = int(_one(rows, "capacity_batch_first_failure", "cpu:"))
        assert fail == fit + 1  # bisection closed the gap
        assert tries[fit]["try_peak_bytes"] <= budget < tries[fail]["try_peak_bytes"]
        # the prediction beside it: the memory model's own boundary for the same budget
        predicted = int(_one(rows, "capacity_batch", "prediction:"))
        at, above = (_predicted_peak(loaded, cell, b) for b in (predicted, predicted + 1))
        assert at <= budget < above
        caps.append(fit)
    assert caps == sorted(caps) and caps[-1] >= 2 * caps[0] > 0


def test_training_search_leaves_the_model_unchanged(
    tiny_source, tmp_path: Path, single_thread
) -> None:
    cell = _cell(
        tmp_path,
        "lora-r4",
        budget_gb=6 * MB,
        mode="training",
        seq_len=32,
        max_batch=64,
        max_tries=4,
        axes="[batch, seq]",
        batch_size=1,
        max_seq=256,
    )
    handler = get_handler(cell.precision)
    loaded = handler.load(tiny_source, handler.options(), "cpu")
    attach(loaded, cell)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    rows = capacity.run(loaded, cell, cell.workloads.capacity)
    for name, param in loaded.model.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.grad is None, name
    for t in _tries(rows).values():
        assert t["try_fits"] == float(t["try_peak_bytes"] <= 6e6)
    assert _one(rows, "capacity_batch", "cpu:") >= 1
    assert _one(rows, "capacity_seq", "cpu:") >= 16
    assert _one(rows, "capacity_seq", "prediction: memory_model.training_peak") >= 1


def test_training_capacity_without_an_adapter_is_skipped(tiny_source, tmp_path: Path) -> None:
    _, rows = _run(tiny_source, _cell(tmp_path, budget_gb=MB, mode="training"))
    assert [r["status"] for r in rows] == ["skipped"]
    assert "lora-rN or full" in rows[0]["error"]


def test_without_a_resettable_peak_it_says_prediction_only(
    tiny_source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capacity, "reset_hwm", lambda: False)
    _, rows = _run(tiny_source, _cell(tmp_path, budget_gb=4 * MB, seq_len=32))
    assert not [r for r in rows if r["metric"].startswith("try_")]
    (row,) = [r for r in rows if r["metric"] == "capacity_batch"]
    assert row["method"].startswith("prediction only:") and row["value"] >= 1


def test_an_out_of_memory_try_is_a_data_point(tiny_source, tmp_path: Path) -> None:
    handler = get_handler("fp32")
    loaded = handler.load(tiny_source, handler.options(), "cpu")
    meter = capacity.Meter(loaded, "cpu", 10**12)

    def step(batch: int, seq: int) -> None:
        if batch > 8:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ...")

    with capacity._frozen_gc():
        tries, fit, fail = capacity.search(lambda n: meter.attempt(step, n, n, 4), 1, 64, 12, True)
    assert (fit, fail) == (8, 9)
    assert [t.size for t in tries if t.oom] == [16, 12, 10, 9]
    assert [t.size for t in tries if t.fits] == [1, 2, 4, 8]

    def broken(batch: int, seq: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        meter.attempt(broken, 1, 1, 4)


def test_bad_settings_name_the_problem() -> None:
    with pytest.raises(ValidationError, match="axes must name batch and/or seq once"):
        CapacitySettings(axes=("batch", "batch"))
    with pytest.raises(ValidationError, match=r"start_seq \(64\) exceeds max_seq \(32\)"):
        CapacitySettings(start_seq=64, max_seq=32)
    with pytest.raises(ValidationError, match="inference"):
        CapacitySettings(mode="serve")
