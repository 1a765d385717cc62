"""Names on the adapter axis: ``none``, ``<method>-r<N>`` and ``full``, parsed in one place,
and the rule that says which modules a LoRA target list names.

The LoRA-family methods share rank, alpha, dropout and targets and differ in one peft switch:
``lora`` (Hu et al.), ``rslora`` (rank-stabilised scaling ``alpha / sqrt(r)``) and ``dora``
(weight-decomposed: a trained magnitude per output row times the normalised adapted weight).
Everything that asks only "is this an adapter, of which rank" reads ``parse_adapter``'s kind
``lora``; what differs per method is read from :func:`lora_method`.

A leaf module (no harness imports) so that configuration, workloads, results and reports all
read adapter names with the same rule.
"""

from __future__ import annotations

import re
from typing import Literal

AdapterKind = Literal["none", "lora", "full"]
LoraMethod = Literal["lora", "rslora", "dora"]
LORA_METHODS: tuple[LoraMethod, ...] = ("lora", "rslora", "dora")
ADAPTER_FORMS = ["none", "lora-r<N>", "rslora-r<N>", "dora-r<N>", "full"]
"""Adapter names: the model as loaded, a LoRA-family adapter of rank N (any N >= 1), full
fine-tuning."""
_LORA = re.compile(r"(lora|rslora|dora)-r([1-9][0-9]*)")


def _match(name: str) -> re.Match[str]:
    match = _LORA.fullmatch(name)
    if match is None:
        raise ValueError(
            f"unknown adapter '{name}'; allowed: {', '.join(ADAPTER_FORMS)} "
            "(N a positive integer rank, e.g. lora-r8)"
        )
    return match


def parse_adapter(name: str) -> tuple[AdapterKind, int | None]:
    """``lora-r8`` / ``dora-r8`` / ``rslora-r8`` -> ("lora", 8); ``none``/``full`` -> (name,
    None); anything else raises ValueError naming the allowed forms."""
    if name in ("none", "full"):
        return name, None  # type: ignore[return-value]
    return "lora", int(_match(name).group(2))


def lora_method(name: str) -> LoraMethod | None:
    """``dora-r8`` -> ``dora``; None for ``none`` and ``full``."""
    if name in ("none", "full"):
        return None
    return _match(name).group(1)  # type: ignore[return-value]


def adapter_rank(name: str) -> int | None:
    """The rank of a LoRA-family adapter; None for ``none``, ``full`` and unknown names."""
    try:
        return parse_adapter(name)[1]
    except ValueError:
        return None


def lora_targets(name: str, targets: list[str] | None) -> bool:
    """Whether LoRA adapts the module ``name``: every linear (``targets`` None), or a target
    naming it or a dotted suffix of it (``q_proj``, ``self_attn.q_proj``), as peft matches."""
    if targets is None:
        return True
    return any(name == t or name.endswith("." + t) for t in targets)
