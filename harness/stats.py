"""Uncertainty: bootstrap confidence intervals and paired comparisons against a baseline.

Perplexity is resampled over windows (its per-window mean NLLs), accuracy over items. The
paired bootstrap resamples the same windows/items for both cells, so the shared difficulty of
each item cancels and small real differences become visible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def seed_item_replicates(
    per_seed: Mapping[Any, Sequence[float]], n_boot: int = 2000, seed: int = 0
) -> np.ndarray:
    """Bootstrap replicates of the mean over seeds of the mean over items.

    Each replicate draws the seeds with replacement and, independently, the items; the items
    are drawn once per replicate for every seed, since every seed scores the same held-out
    items in the same order (what an item's difficulty does to all seeds moves together).
    ``per_seed[s]`` are seed s's per-item values (all seeds the same length). The same
    ``seed`` draws the same weights for any values of that shape, so two sides resampled with
    it are paired.
    """
    rows = [np.asarray(v, dtype=np.float64) for v in per_seed.values()]
    if not rows or any(r.size == 0 for r in rows):
        raise ValueError("no per-item values to resample")
    if len({r.size for r in rows}) != 1:
        sizes = sorted({r.size for r in rows})
        raise ValueError(f"paired samples must align: seeds scored {sizes} items")
    x = np.stack(rows)  # seeds x items
    n_seeds, n_items = x.shape
    rng = np.random.default_rng(seed)
    seed_w = rng.multinomial(n_seeds, [1 / n_seeds] * n_seeds, size=n_boot) / n_seeds
    item_w = rng.multinomial(n_items, [1 / n_items] * n_items, size=n_boot) / n_items
    return ((seed_w @ x) * item_w).sum(axis=1)


def paired_seed_bootstrap(
    a: Mapping[int, Sequence[float]],
    b: Mapping[int, Sequence[float]],
    reduce: Callable[[Any, Any], Any] = np.subtract,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval of ``reduce(mean a, mean b)`` over seeds and items, paired on both.

    ``a[s]`` and ``b[s]`` are per-item values of one seed's cells on the same items. Both
    sides are resampled with the same draws (:func:`seed_item_replicates`), so the interval
    carries run-to-run variation and the choice of items while what the two sides share (an
    item's difficulty, a seed) cancels. ``reduce`` works on arrays: ``np.subtract`` for a
    difference, ``lambda x, y: (x - y) / y`` for a relative change.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed measured on both sides")
    lengths = {len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}
    if len(lengths) != 1:
        raise ValueError(f"paired samples must align: {sorted(lengths)} items")
    ra = seed_item_replicates({s: a[s] for s in seeds}, n_boot, seed)
    rb = seed_item_replicates({s: b[s] for s in seeds}, n_boot, seed)
    stat = reduce(ra, rb)
    tail = (1 - confidence) / 2
    low, high = np.quantile(stat, [tail, 1 - tail])
    mean_a = float(np.mean([np.mean(a[s]) for s in seeds]))
    mean_b = float(np.mean([np.mean(b[s]) for s in seeds]))
    estimate = float(reduce(np.asarray(mean_a), np.asarray(mean_b)))
    return Interval(estimate, float(low), float(high), len(seeds) * lengths.pop())
