"""Bootstrap intervals and paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.stats import bootstrap_mean, paired_bootstrap, perplexity_interval


def test_interval_contains_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200, 2000):
        samples = rng.normal(2.5, 0.4, size=n)
        ci = bootstrap_mean(samples)
        assert ci.low <= ci.estimate <= ci.high
        assert ci.estimate == pytest.approx(samples.mean())
        widths.append(ci.high - ci.low)
    assert widths[0] > widths[1] > widths[2]
    # ~ 2 * 1.96 * sigma / sqrt(n) for the largest n
    assert widths[2] == pytest.approx(2 * 1.96 * 0.4 / math.sqrt(2000), rel=0.15)


def test_perplexity_interval_is_exp_of_nll_interval() -> None:
    nlls = [2.4, 2.6, 2.5, 2.7, 2.3, 2.55]
    ppl, nll = perplexity_interval(nlls), bootstrap_mean(nlls)
    assert ppl.estimate == pytest.approx(math.exp(np.mean(nlls)))
    assert ppl.low == pytest.approx(math.exp(nll.low)) and ppl.high == pytest.approx(
        math.exp(nll.high)
    )


def test_paired_bootstrap_sees_a_small_shift_that_unpaired_intervals_hide() -> None:
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1.0, size=300)  # shared per-item variation
    base = 2.5 + difficulty
    cand = base + 0.03 + rng.normal(0, 0.01, size=300)
    a, b = bootstrap_mean(base), bootstrap_mean(cand)
    assert a.high > b.low  # unpaired intervals overlap
    result = paired_bootstrap(base, cand)
    assert result.significant and result.low > 0
    assert result.difference == pytest.approx(0.03, abs=0.005)
    assert paired_bootstrap(base, base + rng.normal(0, 0.01, 300)).significant is False


def test_paired_bootstrap_rejects_misaligned_samples() -> None:
    with pytest.raises(ValueError, match="align"):
        paired_bootstrap([1.0, 2.0], [1.0])
