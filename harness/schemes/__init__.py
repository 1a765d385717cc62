"""The precision registry: name -> handler, imported lazily.

Adding a precision is one handler module plus one line in ``_ENTRIES``. The table only holds
names, one-line descriptions and preset options, so listing precisions or validating an
experiment never imports torch-heavy code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UnknownNameError


@dataclass(frozen=True)
class SchemeEntry:
    """One registered precision: a handler (``module:Class``) and the preset options it gets."""

    name: str
    handler: str
    description: str
    preset: dict[str, Any] = field(default_factory=dict)


_D = "harness.schemes.dense:DenseScheme"

_ENTRIES: list[SchemeEntry] = [
    SchemeEntry("fp32", _D, "32-bit float weights and compute", {"dtype": "float32"}),
    SchemeEntry(
        "tf32",
        _D,
        "fp32 weights, TF32 tensor-core matmuls (CUDA, compute capability >= 8.0)",
        {"dtype": "float32", "tf32": True},
    ),
    SchemeEntry("fp16", _D, "16-bit IEEE half weights and compute", {"dtype": "float16"}),
    SchemeEntry("bf16", _D, "16-bit bfloat16 weights and compute", {"dtype": "bfloat16"}),
]

_I8 = "harness.schemes.bnb:Int8Scheme"
_B4 = "harness.schemes.bnb:FourBitScheme"
_ENTRIES += [
    SchemeEntry(
        "int8",
        _I8,
        "LLM.int8(): int8 weights, fp16 outlier decomposition at 6.0",
        {"threshold": 6.0},
    ),
    SchemeEntry(
        "int8-nodecomp",
        _I8,
        "int8 absmax weights without outlier decomposition",
        {"threshold": 0.0},
    ),
    SchemeEntry(
        "nf4",
        _B4,
        "4-bit NormalFloat, fp32 absmax per 64 weights",
        {"quant_type": "nf4", "double_quant": False},
    ),
    SchemeEntry(
        "nf4-dq",
        _B4,
        "NF4 with double quantization of the absmax constants (QLoRA)",
        {"quant_type": "nf4", "double_quant": True},
    ),
    SchemeEntry(
        "fp4",
        _B4,
        "4-bit float (E2M1), fp32 absmax per 64 weights",
        {"quant_type": "fp4", "double_quant": False},
    ),
    SchemeEntry(
        "fp4-dq",
        _B4,
        "FP4 with double quantization of the absmax constants",
        {"quant_type": "fp4", "double_quant": True},
    ),
]

REGISTRY: dict[str, SchemeEntry] = {e.name: e for e in _ENTRIES}


def scheme_names() -> list[str]:
    return list(REGISTRY)


def get_entry(name: str) -> SchemeEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownNameError("precision", name, scheme_names()) from None


def get_handler(name: str) -> Any:
    """Instantiate the handler class of a precision (imports its module on first use)."""
    entry = get_entry(name)
    module_name, class_name = entry.handler.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(entry)
