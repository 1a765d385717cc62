"""Fused dequantize + matmul for :class:`~harness.quant.linear.QuantizedWeight` (Triton).

The torch path of ``QuantLinear`` rebuilds the whole dense weight in memory on every
forward and then multiplies. The kernel here reads the packed codes and the stored
statistics tile by tile, dequantizes each ``[BLOCK_K, BLOCK_N]`` tile in registers and
feeds it straight into ``tl.dot``: the dense weight never exists in global memory, so a
decode step reads ``bits`` bits per weight instead of 16 or 32.

Everything the stored format allows is decoded inside the kernel: any code width 1..8
(dense bit stream, codes may straddle a byte), statistics as float16, as packed integers
(GPTQ zero points) or bilevel (SpQR: 3-bit codes on a float16 ``(scale, zero)`` grid per
run of ``stats_group_size`` rows), and group sizes that do not divide the width. The
act-order permutation is applied to the activations (a cheap gather), and the sparse
outliers, a fraction of a percent of the weights, are added afterwards as a sparse
correction ``(outlier - grid value)`` so the dense tiles stay branch-free.

On a CPU-only machine the kernel can be executed by Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported); the tests use that to check it
against the torch path.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from harness.quant.group_stats import stat_at
from harness.quant.pack import gather_codes

if TYPE_CHECKING:  # linear.py imports this module; only the type is needed here
    from harness.quant.linear import QuantizedWeight


@functools.cache
def triton_available() -> bool:
    """Whether triton can be imported (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def fused_linear(x: Tensor, qw: QuantizedWeight, bias: Tensor | None = None) -> Tensor:
    """``x @ W.T + bias`` with ``W`` dequantized inside the kernel; differentiable in ``x``."""
    return _FusedLinear.apply(x, qw, bias)


class _FusedLinear(torch.autograd.Function):
    """Forward through the kernel; backward rebuilds the weight once (training is rarer)."""

    @staticmethod
    def forward(ctx, x: Tensor, qw: QuantizedWeight, bias: Tensor | None) -> Tensor:
        ctx.qw = qw
        return _forward(x, qw, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        qw: QuantizedWeight = ctx.qw
        w = qw.dequantize(dtype=grad.dtype)
        return grad @ w, None, None


def _forward(x: Tensor, qw: QuantizedWeight, bias: Tensor | None) -> Tensor:
    rows, cols = qw.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols)
    if qw.perm is not None:
        x2 = x2.index_select(-1, qw.perm.long())
    y = _dense_part(x2.contiguous(), qw)
    if qw.num_outliers:
        y = y + _outlier_correction(x2, qw).to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, rows)


def _dense_part(x: Tensor, qw: QuantizedWeight) -> Tensor:
    """``x_stored @ grid_weight.T`` by the Triton kernel (outliers not included)."""
    from harness.quant import _triton_kernel as kernel  # triton imported only when used

    return kernel.launch(x, qw)


def _outlier_correction(x_stored: Tensor, qw: QuantizedWeight) -> Tensor:
    """``x_stored @ D.T`` where ``D`` holds ``outlier - grid value`` at the outlier positions."""
    rows, cols = qw.shape
    counts = qw.outlier_rowptr.long().diff()
    row = torch.repeat_interleave(torch.arange(rows, device=x_stored.device), counts)
    col = qw.outlier_cols.long()
    if qw.perm is not None:
        col = torch.argsort(qw.perm.long())[col]  # original -> stored column
    group = col // qw.group_size
    code = gather_codes(qw.codes, qw.bits, row * cols + col).float()
    scale = stat_at(qw.scale, qw.scale_bits, qw.scale2, rows, qw.stats_group_size, group, row)
    zero = stat_at(qw.zero, qw.zero_bits, qw.zero2, rows, qw.stats_group_size, group, row)
    delta = qw.outlier_values.float() - scale * (code - zero)
    # the CSR order is by (row, original column); re-sort by stored column within each row
    order = torch.argsort(row * cols + col)
    crow = qw.outlier_rowptr.long()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        sparse = torch.sparse_csr_tensor(
            crow, col[order], delta[order], size=(rows, cols), check_invariants=False
        )
        return torch.sparse.mm(sparse, x_stored.float().t()).t()
