"""Is a drop significant? Paired bootstrap of each cell against its baseline cell.

Per-item values (perplexity windows, task items) live in the cell records, not the table. Each
cell is compared with the cell of the baseline precision that shares its model, adapter and
seed, item by item, so the shared difficulty of each window or question cancels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.results_dir import ResultsDir
from harness.stats import paired_bootstrap

BASELINE = "fp32"
PER_ITEM = tuple(
    f"heldout_{m}_{stage}" for m in ("loss", "exact_match") for stage in ("before", "after")
)
"""Fine-tuning rows whose samples are per held-out item (curves are per step, not items)."""


def _samples(record: dict[str, Any]) -> dict[str, list[float]]:
    return {
        r["metric"]: r["samples"]
        for r in record["rows"]
        if r.get("samples") and r.get("status", "ok") == "ok"
    }


def _records(results_dir: Path) -> list[dict[str, Any]]:
    # a damaged record is reported elsewhere; it has no samples to pair
    return ResultsDir(results_dir).records()


def _key(record: dict[str, Any]) -> tuple[str, str, int]:
    cell = record["cell"]
    return cell["model"], cell["adapter"], cell["seed"]


def paired_table(
    results_dirs: list[Path],
    labels: list[str],
    baseline: str = BASELINE,
    cell_ids: set[str] | None = None,
) -> Any:
    """Rows: run, precision, adapter, metric, difference vs baseline, 95% interval, verdict.

    For perplexity the items are per-window mean NLLs (a positive difference is worse); for
    accuracy they are per-question scores (a negative difference is worse); fine-tuning's
    held-out loss and exact match are per held-out item, the same seed's cell on both sides.
    """
    import pandas as pd

    rows = []
    for results_dir, label in zip(results_dirs, labels, strict=True):
        records = [r for r in _records(results_dir) if cell_ids is None or r["cell_id"] in cell_ids]
        bases = {_key(r): _samples(r) for r in records if r["cell"]["precision"] == baseline}
        for record in records:
            base = bases.get(_key(record))
            if base is None or record["cell"]["precision"] == baseline:
                continue
            for metric, values in _samples(record).items():
                # agreement metrics are already measured against the baseline
                comparable = (
                    metric == "perplexity" or metric.startswith("acc") or metric in PER_ITEM
                )
                if not comparable or metric not in base or len(base[metric]) != len(values):
                    continue
                cmp = paired_bootstrap(base[metric], values)
                rows.append(
                    {
                        "run": label,
                        "precision": record["cell"]["precision"],
                        "adapter": record["cell"]["adapter"],
                        "metric": "window NLL" if metric == "perplexity" else metric,
                        "difference": round(cmp.difference, 4),
                        "95% interval": f"[{cmp.low:+.4f}, {cmp.high:+.4f}]",
                        "significant": "yes" if cmp.significant else "no",
                        "items": cmp.n,
                    }
                )
    return pd.DataFrame(rows)
