"""Timing fixed work: warmups, then repeats; raw samples kept, median/p10/p90 reported."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def sync_device(device: str) -> None:
    """Wait for queued CUDA work (a no-op elsewhere) so a clock or a memory read covers it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> list[float]:
    """Seconds per call for ``repeats`` calls after ``warmup`` untimed ones.

    On CUDA the device is synchronised around each call so the time covers the kernels, not
    just their launch; perf_counter is then as good as CUDA events at these durations.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        sync_device(device)
        start = time.perf_counter()
        fn()
        sync_device(device)
        samples.append(time.perf_counter() - start)
    return samples


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (as numpy's default), without numpy."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_rows(metric: str, values: list[float], unit: str) -> list[dict[str, Any]]:
    """median, p10 and p90 rows of one metric, each with the sample count."""
    n = len(values)
    return [
        {"metric": metric, "value": quantile(values, q), "unit": unit, "stat": stat, "n": n}
        for stat, q in (("median", 0.5), ("p10", 0.1), ("p90", 0.9))
    ]
