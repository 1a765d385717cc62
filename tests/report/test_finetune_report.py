"""The report's fine-tuning part from hand-written cell records: the seed x item interval
against hand-computed distributions, the before/after table's numbers, the figures, and no
fine-tuning part at all for results without fine-tuning rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.report import RESULTS_DIRS, load_runs
from harness.report.finetune import (
    finetune_summary,
    finetune_table,
    has_finetune,
    load_records,
    loss_curves,
    paired_change,
    quality_vs_memory,
    records_for,
    seed_item_interval,
    seed_item_replicates,
)
from harness.report.render import finetune_sections, write_report

FT = "finetune"
SKIP_RELOAD = "full fine-tuning ships the whole model; reload and merge are checked for adapters"


def _frequencies(reps: np.ndarray, values: list[float]) -> list[float]:
    return [float(np.mean(np.isclose(reps, v))) for v in values]


# --- the interval ------------------------------------------------------------------------------


def test_seeds_and_items_are_both_resampled_items_shared_across_seeds() -> None:
    # x[s, i] = 2 s + 2 i: a replicate is 2 * (mean of 2 drawn seeds) + 2 * (mean of 2 drawn
    # items), each mean 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the replicate is
    # 0..4 with probability 1/16, 4/16, 6/16, 4/16, 1/16 (items drawn once for both seeds;
    # drawn apart per seed, 0 would have probability 1/64)
    per_seed = {0: [0.0, 2.0], 1: [2.0, 4.0]}
    reps = seed_item_replicates(per_seed, n_boot=20000, seed=1)
    assert set(np.round(reps, 9)) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    expected = [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16]
    assert _frequencies(reps, [0, 1, 2, 3, 4]) == pytest.approx(expected, abs=0.012)
    ci = seed_item_interval(per_seed, n_boot=20000, seed=1)
    assert (ci.estimate, ci.low, ci.high, ci.n) == (2.0, 0.0, 4.0, 2)


def test_seed_resampling_alone_and_item_resampling_alone() -> None:
    # items identical within a seed: only the seed draw moves the replicate (1, 2 or 3)
    between = seed_item_replicates({0: [1.0, 1.0], 1: [3.0, 3.0]}, n_boot=20000)
    assert _frequencies(between, [1, 2, 3]) == pytest.approx([0.25, 0.5, 0.25], abs=0.012)
    # seeds identical: only the item draw moves it (0, 1 or 2)
    within = seed_item_replicates({0: [0.0, 2.0], 1: [0.0, 2.0]}, n_boot=20000)
    assert _frequencies(within, [0, 1, 2]) == pytest.approx([0.25, 0.5, 0.25], abs=0.012)
    # one seed with one value everywhere: no spread at all
    one = seed_item_interval({7: [-0.5, -0.5, -0.5]})
    assert (one.estimate, one.low, one.high, one.n) == (-0.5, -0.5, -0.5, 1)


def test_paired_change_is_after_minus_before_per_item_and_seed() -> None:
    before = {0: [5.0, 5.0], 1: [4.0, 6.0], 2: [1.0]}
    after = {0: [4.0, 3.0], 1: [3.0, 6.0]}  # seed 2 has no after: left out
    ci = paired_change(before, after, n_boot=4000)
    assert ci is not None
    # differences {0: [-1, -2], 1: [-1, 0]}: seed means -1.5 and -0.5
    assert ci.estimate == pytest.approx(-1.0) and ci.n == 2
    assert ci.low == pytest.approx(-2.0) and ci.high == pytest.approx(0.0)
    assert paired_change({0: [1.0, 2.0]}, {0: [1.0]}) is None  # not the same items
    with pytest.raises(ValueError, match="align"):
        seed_item_interval({0: [1.0], 1: [1.0, 2.0]})


# --- hand-written records --------------------------------------------------------------------


def _stat(metric: str, samples: list[float], unit: str = "nats/token", **extra: Any) -> dict:
    value = sum(samples) / len(samples)
    return {"workload": FT, "metric": metric, "value": value, "unit": unit, "n": len(samples),
            "ci_low": min(samples), "ci_high": max(samples), "samples": samples, **extra}


def _value(metric: str, value: float, unit: str = "", **extra: Any) -> dict:
    return {"workload": FT, "metric": metric, "value": value, "unit": unit, **extra}


def _trained(before: list[float], after: list[float], em_after: list[float], ppl: float,
             peak: float, train: list[float], heldout: list[float], held_steps: list[int],
             outcome: str = "ok", merge_shift: float | None = 0.0,
             reload_diff: float | None = 0.0) -> list[dict]:
    n = len(before)
    diff = [a - b for a, b in zip(after, before, strict=True)]
    rows = [
        _stat("heldout_loss_before", before),
        _stat("heldout_exact_match_before", [0.0] * n, "fraction"),
        _value("corpus_perplexity_before", 10.0, "ppl"),
        _value("trainable_params", 1000.0, "params"),
        _value("trainable_fraction", 0.01, "fraction"),
        _stat("heldout_loss_after", after),
        _stat("heldout_exact_match_after", em_after, "fraction"),
        _value("heldout_loss_change", sum(diff) / n, "nats/token", ci_low=min(diff),
               ci_high=max(diff)),
        _value("corpus_perplexity_after", ppl, "ppl"),
        _stat("train_loss_curve", train, steps=list(range(1, len(train) + 1))),
        _stat("heldout_loss_curve", heldout, steps=held_steps),
        _value("finetune_steps", float(len(train)), "steps"),
        _value("finetune_peak_bytes", peak, "bytes"),
        _value("finetune_tokens_per_s", 50.0, "tokens/s"),
        {**_value("finetune_outcome", sum(diff) / n, "nats/token"),
         **({} if outcome == "ok" else {"status": outcome, "error": f"{outcome} here"})},
    ]  # fmt: skip
    if reload_diff is None:
        rows.append({"workload": FT, "metric": "heldout_loss_reloaded", "status": "skipped",
                     "error": SKIP_RELOAD})  # fmt: skip
    else:
        rows += [_stat("heldout_loss_reloaded", after),
                 _value("reload_max_item_loss_diff", reload_diff, "nats/token")]  # fmt: skip
    if merge_shift is not None:
        rows += [_stat("heldout_loss_merged", [a + merge_shift for a in after]),
                 _value("merge_loss_change", merge_shift, "nats/token")]  # fmt: skip
    return rows


def _record(precision: str, adapter: str, seed: int, status: str, rows: list[dict],
            error: str | None = None) -> dict:
    cell_id = f"m__{precision}__{adapter}__s{seed}"
    # a model the memory model does not know: the report notes it instead of simulating it
    cell = {"experiment": "fthand", "model": "builtin:ft-hand", "precision": precision,
            "precision_options": {}, "adapter": adapter, "seed": seed, "device": "cpu"}
    load = {"workload": "load", "metric": "load_time_s", "value": 1.0, "unit": "s"}
    return {"schema": 1, "cell_id": cell_id, "cell": cell, "status": status, "error": error,
            "rows": [load, *rows]}  # fmt: skip


def hand_records() -> list[dict]:
    base = [2.0, 2.0, 2.0, 2.0]
    return [
        _record("fp32", "none", 0, "ok", [
            _stat("heldout_loss_before", base),
            _stat("heldout_exact_match_before", [0.0] * 4, "fraction"),
            _value("corpus_perplexity_before", 10.0, "ppl")]),
        # seed 0 learns: differences -1, -0.5, -1, -1.5 (mean -1)
        _record("fp32", "lora-r4", 0, "ok", _trained(
            base, [1.0, 1.5, 1.0, 0.5], [1.0, 0.0, 1.0, 1.0], 11.0, 100e6,
            [3.0, 2.0, 1.5, 1.0], [2.0, 1.5, 1.0], [0, 2, 4], merge_shift=0.01)),
        # seed 1 does not: differences 0, -0.1, 0, +0.1 (mean 0)
        _record("fp32", "lora-r4", 1, "no_learning", _trained(
            base, [2.0, 1.9, 2.0, 2.1], [0.0] * 4, 10.0, 102e6,
            [3.0, 2.8, 2.7, 2.6], [2.0, 2.0, 2.0], [0, 2, 4], outcome="no_learning",
            merge_shift=0.03, reload_diff=1e-4)),
        _record("fp32", "full", 0, "ok", _trained(
            base, [0.5] * 4, [1.0] * 4, 14.0, 300e6, [3.0, 1.0, 0.6, 0.4],
            [2.0, 0.8, 0.5], [0, 2, 4], merge_shift=None, reload_diff=None)),
        _record("fp32", "full", 1, "error", [
            {"workload": FT, "metric": "heldout_loss_before", "status": "error",
             "error": "RuntimeError: boom"}], error="RuntimeError: boom"),
        _record("bf16", "none", 0, "ok", [
            _stat("heldout_loss_before", [2.1] * 4),
            _stat("heldout_exact_match_before", [0.0] * 4, "fraction")]),
        # diverged at step 2: its curves stop there
        _record("bf16", "lora-r4", 0, "diverged", _trained(
            [2.1] * 4, [4.0] * 4, [0.0] * 4, 30.0, 60e6, [3.0, 9.0], [2.1, 5.0], [0, 2],
            outcome="diverged", merge_shift=None, reload_diff=None)),
    ]  # fmt: skip


def write_records(directory: Path, records: list[dict]) -> Path:
    (directory / "cells").mkdir(parents=True)
    for record in records:
        (directory / "cells" / f"{record['cell_id']}.json").write_text(json.dumps(record))
    return directory


@pytest.fixture()
def ft_dir(tmp_path: Path) -> Path:
    return write_records(tmp_path / "fthand", hand_records())


def _row(summary: Any, precision: str, adapter: str) -> Any:
    rows = summary[(summary["precision"] == precision) & (summary["adapter"] == adapter)]
    assert len(rows) == 1, (precision, adapter)
    return rows.iloc[0]


# --- the table -------------------------------------------------------------------------------


def test_summary_aggregates_seeds_of_each_precision_and_adapter(ft_dir: Path) -> None:
    frame = load_runs([ft_dir])
    assert frame.attrs[RESULTS_DIRS] == {"fthand": str(ft_dir)}
    records = records_for(frame, None)  # read from the directory load_runs noted
    assert records[("fthand", "m__fp32__lora-r4__s0")]["heldout_loss_curve"]["steps"] == [0, 2, 4]
    summary = finetune_summary(frame, records)
    assert [(r.precision, r.adapter) for r in summary.itertuples()] == [
        ("fp32", "none"), ("fp32", "lora-r4"), ("fp32", "full"),
        ("bf16", "none"), ("bf16", "lora-r4")]  # fmt: skip
    lora = _row(summary, "fp32", "lora-r4")
    assert lora["seeds"] == 2 and lora["cells"] == 2
    assert lora["loss_before"] == pytest.approx(2.0)
    assert lora["loss_after"] == pytest.approx(1.5)  # (1.0 + 2.0) / 2
    assert lora["loss_change"] == pytest.approx(-0.5)  # seed means -1 and 0
    # resampled seeds then items: never below the lowest item difference nor above the highest
    assert -1.5 <= lora["change_low"] < -0.5 < lora["change_high"] <= 0.1
    assert lora["em_before"] == 0.0 and lora["em_after"] == pytest.approx(0.375)
    assert (lora["ppl_before"], lora["ppl_after"]) == (10.0, 10.5)
    assert lora["reload_max_diff"] == pytest.approx(1e-4)
    assert lora["merge_change"] == pytest.approx(0.02)  # merged - reloaded: 0.01 and 0.03
    assert lora["outcomes"] == {"ok": 1, "no_learning": 1} and not lora["all_ok"]
    assert lora["peak_bytes"] == pytest.approx(101e6)
    assert lora["trainable_params"] == 1000 and lora["trainable_fraction"] == 0.01
    full = _row(summary, "fp32", "full")  # the failed seed counts in the outcome only
    assert (full["seeds"], full["cells"]) == (1, 2)
    assert full["outcomes"] == {"ok": 1, "error": 1}
    assert (full["loss_change"], full["change_low"], full["change_high"]) == (-1.5, -1.5, -1.5)
    assert (full["after_low"], full["after_high"]) == (0.5, 0.5)
    assert math.isnan(full["reload_max_diff"]) and full["reload_skipped"] == SKIP_RELOAD
    assert math.isnan(full["merge_change"])
    base = _row(summary, "fp32", "none")
    assert base["loss_before"] == 2.0 and math.isnan(base["loss_after"])
    assert base["outcomes"] == {"base": 1}
    diverged = _row(summary, "bf16", "lora-r4")
    assert diverged["outcomes"] == {"diverged": 1}
    assert diverged["loss_change"] == pytest.approx(1.9)


def test_table_shows_before_after_change_and_outcomes(ft_dir: Path) -> None:
    frame = load_runs([ft_dir])
    table = finetune_table(finetune_summary(frame, records_for(frame, None)))
    assert "run" not in table and "model" not in table  # one run, one model
    rows = {(r["precision"], r["adapter"]): r for r in table.to_dict("records")}
    lora = rows[("fp32", "lora-r4")]
    assert lora["seeds"] == 2
    assert lora["trainable params"] == "1k (1%)"
    assert lora["held-out loss before → after"] == "2.000 → 1.500"
    assert lora["loss change [95% CI]"].startswith("-0.5 [")
    assert lora["exact match before → after"] == "0.000 → 0.375"
    assert lora["corpus ppl before → after"] == "10 → 10.5"
    assert lora["reload agrees (max item diff)"] == "yes (max 0.0001)"
    assert lora["merge change [95% CI]"].startswith("+0.02 [")
    assert lora["outcome"] == "1 ok, 1 no_learning"
    assert lora["peak MB"] == "101.0"
    full = rows[("fp32", "full")]
    assert full["loss change [95% CI]"] == "-1.5 [-1.5, -1.5]"
    assert full["reload agrees (max item diff)"].startswith("skipped: full fine-tuning")
    assert full["outcome"] == "1 ok, 1 error"
    assert full["peak MB"] == "300.0"
    base = rows[("fp32", "none")]
    assert base["held-out loss before → after"] == "2.000 (before only)"
    assert base["outcome"] == "1 base" and base["loss change [95% CI]"] == ""
    assert rows[("bf16", "lora-r4")]["outcome"] == "1 diverged"


def test_without_records_the_table_falls_back_to_the_stored_changes(ft_dir: Path) -> None:
    frame = load_runs([ft_dir])
    frame.attrs.clear()
    assert records_for(frame, None) == {}
    summary = finetune_summary(frame, {})
    lora = _row(summary, "fp32", "lora-r4")
    # the mean of the cells' heldout_loss_change rows; no joint interval over two seeds
    assert lora["loss_change"] == pytest.approx(-0.5) and math.isnan(lora["change_low"])
    full = _row(summary, "fp32", "full")  # one seed: its own item interval
    assert (full["loss_change"], full["change_low"], full["change_high"]) == (-1.5, -1.5, -1.5)


def test_samples_alone_give_the_train_curve_but_not_the_held_out_steps(ft_dir: Path) -> None:
    from harness.report.claim_interval import load_samples
    from harness.report.finetune import curve_points

    frame = load_runs([ft_dir])
    frame.attrs.clear()
    records = records_for(frame, load_samples([ft_dir], ["fthand"]))
    key = ("fthand", "m__fp32__lora-r4__s0")
    assert curve_points(records, key, "train_loss_curve") == ([1, 2, 3, 4], [3.0, 2.0, 1.5, 1.0])
    assert curve_points(records, key, "heldout_loss_curve") is None
    lora = _row(finetune_summary(frame, records), "fp32", "lora-r4")
    assert lora["loss_change"] == pytest.approx(-0.5) and lora["change_low"] < -0.5


# --- figures and the report ------------------------------------------------------------------


def test_figures_are_drawn_from_the_records(ft_dir: Path) -> None:
    import matplotlib.pyplot as plt

    frame = load_runs([ft_dir])
    records = load_records([ft_dir], ["fthand"])
    fig = loss_curves(frame, records)
    assert fig is not None
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["fp32", "bf16"]  # one panel per precision
    fp32 = visible[0]
    names = {t.get_text() for t in fp32.texts}
    assert names == {"lora-r4", "full"}  # every mean curve named at its end
    # lora-r4: each seed's train loss thin, the mean train and held-out curves; full: one
    # seed, its train and held-out curves
    assert len(fp32.lines) == 2 + 2 + 2
    mean_train = [ln for ln in fp32.lines if ln.get_linewidth() > 1.5][0]
    assert list(mean_train.get_ydata()) == pytest.approx([3.0, 2.4, 2.1, 1.8])
    plt.close(fig)
    fig = quality_vs_memory(finetune_summary(frame, records))
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert labels == {"fp32/lora-r4", "fp32/full", "bf16/lora-r4"}
    plt.close(fig)
    assert loss_curves(frame, {}) is None  # no curve samples: not drawn


@pytest.fixture()
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave out the report's parts these tests do not look at (claims at scale and the
    memory model simulate architectures: seconds each)."""
    from harness.report import render

    monkeypatch.setattr(render, "claims_sections", lambda *args: [render.Section("-")] * 2)
    monkeypatch.setattr(render, "memory_model_section", lambda frame: render.Section("-"))


