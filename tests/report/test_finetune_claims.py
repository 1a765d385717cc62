"""Fine-tuning claims: judged on held-out loss after fine-tuning, paired over seeds and items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.report.claim_interval import SEEDS
from harness.stats import paired_seed_bootstrap
from tests.report.claim_helpers import by_id
from tests.report.conftest import _cell, _row


def test_seed_bootstrap_carries_the_spread_between_seeds():
    """Seed 0 differs by 1, seed 1 by 3, on every item: resampling items alone would give
    [2, 2]; resampling seeds gives means of 1 (both picks seed 0), 2 or 3."""
    a = {0: [1.0, 1.0, 1.0], 1: [3.0, 3.0, 3.0]}
    b = {0: [0.0, 0.0, 0.0], 1: [0.0, 0.0, 0.0]}
    ci = paired_seed_bootstrap(a, b)
    assert ci.estimate == pytest.approx(2.0)
    assert ci.low == pytest.approx(1.0) and ci.high == pytest.approx(3.0)
    assert ci.n == 6


def test_seed_bootstrap_pairs_items_so_shared_difficulty_cancels():
    hard = [0.5, 3.0, 1.0, 6.0]  # item difficulty shared by both sides
    a = {s: [h + 0.1 for h in hard] for s in range(3)}
    b = {s: list(hard) for s in range(3)}
    ci = paired_seed_bootstrap(a, b)
    assert ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1)
    rel = paired_seed_bootstrap(a, b, lambda x, y: (x - y) / y)
    assert rel.estimate == pytest.approx(0.4 / sum(hard))


def test_seed_bootstrap_needs_shared_seeds_and_aligned_items():
    with pytest.raises(ValueError, match="no seed"):
        paired_seed_bootstrap({0: [1.0]}, {1: [1.0]})
    with pytest.raises(ValueError, match="align"):
        paired_seed_bootstrap({0: [1.0, 2.0]}, {0: [1.0]})


def _finetune_table(losses: dict[tuple[str, str], list[list[float]]]):
    """One heldout_loss_after row per (precision, adapter, seed); samples per item."""
    rows, samples = [], {}
    for (precision, adapter), per_seed in losses.items():
        for seed, items in enumerate(per_seed):
            cell = _cell(precision, adapter)
            cell.update(cell_id=f"{cell['cell_id']}__s{seed}", seed=seed)
            row = _row(cell, "finetune", "heldout_loss_after", float(np.mean(items)))
            rows.append(row)
            samples[("r", cell["cell_id"])] = {"heldout_loss_after": items}
    return pd.DataFrame(rows), samples


def test_qlora_matches_16bit_lora_when_the_paired_interval_is_inside_1pct():
    rng = np.random.default_rng(0)
    items = [list(1.0 + rng.random(32)) for _ in range(3)]
    close = [[x * 1.002 for x in seed] for seed in items]  # 0.2% worse on every item
    frame, samples = _finetune_table({("bf16", "lora-r8"): items, ("nf4-dq", "lora-r8"): close})
    verdict = by_id(frame, samples)["qlora-matches-16bit-lora"]
    assert verdict.verdict == "reproduced" and verdict.method == SEEDS
    assert verdict.measured == pytest.approx(0.002, rel=1e-6)
    assert len(verdict.cells) == 6


def test_a_seed_that_disagrees_makes_the_verdict_undecided():
    rng = np.random.default_rng(1)
    items = [list(1.0 + rng.random(32)) for _ in range(3)]
    # two seeds match, one is 5% worse: the mean is inside 1% +- ... but the seeds straddle it
    other = [items[0], items[1], [x * 1.05 for x in items[2]]]
    frame, samples = _finetune_table({("bf16", "lora-r8"): items, ("nf4-dq", "lora-r8"): other})
    verdict = by_id(frame, samples)["qlora-matches-16bit-lora"]
    assert verdict.verdict.startswith("within noise")
    low, high = verdict.interval
    assert low == pytest.approx(0.0, abs=1e-9) and high > 0.01


def test_lora_clearly_worse_than_full_is_not_reproduced():
    rng = np.random.default_rng(2)
    full = [list(0.5 + rng.random(32)) for _ in range(3)]
    lora = [[x * 1.3 for x in seed] for seed in full]
    frame, samples = _finetune_table({("fp32", "full"): full, ("fp32", "lora-r8"): lora})
    verdict = by_id(frame, samples)["lora-matches-full-finetuning"]
    assert verdict.verdict == "not reproduced"
    assert verdict.interval[0] == pytest.approx(0.3) and verdict.method == SEEDS


def test_a_methods_own_learning_rate_is_no_conflict() -> None:
    from harness.report.claim_cells import conflicts

    lora = frozenset({"data=builtin;steps=8;lr=0.001"})
    full = frozenset({"data=builtin;steps=8;lr=5e-05"})
    assert conflicts(lora, full) == []
    assert conflicts(lora, frozenset({"data=builtin;steps=4;lr=5e-05"})) == ["steps 8/4"]
