"""Training optimizers by name, and whether a device can run them.

Kept apart from the training workload (and free of torch) so a cell can be refused before its
model is loaded: a paged optimizer on a CPU is known to fail before any calibration starts.
"""

from __future__ import annotations

PAGED = {"paged_adamw_8bit": "PagedAdamW8bit", "paged_adamw_32bit": "PagedAdamW32bit"}
"""bitsandbytes' paged optimizers (setting name -> class in ``bitsandbytes.optim``)."""


def optimizer_unavailable(name: str, device: str) -> str | None:
    """Why optimizer ``name`` cannot run on ``device`` (None when it can)."""
    if name in PAGED and device != "cuda":
        return (
            f"optimizer '{name}' pages its state between GPU and CPU memory with bitsandbytes "
            f"and needs CUDA; device is '{device}' (use optimizer: adamw)"
        )
    return None