def test_report_has_the_fine_tuning_part_with_figures(
    ft_dir: Path, tmp_path: Path, quick: None
) -> None:
    out = tmp_path / "report"
    write_report(load_runs([ft_dir]), out)
    md = (out / "report.md").read_text()
    for title in ("Fine-tuning: held-out quality before and after", "Fine-tuning: loss curves",
                  "Fine-tuning: held-out loss against training memory"):  # fmt: skip
        assert f"## {title}" in md
    assert "| fp32 | lora-r4 | 2 | 1k (1%) | 2.000 → 1.500 | -0.5 [" in md
    for name in ("finetune_curves", "finetune_quality_vs_memory"):
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert b"<svg" in svg.read_bytes()[:2000]
        assert f"({name}.png)" in md
    assert "1 ok, 1 no_learning" in (out / "report.html").read_text()


def test_no_fine_tuning_part_without_fine_tuning_rows(tmp_path: Path, quick: None) -> None:
    plain = [r for r in hand_records() if r["cell"]["adapter"] == "none"]
    for record in plain:
        record["rows"] = record["rows"][:1]  # the load row only
    directory = write_records(tmp_path / "plain", plain)
    frame = load_runs([directory])
    assert not has_finetune(frame)
    assert finetune_sections(frame, tmp_path, {}) == []
    out = tmp_path / "report"
    write_report(frame, out)
    assert "Fine-tuning" not in (out / "report.md").read_text()
    assert not list(out.glob("finetune_*"))
