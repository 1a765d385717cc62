"""``harness show``: which stored cells were measured somewhere other than here."""

from __future__ import annotations

from pathlib import Path

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
