"""SpQR: small-group GPTQ with bilevel statistics and unstructured fp16 outliers.

Differences from GPTQ (``gptq.py``) that matter for accuracy per stored bit:

* groups of ``beta1`` columns on a min-max grid with an unrounded zero point;
* each group's per-row scales and zeros are themselves quantized to a few bits in runs of
  ``beta2`` rows, with a float16 ``(scale, zero)`` per run (bilevel statistics);
* weights whose rounding error would cost much more than average are kept exactly
  (float16) as outliers. The cost of a weight is its Hessian-weighted error
  ``((w - q(w)) / d)^2`` with ``d = diag(Hinv)``; the threshold is relative:
  ``tau = outlier_threshold * mean_j(Var_i W_ij / d_j^2)``. Before fitting a group's grid,
  weights whose removal reduces the group's error by more than ``tau`` (leave-one-out) are
  excluded from the fit; then each column marks the weights whose error exceeds ``tau``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from harness.quant.gptq import ColumnSweep, Hessian, index_dtype, prepare, store_perm
from harness.quant.grid import dequantize, fit_minmax, num_groups, quantize, round_to_fp16
from harness.quant.group_stats import encode_bilevel
from harness.quant.linear import QuantizedWeight
from harness.quant.pack import pack


def leave_one_out_gain(group: Tensor, d: Tensor, bits: int) -> Tensor:
    """Drop in the group's weighted squared error when each weight leaves the grid fit.

    ``group[rows, g]``, ``d[g]``; returns ``[rows, g]``. The left-out weight contributes no
    error (it would be stored exactly), the others are rounded on a grid fit without it.
    """
    rows, g = group.shape
    idx = torch.arange(g, device=group.device)
    others = idx.expand(g, g)[~torch.eye(g, dtype=torch.bool, device=group.device)]
    others = others.view(g, g - 1)
    data = group[:, others].reshape(rows * g, g - 1)
    scale, zero = fit_minmax(data, bits, round_zero=False)
    rec = dequantize(quantize(data, scale, zero, bits), scale, zero)
    loo = ((rec - data).view(rows, g, g - 1) / d[others]).square().sum(-1)
    scale, zero = fit_minmax(group, bits, round_zero=False)
    rec = dequantize(quantize(group, scale, zero, bits), scale, zero)
    base = ((rec - group) / d).square().sum(dim=1, keepdim=True)
    return base - loo


class _GroupStats:
    """Fits and records the (bilevel) statistics of every column group."""

    def __init__(
        self,
        n_groups: int,
        rows: int,
        qq_scale_bits: int | None,
        qq_zero_bits: int | None,
        beta2: int,
        device: torch.device,
    ) -> None:
        self.bits = {"scale": qq_scale_bits or 16, "zero": qq_zero_bits or 16}
        self.beta2 = beta2
        runs = -(-rows // beta2)
        self.values = {k: torch.zeros(n_groups, rows, device=device) for k in self.bits}
        self.codes = {
            k: torch.zeros(n_groups, rows, dtype=torch.uint8, device=device) for k in self.bits
        }
        self.second = {
            k: torch.zeros(n_groups, runs, 2, dtype=torch.float16, device=device) for k in self.bits
        }

    def record(self, g: int, name: str, values: Tensor) -> Tensor:
        """Store statistic ``values[rows, 1]`` of group ``g``; returns the decoded values."""
        if self.bits[name] >= 16:
            decoded = round_to_fp16(values[:, 0])
        else:
            codes, second, decoded = encode_bilevel(values[:, 0], self.bits[name], self.beta2)
            self.codes[name][g], self.second[name][g] = codes, second
        self.values[name][g] = decoded
        return decoded[:, None]

    def stored(self, name: str) -> tuple[Tensor, Tensor | None]:
        if self.bits[name] >= 16:
            return self.values[name].half(), None
        return pack(self.codes[name], self.bits[name]), self.second[name]


def _fit_group(
    group: Tensor, d: Tensor, bits: int, tau: float, use_loo: bool, stats: _GroupStats, g: int
) -> tuple[Tensor, Tensor]:
    """Grid of one group, fit without the likely outliers; returns decoded (scale, zero)."""
    if use_loo and group.shape[1] > 1:
        likely = leave_one_out_gain(group, d, bits) > tau
        keep = (~likely).float()
        mean = (group * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
        group = torch.where(likely, mean, group)
    scale, zero = fit_minmax(group, bits, round_zero=False)
    return stats.record(g, "scale", scale), stats.record(g, "zero", zero)


def _quantize_column(
    w: Tensor, scale: Tensor, zero: Tensor, bits: int, d: Tensor, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Codes, reconstruction and outlier mask of one column ``w[rows, 1]``."""
    q = quantize(w, scale, zero, bits)
    rec = dequantize(q, scale, zero)
    if math.isinf(tau):
        return q, rec, torch.zeros_like(w, dtype=torch.bool)
    outlier = ((w - rec) / d).square() > tau
    if outlier.any():
        q = quantize(torch.where(outlier, 0.0, w), scale, zero, bits)
        rec = torch.where(outlier, round_to_fp16(w), dequantize(q, scale, zero))
    return q, rec, outlier


