"""GPTQ: column-by-column quantization with second-order error compensation.

Minimises ``||W X - Q X||^2`` for calibration inputs ``X`` using ``H = 2 X X^T``. Each
column is rounded, and its error, scaled by the upper Cholesky factor of ``H^-1``, is
pushed onto the columns not yet quantized. Updates are applied lazily: inside a block of
``block_size`` columns immediately, to the rest of the matrix once per block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from harness.quant.grid import dequantize, fit_minmax, num_groups, quantize, round_to_fp16
from harness.quant.linear import QuantizedWeight
from harness.quant.pack import pack


class Hessian:
    """Running mean of ``2 x x^T`` over calibration tokens (float32)."""

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self.matrix = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.nsamples = 0

    def add_batch(self, x: Tensor) -> None:
        """Accumulate inputs ``x[..., in_features]``; every leading index is one token."""
        x = x.detach().reshape(-1, self.in_features).to(self.matrix.device, torch.float32)
        n = x.shape[0]
        if n == 0:
            return
        self.matrix.mul_(self.nsamples / (self.nsamples + n))
        self.nsamples += n
        x = x * math.sqrt(2.0 / self.nsamples)
        self.matrix.addmm_(x.t(), x)


def as_matrix(H: Hessian | Tensor) -> Tensor:
    return H.matrix if isinstance(H, Hessian) else H


def index_dtype(n: int) -> torch.dtype:
    """Smallest signed integer dtype that can index ``n`` positions."""
    return torch.int16 if n <= 2**15 - 1 else torch.int32


def prepare(
    weight: Tensor, H: Hessian | Tensor, act_order: bool, percdamp: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Shared solver setup; returns ``(W, Hinv, perm)`` in stored (permuted) column order.

    Dead inputs (zero Hessian diagonal) never reach the output, so their weights are set to
    0 and their diagonal to 1 to keep ``H`` invertible. Damping is relative to the mean
    diagonal. ``Hinv`` is the upper Cholesky factor of ``H^-1``.
    """
    W = weight.detach().float().clone()
    Hm = as_matrix(H).detach().to(W.device, torch.float32).clone()
    diag = Hm.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    W[:, dead] = 0.0
    perm = None
    if act_order:
        perm = torch.argsort(diag, descending=True, stable=True)
        W = W[:, perm]
        Hm = Hm[perm][:, perm]
    Hm.diagonal().add_(percdamp * Hm.diagonal().abs().mean())
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hm))
    Hinv = torch.linalg.cholesky(Hinv, upper=True)
    return W, Hinv, perm


def current_columns(
    W: Tensor, W1: Tensor, err: Tensor, Hinv: Tensor, i1: int, i: int, end: int
) -> Tensor:
    """Up-to-date values of stored columns ``[i1 + i, end)`` while inside block ``i1``.

    Columns inside the block live in ``W1``; columns past it have not yet received this
    block's pending update, which is applied here so groups are fit on the updated weights.
    """
    i2 = i1 + W1.shape[1]
    inside = W1[:, i : min(end, i2) - i1]
    if end <= i2:
        return inside
    beyond = W[:, i2:end]
    if i > 0:
        beyond = beyond - err[:, :i] @ Hinv[i1 : i1 + i, i2:end]
    return torch.cat([inside, beyond], dim=1)


class ColumnSweep:
    """GPTQ's column-by-column pass with lazy batch updates, shared by GPTQ and SpQR.

    Iterating yields stored column indices ``j`` in order. For each one the solver reads
    :meth:`column` (or a group ahead with :meth:`columns_until`), quantizes it and calls
    :meth:`commit` with the reconstructed values: the scaled error is spread over the rest of
    the block at once and over later blocks in one matmul when the block ends.
    """

    def __init__(self, W: Tensor, Hinv: Tensor, block_size: int) -> None:
        self.W, self.Hinv, self.block_size = W, Hinv, block_size

    def __iter__(self) -> Iterator[int]:
        W, Hinv = self.W, self.Hinv
        cols = W.shape[1]
        for i1 in range(0, cols, self.block_size):
            i2 = min(i1 + self.block_size, cols)
            self.i1 = i1
            self.W1 = W[:, i1:i2].clone()
            self.err = torch.zeros_like(self.W1)
            self.H1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                self.i = i
                yield i1 + i
            W[:, i2:] -= self.err @ Hinv[i1:i2, i2:]

    def column(self) -> Tensor:
        """The current column, ``[rows, 1]``, with every earlier error applied."""
        return self.W1[:, self.i : self.i + 1]

    def columns_until(self, end: int) -> Tensor:
        """Up-to-date stored columns from the current one up to ``end`` (a group to fit)."""
        return current_columns(self.W, self.W1, self.err, self.Hinv, self.i1, self.i, end)

    def pivot(self) -> Tensor:
        """The current column's diagonal entry of the Cholesky factor of ``H^-1``."""
        return self.H1[self.i, self.i]

    def commit(self, reconstructed: Tensor) -> None:
        """Fix the current column at ``reconstructed`` and compensate the later columns."""
        i = self.i
        e = (self.column() - reconstructed) / self.pivot()
        self.W1[:, i:] -= e @ self.H1[i : i + 1, i:]
        self.err[:, i : i + 1] = e


def store_perm(perm: Tensor | None, cols: int) -> Tensor | None:
    return None if perm is None else perm.to(index_dtype(cols))


def gptq_quantize(
    weight: Tensor,
    H: Hessian | Tensor,
    bits: int,
    group_size: int | None = None,
    act_order: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
    sym: bool = False,
) -> QuantizedWeight:
    """GPTQ on the min-max grid (zero rounded, range containing 0).

    ``group_size=None`` (or <= 0) fits one grid per row. With ``act_order`` columns are
    processed by decreasing Hessian diagonal and groups are contiguous in that order; the
    permutation is stored so dequantization is exact.
    """
    W, Hinv, perm = prepare(weight, H, act_order, percdamp)
    rows, cols = W.shape
    gs = cols if not group_size or group_size <= 0 else min(group_size, cols)
    scales = torch.zeros(num_groups(cols, gs), rows, device=W.device)
    zeros = torch.zeros_like(scales)
    codes = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)
    scale = zero = None
    sweep = ColumnSweep(W, Hinv, block_size)
    for j in sweep:
        if j % gs == 0:
            group = sweep.columns_until(min(j + gs, cols))
            scale, zero = fit_minmax(group, bits, round_zero=True, sym=sym)
            scale = round_to_fp16(scale)
            scales[j // gs], zeros[j // gs] = scale[:, 0], zero[:, 0]
        q = quantize(sweep.column(), scale, zero, bits)
        codes[:, j] = q[:, 0].to(torch.uint8)
        sweep.commit(dequantize(q, scale, zero))
    return QuantizedWeight.from_codes(
        codes,
        bits,
        gs,
        scale=scales.half(),
        zero=pack(zeros.to(torch.uint8), bits),
        zero_bits=bits,
        perm=store_perm(perm, cols),
        method="gptq",
    )
