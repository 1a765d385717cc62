"""GPTQ weight-only quantization, calibrated block by block (see ``weight_only``)."""

from __future__ import annotations

from typing import Any

from harness.schemes.gptq_options import GPTQOptions
from harness.schemes.rtn import RTNScheme
from harness.schemes.weight_only import _CalibratedScheme


class GPTQScheme(_CalibratedScheme):
    """GPTQ (Frantar et al. 2022) with fp16 scales and ``bits``-wide zero points per group."""

    Options = GPTQOptions
    family = "gptq"

    def solve(self, weight: Any, hessian: Any, opts: Any) -> Any:
        from harness.quant import gptq_quantize

        return gptq_quantize(
            weight, hessian, opts.bits, opts.group_size, opts.act_order, opts.percdamp,
            opts.block_size, opts.sym,
        )  # fmt: skip

    def rtn_fallback(self, weight: Any, opts: Any) -> Any:
        from harness.quant import rtn_quantize

        return rtn_quantize(weight, opts.bits, opts.group_size, opts.sym)

    def formula_bits(self, opts: Any, rows: int, cols: int, outlier_fraction: float) -> float:
        return RTNScheme.formula_bits(self, opts, rows, cols, outlier_fraction)
