"""Stored tensors of layers whose weight is a torchao tensor subclass.

Such a weight reports the dense logical shape and dtype, so counting it like a plain tensor would
give its fp32 size; its real bytes are those of its inner tensors (``__tensor_flatten__``): the
codes (``qdata``) and the scales and zero points.
"""

from __future__ import annotations

from typing import Any

CODE_NAMES = ("qdata", "packed_weight", "int_data")


def is_subclass_weight(tensor: Any) -> bool:
    import torch

    plain = (torch.Tensor, torch.nn.Parameter)
    return type(tensor) not in plain and hasattr(tensor, "__tensor_flatten__")


def entries(mod_name: str, module: Any) -> list[tuple[str, Any, str, int | None]] | None:
    """(name, tensor, category, logical params) of a layer with a subclass weight, else None."""
    weight = getattr(module, "weight", None)
    if weight is None or not is_subclass_weight(weight):
        return None
    inner, _ = weight.__tensor_flatten__()
    out = []
    for name in inner:
        t = getattr(weight, name)
        if name in CODE_NAMES:
            out.append((f"{mod_name}.weight.{name}", t, "quantized_weights", weight.numel()))
        else:
            out.append((f"{mod_name}.weight.{name}", t, "quant_state", 0))
    bias = getattr(module, "bias", None)
    if bias is not None:
        out.append((f"{mod_name}.bias", bias, "biases", None))
    return out
