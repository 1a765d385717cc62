"""Round-to-nearest weight-only quantization: the no-calibration baseline."""

from __future__ import annotations

from typing import Any

from harness.schemes.gptq_options import RTNOptions
from harness.schemes.weight_only import QuantizedScheme


class RTNScheme(QuantizedScheme):
    """Round-to-nearest on the GPTQ grid: the no-calibration baseline."""

    Options = RTNOptions
    family = "rtn"

    def quantize(self, model: Any, layers: Any, tokenizer: Any, opts: Any, device: str) -> dict:
        from harness.quant import quantize_uncalibrated, rtn_quantize

        def rtn(_name: str, linear: Any) -> Any:
            return rtn_quantize(linear.weight, opts.bits, opts.group_size, opts.sym)

        return quantize_uncalibrated(layers, rtn)

    def formula_bits(self, opts: Any, rows: int, cols: int, outlier_fraction: float) -> float:
        # codes + a float16 scale and a ``bits``-wide zero point per group
        gs = cols if opts.group_size <= 0 else min(opts.group_size, cols)
        return opts.bits + (16 + opts.bits) / gs
