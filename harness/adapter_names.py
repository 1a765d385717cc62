"""Names on the adapter axis: ``none``, ``lora-r<N>`` and ``full``, parsed in one place, and
the rule that says which modules a LoRA target list names.

A leaf module (no harness imports) so that configuration, workloads, results and reports all
read adapter names with the same rule.
"""

from __future__ import annotations

import re
from typing import Literal

AdapterKind = Literal["none", "lora", "full"]
ADAPTER_FORMS = ["none", "lora-r<N>", "full"]
"""Adapter names: the model as loaded, LoRA of rank N (any N >= 1), full fine-tuning."""
_LORA = re.compile(r"lora-r([1-9][0-9]*)")


def parse_adapter(name: str) -> tuple[AdapterKind, int | None]:
    """``lora-r8`` -> ("lora", 8); ``none``/``full`` -> (name, None); anything else raises
    ValueError naming the allowed forms."""
    if name in ("none", "full"):
        return name, None  # type: ignore[return-value]
    match = _LORA.fullmatch(name)
    if match is None:
        raise ValueError(
            f"unknown adapter '{name}'; allowed: {', '.join(ADAPTER_FORMS)} "
            "(N a positive integer rank, e.g. lora-r8)"
        )
    return "lora", int(match.group(1))


def lora_targets(name: str, targets: list[str] | None) -> bool:
    """Whether LoRA adapts the module ``name``: every linear (``targets`` None), or a target
    naming it or a dotted suffix of it (``q_proj``, ``self_attn.q_proj``), as peft matches."""
    if targets is None:
        return True
    return any(name == t or name.endswith("." + t) for t in targets)
