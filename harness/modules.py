"""Finding and replacing layers inside a torch model: the rules every part of the harness shares.

"Linear-like" means ``nn.Linear`` or GPT-2's ``Conv1D`` (the same map with its weight stored
``in x out``); schemes quantize them, adapters wrap them and the footprint counts them, so all
of them must agree on what they are.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def conv1d_type() -> type | None:
    """transformers' ``Conv1D`` class, or None when transformers is not installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def linear_like_types() -> tuple[type, ...]:
    conv1d = conv1d_type()
    return (nn.Linear,) + ((conv1d,) if conv1d is not None else ())


def is_linear_like(module: Any) -> bool:
    """``nn.Linear`` or GPT-2's ``Conv1D``."""
    return isinstance(module, linear_like_types())


def linears(root: nn.Module) -> dict[str, nn.Module]:
    """Linear-like modules under ``root`` by their dotted names."""
    return {n: m for n, m in root.named_modules() if is_linear_like(m)}


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``name`` under ``root`` (replacing what was there)."""
    parent_name, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, leaf, module)