def spqr_quantize(
    weight: Tensor,
    H: Hessian | Tensor,
    bits: int = 3,
    beta1: int = 16,
    beta2: int = 16,
    qq_scale_bits: int | None = 3,
    qq_zero_bits: int | None = 3,
    outlier_threshold: float = 0.2,
    act_order: bool = True,
    percdamp: float = 1.0,
    block_size: int = 128,
    simplified_outliers: bool = False,
) -> QuantizedWeight:
    """SpQR quantization of ``weight[out, in]`` (see module docstring).

    ``qq_*_bits=None`` keeps that statistic in float16; ``outlier_threshold=inf`` disables
    outliers; ``simplified_outliers`` skips the leave-one-out pre-filter.
    """
    W, Hinv, perm = prepare(weight, H, act_order, percdamp)
    rows, cols = W.shape
    d = Hinv.diagonal()
    tau = math.inf
    if not math.isinf(outlier_threshold):
        tau = outlier_threshold * float((W.var(dim=0) / d.square()).mean())
    stats = _GroupStats(num_groups(cols, beta1), rows, qq_scale_bits, qq_zero_bits, beta2, W.device)
    codes = torch.zeros(rows, cols, dtype=torch.uint8, device=W.device)
    outliers = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    values = torch.zeros(rows, cols, dtype=torch.float16, device=W.device)
    use_loo = not simplified_outliers and not math.isinf(tau)
    sweep = ColumnSweep(W, Hinv, block_size)
    for j in sweep:
        if j % beta1 == 0:
            end = min(j + beta1, cols)
            group = sweep.columns_until(end)
            scale, zero = _fit_group(group, d[j:end], bits, tau, use_loo, stats, j // beta1)
        w = sweep.column()
        q, rec, out = _quantize_column(w, scale, zero, bits, sweep.pivot(), tau)
        codes[:, j] = q[:, 0].to(torch.uint8)
        outliers[:, j], values[:, j] = out[:, 0], torch.where(out, w, 0.0)[:, 0].half()
        sweep.commit(rec)
    return _assemble(codes, outliers, values, perm, stats, bits, beta1, beta2)


def outliers_to_csr(mask: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """CSR (values fp16, column int16/int32, row pointers int32), sorted by row then column."""
    nz = mask.nonzero()
    if nz.shape[0] == 0:
        return None
    rows, cols = mask.shape
    rowptr = torch.zeros(rows + 1, dtype=torch.int32, device=mask.device)
    rowptr[1:] = mask.sum(dim=1).cumsum(0).to(torch.int32)
    return values[nz[:, 0], nz[:, 1]].half(), nz[:, 1].to(index_dtype(cols)), rowptr


def _assemble(
    codes: Tensor,
    outliers: Tensor,
    values: Tensor,
    perm: Tensor | None,
    stats: _GroupStats,
    bits: int,
    beta1: int,
    beta2: int,
) -> QuantizedWeight:
    rows, cols = codes.shape
    if perm is not None:
        outliers = torch.empty_like(outliers).index_copy_(1, perm, outliers)
        values = torch.empty_like(values).index_copy_(1, perm, values)
    csr = outliers_to_csr(outliers, values) or (None, None, None)
    scale, scale2 = stats.stored("scale")
    zero, zero2 = stats.stored("zero")
    bilevel = scale2 is not None or zero2 is not None
    return QuantizedWeight.from_codes(
        codes,
        bits,
        min(beta1, cols),
        scale=scale,
        zero=zero,
        scale_bits=stats.bits["scale"],
        zero_bits=stats.bits["zero"],
        stats_group_size=beta2 if bilevel else 0,
        scale2=scale2,
        zero2=zero2,
        outlier_values=csr[0],
        outlier_cols=csr[1],
        outlier_rowptr=csr[2],
        perm=store_perm(perm, cols),
        method="spqr",
    )
