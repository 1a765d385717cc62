"""Uncertainty: bootstrap confidence intervals and paired comparisons against a baseline.

Perplexity is resampled over windows (its per-window mean NLLs), accuracy over items. The
paired bootstrap resamples the same windows/items for both cells, so the shared difficulty of
each item cancels and small real differences become visible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int


def _resample_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_mean(
    samples: Sequence[float],
    *,
    transform: Callable[[float], float] = lambda x: x,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap of ``transform(mean(samples))``; ``transform=math.exp`` turns mean
    NLLs into a perplexity interval. The transform must be monotonic increasing."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to bootstrap")
    means = _resample_means(values, n_boot, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(
        transform(float(values.mean())),
        transform(float(low)),
        transform(float(high)),
        int(values.size),
    )


@dataclass(frozen=True)
class PairedComparison:
    difference: float
    """mean(candidate) - mean(baseline) over the shared items."""
    low: float
    high: float
    p_value: float
    """Two-sided bootstrap p-value of a zero difference."""
    n: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Bootstrap the mean of per-item differences (items must be aligned)."""
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired samples must align and be non-empty: {a.shape} vs {b.shape}")
    diff = b - a
    means = _resample_means(diff, n_boot, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    centred = means - diff.mean()
    p = float(np.mean(np.abs(centred) >= abs(diff.mean())))
    return PairedComparison(
        float(diff.mean()), float(low), float(high), max(p, 1 / n_boot), int(diff.size)
    )


def perplexity_interval(window_nlls: Sequence[float], **kw: float) -> Interval:
    return bootstrap_mean(window_nlls, transform=math.exp, **kw)  # type: ignore[arg-type]
