"""Every stored tensor of a model once, categorised: what the footprint counts.

Packed quantized codes count at their packed size and quantization state (scales, absmax,
code tables, outliers) as its own category; "parameters" are logical weights, so a 4-bit
layer of out x in weights counts out x in parameters. Shared by the footprint workload and
the memory measurements (live model bytes), so both count the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.measure.tensor_identity import tensor_key
from harness.modules import is_linear_like

CATEGORIES = [
    "quantized_weights",
    "quant_state",
    "linear_weights",
    "expert_weights",
    "lm_head",
    "embeddings",
    "norms",
    "biases",
    "buffers",
    "other",
]


@dataclass(frozen=True)
class Entry:
    """One stored tensor: where it sits, what it is, its bytes and the weights it represents."""

    name: str
    category: str
    dtype: str
    nbytes: int
    params: int
    kind: str = ""
    """``linear`` (linear-like layer weight), ``experts`` (3-D expert weight) or empty."""


def _tensor_entry(
    name: str, tensor: Any, category: str, params: int | None = None, kind: str = ""
) -> Entry:
    nbytes = tensor.numel() * tensor.element_size()
    dtype = str(tensor.dtype).removeprefix("torch.")
    logical = tensor.numel() if params is None else params
    return Entry(name, category, dtype, nbytes, logical, kind)


def _kind(module: Any, category: str) -> str:
    """What a weight is, whatever its storage: a linear-like layer's or an expert's."""
    if category == "expert_weights" or getattr(module, "holds_experts", False):
        return "experts" if category in ("expert_weights", "quantized_weights") else ""
    return "linear" if category in ("linear_weights", "quantized_weights") else ""


def _plain_category(module: Any, pname: str, full_name: str, lm_head: Any) -> str:
    import torch.nn as nn

    cls = type(module).__name__
    if module is lm_head:
        return "lm_head" if pname == "weight" else "biases"
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if "Norm" in cls:
        return "norms"
    if pname == "bias":
        return "biases"
    if pname == "weight" and is_linear_like(module):
        return "linear_weights"
    param = getattr(module, pname, None)
    n = getattr(module, "num_experts", None)
    if param is not None and param.dim() == 3 and param.shape[0] == n:
        return "expert_weights"
    return "other"


def inventory(model: Any) -> list[Entry]:
    """Every stored tensor of ``model`` once, categorised.

    Modules that store quantized weights describe themselves: a ``footprint_entries()`` method
    (the harness's own QuantLinear) or a known bitsandbytes class.
    """
    from harness.measure import bnb_storage, torchao_storage

    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    seen: set[tuple[int, int]] = set()
    entries: list[Entry] = []
    for mod_name, module in model.named_modules():
        special = _special_entries(mod_name, module, bnb_storage)
        if special is None:  # a torchao tensor-subclass weight: counted by its inner tensors
            special = torchao_storage.entries(mod_name, module)
        if special is not None:
            tensors = special
        else:
            tensors = [
                (f"{mod_name}.{p}", t, _plain_category(module, p, mod_name, lm_head), None)
                for p, t in module.named_parameters(recurse=False)
            ]
        tensors += [
            (f"{mod_name}.{b}", t, "buffers", 0)
            for b, t in module.named_buffers(recurse=False)
            if special is None
        ]
        for name, tensor, category, params in tensors:
            key = tensor_key(tensor)
            if key in seen:
                continue
            seen.add(key)
            kind = _kind(module, category)
            entries.append(_tensor_entry(name, tensor, category, params, kind))
    return entries


def _special_entries(mod_name: str, module: Any, bnb_storage: Any) -> list | None:
    if hasattr(module, "footprint_entries"):
        return [(f"{mod_name}.{n}", t, c, p) for n, t, c, p in module.footprint_entries()]
    return bnb_storage.entries(mod_name, module)
