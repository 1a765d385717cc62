"""Uniform asymmetric min-max grids, per output row (``rtn.py`` builds the RTN baseline on them).

Two flavours of the same grid are used by the solvers:

* GPTQ style (``round_zero=True``): the range is widened to contain 0 and the zero point
  is rounded to an integer, so zero is exactly representable and the zero point itself
  is a ``bits``-wide integer.
* SpQR style (``round_zero=False``): the range is the plain min/max of the values and the
  zero point is kept real-valued (it is later quantized by the second-level grid).

Reconstruction is always ``scale * (code - zero)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# smallest scale used; it survives a float16 round trip, so stored scales never become 0
MIN_SCALE = 1e-7


def fit_minmax(w: Tensor, bits: int, round_zero: bool, sym: bool = False) -> tuple[Tensor, Tensor]:
    """Fit a per-row grid to ``w[rows, cols]``; returns ``scale[rows, 1]``, ``zero[rows, 1]``."""
    maxq = 2**bits - 1
    w = w.float()
    xmin = w.min(dim=1, keepdim=True).values
    xmax = w.max(dim=1, keepdim=True).values
    if round_zero:
        xmin = xmin.clamp(max=0)
        xmax = xmax.clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    # a constant row has no range: widen it upwards only, so its value stays the
    # bottom grid point and is reconstructed exactly
    xmax = torch.where(xmax == xmin, xmax + 1, xmax)
    scale = ((xmax - xmin) / maxq).clamp(min=MIN_SCALE)
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        zero = -xmin / scale
        if round_zero:
            zero = zero.round().clamp(0, maxq)
    return scale, zero


def quantize(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """Nearest grid code of each value (float tensor holding integers in ``[0, 2**bits)``)."""
    return torch.clamp(torch.round(w / scale.clamp(min=MIN_SCALE) + zero), 0, 2**bits - 1)


def dequantize(codes: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    """Grid value of each code."""
    return scale * (codes.float() - zero)


def round_to_fp16(t: Tensor) -> Tensor:
    """Values as they will be after float16 storage, so solvers compensate the real error."""
    return t.half().float()


def num_groups(cols: int, group_size: int) -> int:
    """Number of column groups; the last one may be shorter."""
    return -(-cols // group_size)
