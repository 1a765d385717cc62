"""Storage of the per-group statistics (scales and zero points).

A statistic is a ``[n_groups, rows]`` table stored in one of three ways, chosen by its
bit width and by whether second-level statistics are present:

* ``bits == 16``: raw float16 values;
* ``bits < 16`` without second level: the values are small integers stored as packed
  codes (GPTQ zero points);
* ``bits < 16`` with second level (SpQR bilevel): each run of ``stats_group_size`` rows of
  a column group shares a float16 ``(scale, zero)`` pair and the values are packed codes
  on that grid.

Encoding and decoding share :func:`decode_bilevel`, so the values a solver compensates
for are bit-identical to the ones the stored format reproduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.quant.grid import fit_minmax, quantize, round_to_fp16
from harness.quant.pack import gather_codes, unpack


def _pad_rows(values: Tensor, group: int) -> Tensor:
    """Pad the last dim to a multiple of ``group`` by repeating the last value.

    Repeating (rather than zero-filling) leaves the min/max of a short last group intact.
    """
    pad = (-values.shape[-1]) % group
    if pad == 0:
        return values
    return torch.cat([values, values[..., -1:].expand(*values.shape[:-1], pad)], dim=-1)


def encode_bilevel(values: Tensor, bits: int, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """Quantize a ``[rows]`` statistic vector in runs of ``group`` rows.

    Returns ``(codes[rows] uint8, second[n_runs, 2] float16, decoded[rows] float32)``.
    """
    rows = values.shape[-1]
    runs = _pad_rows(values.float(), group).view(-1, group)
    scale, zero = fit_minmax(runs, bits, round_zero=False)
    scale, zero = round_to_fp16(scale), round_to_fp16(zero)
    codes = quantize(runs, scale, zero, bits).reshape(-1)[:rows].to(torch.uint8)
    second = torch.cat([scale, zero], dim=1).half()
    return codes, second, decode_bilevel(codes, second, group)


def decode_bilevel(codes: Tensor, second: Tensor, group: int) -> Tensor:
    """Values of bilevel codes ``[..., rows]`` given ``second[..., n_runs, 2]``."""
    rows = codes.shape[-1]
    pad = (-rows) % group
    c = codes.float()
    if pad:
        c = F.pad(c, (0, pad))
    c = c.view(*codes.shape[:-1], -1, group)
    scale = second[..., 0:1].float()
    zero = second[..., 1:2].float()
    out = scale * (c - zero)
    return out.reshape(*codes.shape[:-1], -1)[..., :rows]


def decode_stat(
    data: Tensor,
    bits: int,
    second: Tensor | None,
    n_groups: int,
    rows: int,
    stats_group_size: int,
) -> Tensor:
    """Float32 ``[n_groups, rows]`` table from its stored form (see module docstring)."""
    if bits >= 16:
        return data.float().reshape(n_groups, rows)
    codes = unpack(data, bits, (n_groups, rows))
    if second is None:
        return codes.float()
    return decode_bilevel(codes, second, stats_group_size)


def stat_at(
    data: Tensor,
    bits: int,
    second: Tensor | None,
    rows: int,
    stats_group_size: int,
    group: Tensor,
    row: Tensor,
) -> Tensor:
    """Float32 values of the stored ``[n_groups, rows]`` table at ``(group, row)`` pairs.

    Decodes only the requested entries (the outlier correction needs a handful).
    """
    flat = group.long() * rows + row.long()
    if bits >= 16:
        return data.reshape(-1)[flat].float()
    codes = gather_codes(data, bits, flat).float()
    if second is None:
        return codes
    n_runs = second.shape[-2]
    pair = second.reshape(-1, 2)[group.long() * n_runs + row.long() // stats_group_size].float()
    return pair[:, 0] * (codes - pair[:, 1])
