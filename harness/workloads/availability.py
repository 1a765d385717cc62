"""Whether a workload can run in a cell here, answered from the cell alone (nothing loaded).

These checks run in the preflight before a model is loaded, so a cell that cannot run is
skipped before a scheme spends minutes calibrating.
"""

from __future__ import annotations

from typing import Any

from harness.adapter_names import parse_adapter
from harness.optimizers import optimizer_unavailable


def training_unavailable(cell: Any, settings: Any) -> str | None:
    """An adapter cell trains with ``settings.optimizer``; the device must support it.
    A cell with adapter ``none`` trains nothing, so its optimizer does not matter."""
    kind, _ = parse_adapter(cell.adapter)
    if kind == "none":
        return None
    return optimizer_unavailable(settings.optimizer, cell.device)
