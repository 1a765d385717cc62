"""torchao weight quantization through transformers' ``TorchAoConfig``.

``int8wo``: int8 weights, one fp32 scale and int8 zero point per output row, fp32 activations.
``int8dq``: the same weights with activations quantized to int8 per token at run time.
``int4wo``: 4-bit weights in groups, bf16 scale and zero per group (torchao's tinygemm layout;
torchao 0.18 has no CPU layout for it, so it is CUDA only here). The quantized weights are
torchao tensor subclasses; the footprint counts their inner tensors
(``harness/measure/torchao_storage.py``).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Literal

from harness.schemes.base import LoadedModel, SchemeHandler, SchemeOptions

VERSION = "0.18.0"


class TorchAoOptions(SchemeOptions):
    kind: Literal["int8wo", "int8dq", "int4wo"]
    """int8 weight-only, int8 dynamic activation + int8 weight, or int4 weight-only."""
    group_size: Literal[32, 64, 128, 256] = 64
    """Weights per scale and zero (int4wo only; must divide every quantized layer's inputs)."""
    skip_modules: tuple[str, ...] = ("lm_head",)
    """Modules kept unquantized (decoder linears only, like the other weight-only schemes)."""


def _ao_config(opts: TorchAoOptions):
    from torchao import quantization as q

    if opts.kind == "int8wo":
        return q.Int8WeightOnlyConfig()
    if opts.kind == "int8dq":
        return q.Int8DynamicActivationInt8WeightConfig()
    packing = "tile_packed_to_4d"  # tinygemm, CUDA
    return q.Int4WeightOnlyConfig(group_size=opts.group_size, int4_packing_format=packing)


class TorchAoScheme(SchemeHandler):
    Options = TorchAoOptions

    def unavailable(self, opts: TorchAoOptions, device: str) -> str | None:
        if importlib.util.find_spec("torchao") is None:
            return f"torchao is not installed (pip install torchao=={VERSION})"
        if device not in ("cpu", "cuda"):
            return f"torchao precisions run on cpu or cuda, not {device!r}"
        if opts.kind == "int4wo" and device != "cuda":
            return (
                "torchao 0.18 int4 weight-only has no CPU layout (plain/preshuffled need the mslk "
                "package, plain_int32 and tile_packed_to_4d need CUDA)"
            )
        return None

    def linear_bytes(self, opts: TorchAoOptions, out: int, inp: int) -> tuple[int, int]:
        if opts.kind == "int4wo":
            # two codes per byte; a bf16 scale and zero per group and output row
            return (out * inp + 1) // 2, math.ceil(inp / opts.group_size) * out * 2 * 2
        return out * inp, out * (4 + 1)  # int8 codes; fp32 scale + int8 zero point per row

    def dense_dtype(self, opts: TorchAoOptions) -> str:
        return "bfloat16" if opts.kind == "int4wo" else "float32"

    def load(self, source, opts: TorchAoOptions, device: str) -> LoadedModel:
        import torch
        from transformers import TorchAoConfig

        config = TorchAoConfig(
            quant_type=_ao_config(opts), modules_to_not_convert=list(opts.skip_modules)
        )
        dtype = getattr(torch, self.dense_dtype(opts))
        model = source.load_model(dtype=dtype, device=device, quantization_config=config)
        compute = "int8" if opts.kind == "int8dq" else self.dense_dtype(opts)
        loaded = LoadedModel(model, source.tokenizer(), "quantized", compute)
        loaded.notes["torchao_config"] = type(config.quant_type).__name__
        return loaded
