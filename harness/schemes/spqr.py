"""SpQR weight-only quantization with outliers, calibrated block by block."""

from __future__ import annotations

from typing import Any

from harness.schemes.gptq_options import SpQROptions
from harness.schemes.weight_only import _CalibratedScheme


class SpQRScheme(_CalibratedScheme):
    """SpQR (Dettmers et al. 2023): small groups, 3-bit bilevel statistics, fp16 outliers."""

    Options = SpQROptions
    family = "spqr"

    def solve(self, weight: Any, hessian: Any, opts: Any) -> Any:
        from harness.quant import spqr_quantize

        return spqr_quantize(
            weight, hessian, opts.bits, opts.beta1, opts.beta2, opts.qq_scale_bits,
            opts.qq_zero_bits, opts.outlier_threshold, opts.act_order, opts.percdamp,
            opts.block_size, opts.simplified_outliers,
        )  # fmt: skip

    def rtn_fallback(self, weight: Any, opts: Any) -> Any:
        from harness.quant import rtn_quantize

        # groups of beta1 input columns, as SpQR's first-level statistics
        return rtn_quantize(weight, opts.bits, opts.beta1)

    def formula_bits(self, opts: Any, rows: int, cols: int, outlier_fraction: float) -> float:
        from harness.quant import formula_bits_spqr

        # formula_bits_spqr counts two float16 second-level pairs per beta1 x beta2 weights;
        # a statistic kept in float16 has no second level, so count what is really stored
        n_second = (opts.qq_scale_bits is not None) + (opts.qq_zero_bits is not None)
        base = formula_bits_spqr(
            opts.bits, opts.beta1, opts.beta2, opts.qq_scale_bits or 16, opts.qq_zero_bits or 16,
            outlier_fraction,
        )  # fmt: skip
        return base + (32 * n_second - 64) / (opts.beta1 * opts.beta2)
