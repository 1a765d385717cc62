"""What is checked once for a whole matrix before any cell runs.

A cell finds a bad model only after its process has started (a mistyped hub id costs each cell
half a minute of retries offline), and an absurd LoRA rank only after minutes of training, so
both are asked here, once per model, and refused with one clear message.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.config import Cell
from harness.errors import HarnessError

WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
"""Config names of the model width: every projection has it as its input or output size."""


def check_matrix(cells: Iterable[Cell]) -> None:
    """Every model resolvable and its config readable; every LoRA rank within the width."""
    from harness.memory_model import load_config  # presets offline; a hub id is asked once

    cells = list(cells)
    for model in dict.fromkeys(c.model for c in cells):
        config = load_config(model)
        width = next((getattr(config, k) for k in WIDTH_KEYS if hasattr(config, k)), None)
        ranks = sorted({c.adapter_options["r"] for c in cells
                        if c.model == model and "r" in c.adapter_options})
        too_wide = [r for r in ranks if width and r > width]
        if too_wide:
            raise HarnessError(
                f"LoRA rank {too_wide[0]} exceeds the width of {model} ({width}): an update "
                f"of rank r needs r <= min(in, out) of the layer; use a rank <= {width}"
            )
