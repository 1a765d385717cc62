"""Intervals for a claim's measured value, and where an interval lies against a threshold.

A noisy quantity (perplexity, speed) is judged on an interval, never on a point estimate: a
perplexity ratio of two cells uses a paired bootstrap over their shared windows (the per-window
mean NLLs stored in the cell records), so the difficulty every window shares cancels; without
aligned samples it falls back to the cells' own 95% intervals, combined at their worst case
(conservative). Without either there is no interval and no verdict.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.stats import paired_bootstrap, paired_seed_bootstrap

PAIRED, COMBINED = "paired bootstrap over windows", "per-cell 95% intervals, worst case"
SEEDS = "paired bootstrap over seeds and items"
Samples = dict[tuple[str, str], dict[str, list[float]]]  # (run, cell_id) -> metric -> samples


def load_samples(dirs: list[Path], labels: list[str]) -> Samples:
    """Per-item samples of every ok row in every cell record, keyed by run label and cell id."""
    from harness.results_dir import ResultsDir

    out: Samples = {}
    for results_dir, label in zip(dirs, labels, strict=True):
        for record in ResultsDir(Path(results_dir)).records():  # damaged ones are skipped
            out[(label, record["cell_id"])] = {
                r["metric"]: r["samples"]
                for r in record.get("rows", [])
                if r.get("samples") and r.get("status", "ok") == "ok"
            }
    return out


def interval_side(
    comparison: str, target: float, tolerance: float, kind: str, low: float, high: float
) -> bool | None:
    """True when all of [low, high] satisfies the comparison, False when none of it does,
    None when the interval straddles the threshold."""
    tol = tolerance * (abs(target) if kind == "relative" else 1.0)
    if comparison == "~":
        lo_ok, hi_ok = target - tol, target + tol
        if lo_ok <= low and high <= hi_ok:
            return True
        return False if high < lo_ok or low > hi_ok else None
    edge = {">=": target - tol, ">": target - tol, "<=": target + tol, "<": target + tol}
    strict = comparison in (">", "<")
    if comparison in (">=", ">"):
        good = low > edge[comparison] if strict else low >= edge[comparison]
        bad = high <= edge[comparison] if strict else high < edge[comparison]
    else:
        good = high < edge[comparison] if strict else high <= edge[comparison]
        bad = low >= edge[comparison] if strict else low > edge[comparison]
    return True if good else False if bad else None


def _paired(reducer: str, a: list[float], b: list[float]) -> tuple[float, float] | None:
    """Ratio / relative change of two perplexities from aligned window NLLs."""
    if len(a) != len(b) or not a or reducer not in ("ratio", "relative_change"):
        return None
    cmp = paired_bootstrap(b, a)  # mean(a - b) of window NLLs = log(ppl_a / ppl_b)
    shift = 1.0 if reducer == "relative_change" else 0.0
    return math.exp(cmp.low) - shift, math.exp(cmp.high) - shift


def _combined(
    reducer: str, a: tuple[float, float], b: tuple[float, float] | None
) -> tuple[float, float] | None:
    if b is None:
        return a
    if reducer == "difference":
        return a[0] - b[1], a[1] - b[0]
    if b[0] <= 0:
        return None
    shift = 1.0 if reducer == "relative_change" else 0.0
    return a[0] / b[1] - shift, a[1] / b[0] - shift


def _over_seeds(
    reducer: str, metric_a: str, metric_b: str | None, a: Any, b: Any
) -> tuple[float, float] | None:
    """A difference or relative change of per-item means (fine-tuning quality), paired over
    the seeds both operands ran and the items they share; None where they share none."""
    if b is None or metric_a != metric_b or metric_a == "perplexity":
        return None
    reduce = {"difference": lambda x, y: x - y, "relative_change": lambda x, y: (x - y) / y}
    common = set(a.seed_samples) & set(b.seed_samples)
    if reducer not in reduce or not common:
        return None
    lengths = {len(a.seed_samples[s]) for s in common} | {len(b.seed_samples[s]) for s in common}
    if len(lengths) != 1:
        return None
    pick = {s: a.seed_samples[s] for s in common}, {s: b.seed_samples[s] for s in common}
    ci = paired_seed_bootstrap(*pick, reduce[reducer])
    return ci.low, ci.high


def measured_interval(
    reducer: str, metric_a: str, metric_b: str | None, a: Any, b: Any
) -> tuple[tuple[float, float] | None, str]:
    """(interval, method) from the operands' ``samples`` or their cells' ``ci``, if any."""
    seeds = _over_seeds(reducer, metric_a, metric_b, a, b)
    if seeds is not None:
        return seeds, SEEDS
    if b is not None and metric_a == metric_b == "perplexity":
        pair = _paired(reducer, a.samples or [], b.samples or [])
        if pair is not None:
            return pair, PAIRED
    if a.ci is None or (b is not None and b.ci is None):
        return None, ""
    combined = _combined(reducer, a.ci, None if b is None else b.ci)
    return (combined, COMBINED) if combined is not None else (None, "")
