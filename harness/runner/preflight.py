"""Can this cell run here? Asked before its model is loaded.

Loading can take minutes (GPTQ and SpQR calibrate), so everything decidable from the cell
alone is decided first: the precision's device needs, then each enabled workload's (the
training optimizer, for instance). Only what needs the loaded model, full fine-tuning on
quantized storage, is left to ``adapters.attach``.
"""

from __future__ import annotations

from typing import Any

from harness.schemes import get_handler
from harness.workloads import unavailable as workload_unavailable


def preflight(cell: Any) -> str | None:
    """The first reason ``cell`` cannot run on its device, or None when nothing stops it."""
    handler = get_handler(cell.precision)
    reason = handler.unavailable(handler.Options(**cell.precision_options), cell.device)
    if reason:
        return reason
    for name in cell.workloads.enabled():
        reason = workload_unavailable(name, cell)
        if reason:
            return reason
    return None
