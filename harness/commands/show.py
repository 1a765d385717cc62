"""``harness show``: which stored cells were measured somewhere other than here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.results_dir import ELSEWHERE, ResultsDir


def foreign_note(results: Path) -> str:
    """A few lines naming the cells from another environment and how it differs; '' if none."""
    store = ResultsDir(results)
    foreign = store.foreign_cells()
    lines = []
    if foreign:
        first = next(iter(foreign.values()))
        lines.append(
            f"{len(foreign)} of {len(store.record_paths())} cells were measured in another "
            f"environment than this machine's ({'; '.join(first[:3])}): "
            + ", ".join(foreign)
        )
    archived = sorted((results / ELSEWHERE).glob("*/cells"))
    if archived:
        dirs = ", ".join(str(p.parent) for p in archived)
        lines.append(f"Replaced results from other environments are kept in: {dirs}")
    return "\n".join(lines)


def beside_reference(results: Path, reference: Path) -> tuple[Any, list[str]]:
    """The key figures of ``results`` next to ``reference`` for the cells both measured (same
    model, precision, adapter and seed), with the ratio; and how the environments differ."""
    import pandas as pd

    from harness.results import load_table
    from harness.summary import KEY_METRICS, SCALE, wide

    yours, ref = wide(load_table(results)), wide(load_table(reference))
    keys = ["model", "precision", "adapter", "seed"]
    both = yours.merge(ref, on=keys, suffixes=("", " (reference)"))
    rows = []
    for _, row in both.iterrows():
        out = {k: row[k] for k in keys[1:]}
        for metric, _, title, fmt in KEY_METRICS:
            mine, theirs = row.get(title), row.get(f"{title} (reference)")
            if pd.isna(mine) and pd.isna(theirs):
                continue
            out[title] = _pair(mine, theirs, fmt, SCALE.get(metric, 1.0))
        rows.append(out)
    return pd.DataFrame(rows), _environment_differences(results, reference)


def _pair(mine: Any, theirs: Any, fmt: str, scale: float) -> str:
    """``yours / reference (ratio)``."""
    import pandas as pd

    def shown(v: Any) -> str:
        return "-" if pd.isna(v) else fmt.format(v * scale)

    ratio = "" if pd.isna(mine) or pd.isna(theirs) or not theirs else f" ({mine / theirs:.2f}x)"
    return f"{shown(mine)} / {shown(theirs)}{ratio}"


def _environment_differences(results: Path, reference: Path) -> list[str]:
    """What differs between the first cell of each directory: CPU/GPU, versions, code."""
    from harness.measure.env import differences
    from harness.results import record_fingerprint

    mine, theirs = ResultsDir(results).records(), ResultsDir(reference).records()
    if not mine or not theirs:
        return []
    return differences(record_fingerprint(theirs[0]), record_fingerprint(mine[0]))
