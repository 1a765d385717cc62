"""Helpers for claim tests: per-window samples for hand-built tables, verdicts by claim id."""

from __future__ import annotations

import math

import pandas as pd

from harness.report import normalize
from harness.report.claims import evaluate, load_claims


def window_samples(frame: pd.DataFrame, run: str = "r", noise: float = 0.0) -> dict:
    """Eight window NLLs per perplexity row whose mean is log(ppl): a difficulty shared by all
    cells (it cancels in a paired comparison) plus ``noise`` of each cell's own."""
    shared = [-0.3, 0.1, 0.25, -0.15, 0.05, 0.2, -0.05, -0.1]
    own = [1, -1, 1, -1, -1, 1, -1, 1]
    out = {}
    rows = frame[(frame["metric"] == "perplexity") & frame["value"].notna()]
    for i, row in enumerate(rows.itertuples()):
        mine = own[i % 8:] + own[:i % 8]  # each cell its own pattern: no cancelling in pairs
        out[(run, row.cell_id)] = {"perplexity": [
            math.log(row.value) + d + noise * o for d, o in zip(shared, mine, strict=True)]}
    return out


def by_id(frame: pd.DataFrame, samples: dict | None = None) -> dict[str, object]:
    frame = normalize(frame.assign(run="r"))
    samples = window_samples(frame) if samples is None else samples
    return {v.claim.id: v for v in evaluate(load_claims(), frame, samples)}


def with_accounted(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``mem.accounted`` (sum of the live-tensor terms) to every training cell."""
    parts = frame[frame["metric"].isin(["mem.frozen_weights", "mem.adapter_params",
                                        "mem.gradients", "mem.optimizer_state"])]
    rows = []
    for _, group in parts.groupby("cell_id"):
        row = group.iloc[0].copy()
        row["metric"], row["value"] = "mem.accounted", group["value"].sum() + 1.2e9
        rows.append(row)
    return pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
