"""Round-to-nearest quantization of a weight matrix into a packed :class:`QuantizedWeight`.

The baseline every calibrated method is compared with: the GPTQ grid (``grid.py``) fitted per
row and group of input columns, no calibration data. Lives above ``linear.py`` (it builds the
stored form) while ``grid.py`` stays the plain arithmetic both depend on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.quant.grid import fit_minmax, quantize, round_to_fp16
from harness.quant.linear import QuantizedWeight
from harness.quant.pack import pack


def rtn_quantize(
    weight: Tensor, bits: int, group_size: int | None = None, sym: bool = False
) -> QuantizedWeight:
    """Round-to-nearest baseline on the GPTQ grid, per row and per group of input columns.

    ``group_size=None`` (or <= 0) means one group per row. Group sizes that do not divide
    the number of columns leave a shorter last group.
    """
    w = weight.detach().float()
    rows, cols = w.shape
    gs = cols if not group_size or group_size <= 0 else min(group_size, cols)
    scales, zeros, codes = [], [], []
    for start in range(0, cols, gs):
        block = w[:, start : start + gs]
        scale, zero = fit_minmax(block, bits, round_zero=True, sym=sym)
        scale = round_to_fp16(scale)
        codes.append(quantize(block, scale, zero, bits))
        scales.append(scale[:, 0])
        zeros.append(zero[:, 0])
    return QuantizedWeight.from_codes(
        codes=torch.cat(codes, dim=1).to(torch.uint8),
        bits=bits,
        group_size=gs,
        scale=torch.stack(scales).half(),
        zero=pack(torch.stack(zeros).to(torch.uint8), bits),
        zero_bits=bits,
        method="rtn",
    )
