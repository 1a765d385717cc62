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

# Weight-only PTQ built by the harness (harness.quant): RTN, GPTQ, SpQR. Decoder linears only.
_RTN = "harness.schemes.rtn:RTNScheme"
_GPTQ = "harness.schemes.gptq:GPTQScheme"
_SPQR = "harness.schemes.spqr:SpQRScheme"
_SPQR_REF = {
    "beta1": 16,
    "beta2": 16,
    "qq_scale_bits": 3,
    "qq_zero_bits": 3,
    "outlier_threshold": 0.2,
    "act_order": True,
    "percdamp": 1.0,
}
_ENTRIES += [
    SchemeEntry(
        "rtn-w4g128",
        _RTN,
        "round-to-nearest, 4-bit, groups of 128 (no calibration)",
        {"bits": 4, "group_size": 128},
    ),
    SchemeEntry(
        "rtn-w3g128",
        _RTN,
        "round-to-nearest, 3-bit, groups of 128 (no calibration)",
        {"bits": 3, "group_size": 128},
    ),
    SchemeEntry(
        "gptq-w4g128",
        _GPTQ,
        "GPTQ 4-bit, groups of 128, act-order",
        {"bits": 4, "group_size": 128, "act_order": True},
    ),
    SchemeEntry(
        "gptq-w3g128",
        _GPTQ,
        "GPTQ 3-bit, groups of 128, act-order",
        {"bits": 3, "group_size": 128, "act_order": True},
    ),
    SchemeEntry(
        "spqr-w4",
        _SPQR,
        "SpQR 4-bit, beta1=beta2=16, 3-bit stats, outliers tau=0.2",
        {"bits": 4, **_SPQR_REF},
    ),
    SchemeEntry(
        "spqr-w3",
        _SPQR,
        "SpQR 3-bit, beta1=beta2=16, 3-bit stats, outliers tau=0.2",
        {"bits": 3, **_SPQR_REF},
    ),
]

# torchao weight quantization through transformers' TorchAoConfig (harness.schemes.torchao).
_AO = "harness.schemes.torchao:TorchAoScheme"
_ENTRIES += [
    SchemeEntry("ao-int8wo", _AO, "torchao int8 weight-only, per-row scales", {"kind": "int8wo"}),
    SchemeEntry(
        "ao-int8dq",
        _AO,
        "torchao int8 dynamic activations (per token) + int8 weights",
        {"kind": "int8dq"},
    ),
    SchemeEntry(
        "ao-int4wo-g64",
        _AO,
        "torchao int4 weight-only, groups of 64 (CUDA)",
        {"kind": "int4wo", "group_size": 64},
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
