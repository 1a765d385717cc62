"""What is checked once for a whole matrix before any cell runs.

A cell finds a bad model only after its process has started (a mistyped hub id costs each cell
half a minute of retries offline), and an absurd LoRA rank only after minutes of training, so
both are asked here, once per model, and refused with one clear message.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.config import Cell
from harness.errors import HarnessError

WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
"""Config names of the model width: every projection has it as its input or output size."""


def check_matrix(cells: Iterable[Cell]) -> None:
    """Every model resolvable and its config readable; every LoRA rank within the width."""
    cells = list(cells)
    for model in dict.fromkeys(c.model for c in cells):
        config = model_config(model)
        width = next((getattr(config, k) for k in WIDTH_KEYS if hasattr(config, k)), None)
        ranks = sorted({c.adapter_options["r"] for c in cells
                        if c.model == model and "r" in c.adapter_options})
        too_wide = [r for r in ranks if width and r > width]
        if too_wide:
            raise HarnessError(
                f"LoRA rank {too_wide[0]} exceeds the width of {model} ({width}): an update "
                f"of rank r needs r <= min(in, out) of the layer; use a rank <= {width}"
            )


def model_config(spec: str) -> Any:
    """The model's config, read once: a HarnessError naming the model when it cannot be had."""
    from harness.models import resolve

    source = resolve(spec)  # unknown builtin names and missing local directories end here
    if source.kind == "hub" and _cached_config(source.path) is None:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(source.path)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarnessError(
                f"model '{spec}' cannot be had: it is not in the local Hugging Face cache and "
                f"the hub did not provide it ({first}); check the id, log in for a gated "
                "model, or download it first"
            ) from None
    try:
        return source.config()
    except (OSError, ValueError) as exc:
        raise HarnessError(f"model '{spec}': its config cannot be read: {exc}") from None


def _cached_config(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found) if isinstance(found, str) else None
