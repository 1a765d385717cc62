"""Packed CPU matmul layouts for :class:`~harness.quant.linear.QuantLinear`.

Rebuilding the dense weight on every call makes a quantized layer far slower than a dense one.
These layouts are converted once from a :class:`QuantizedWeight` and then multiplied directly
by torch's packed CPU kernels, which read the low-bit codes and never materialise the weight:

* ``int4pack``: codes of up to 4 bits in torch's int4 container
  (``aten._weight_int4pack_mm_for_cpu``, the kernel torchao's CPU int4 layout uses). The kernel
  computes ``(q - 8) * scale + zero`` per group of 32/64/128/256 input columns, so the stored
  ``scale * (q - z)`` maps exactly onto it with ``zero = scale * (8 - z)``. A stored group that
  is a multiple of a kernel group is split (its statistics repeated, exact); a stored group the
  kernel cannot take (SpQR's 16 columns) is *spread*: each group gets its own kernel group whose
  remaining columns meet zero activations, which costs codes and work, never accuracy.
  3-bit and 2-bit codes sit in the same 4-bit container (shifted to its middle).
* ``int8pack``: 5- to 8-bit codes as int8 ``q - 2**(bits-1)`` per stored group
  (``aten._weight_int8pack_mm``, one call per group) plus the zero-point term as a small dense
  product of per-group activation sums.
* SpQR outliers: a sparse CSR correction (outlier value minus the grid value the kernel
  computes) added to the kernel's output.

Both kernels are fast only with bfloat16 activations on CPU, so activations and statistics are
rounded to bfloat16 inside the kernel (as torchao's CPU layouts do); the name of every layout
says so. ``nbytes()`` is what a layout holds, reported next to the stored bytes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from harness.quant.pack import gather_codes

if TYPE_CHECKING:
    from harness.quant.linear import QuantizedWeight

INT4_GROUPS = (256, 128, 64, 32)
KERNEL_DTYPE = torch.bfloat16


@lru_cache(maxsize=1)
def packed_ops_available() -> bool:
    """True when this torch build has the packed CPU kernels (asked on every forward)."""
    ops = torch.ops.aten
    return all(
        hasattr(ops, name)
        for name in (
            "_weight_int4pack_mm_for_cpu",
            "_convert_weight_to_int4pack_for_cpu",
            "_weight_int8pack_mm",
        )
    )


def _tensor_bytes(*tensors: Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _padded_codes(qw: QuantizedWeight) -> Tensor:
    """Codes ``[rows, n_groups * group_size]`` (stored order), zero codes in the padding."""
    codes = qw.unpacked_codes()
    pad = qw.n_groups * qw.group_size - qw.shape[1]
    return torch.nn.functional.pad(codes, (0, pad)) if pad else codes


def _pad_x(x: Tensor, width: int) -> Tensor:
    pad = width - x.shape[-1]
    return torch.nn.functional.pad(x, (0, pad)) if pad else x


@dataclass
class Int4Layout:
    """Codes in torch's int4 CPU container; see the module docstring."""

    packed: Tensor
    scales_zeros: Tensor  # [kernel_cols / group, rows, 2] in KERNEL_DTYPE
    group: int  # kernel group size
    stored_group: int
    stored_width: int  # x is zero-padded to this width (stored order) before the kernel
    spread: bool  # each stored group occupies one kernel group of ``group`` columns
    shift: int  # added to every code (codes narrower than 4 bits sit mid-container)

    @classmethod
    def build(cls, qw: QuantizedWeight) -> Int4Layout | None:
        """The layout for ``qw``, or None when the kernel cannot represent it exactly."""
        gs, n_groups = qw.group_size, qw.n_groups
        if qw.bits > 4:
            return None
        splits = [g for g in INT4_GROUPS if gs % g == 0]
        # a kernel group that also divides the width needs no zero padding (g128 on 576 inputs
        # runs as g64 with each scale and zero repeated: fewer bytes than padding to 640)
        exact = [g for g in splits if qw.shape[1] % g == 0]
        if splits:
            group, spread = (exact or splits)[0], False
        elif gs < INT4_GROUPS[0]:  # smallest kernel group that holds one stored group
            group, spread = next(g for g in reversed(INT4_GROUPS) if g >= gs), True
        else:
            return None
        # narrower codes move to the middle of the container: the bf16 zero term
        # scale * (8 - shift - z) is then small, and so is its rounding error
        shift = 8 - 2 ** (qw.bits - 1)
        codes = _padded_codes(qw).to(torch.int32) + shift
        scale, zero = qw.scale_values(), qw.zero_values()  # [n_groups, rows]
        shifted = scale * (8.0 - shift - zero)
        sz = torch.stack([scale, shifted], dim=-1)
        if spread:
            codes = codes.view(qw.shape[0], n_groups, gs)
            codes = torch.nn.functional.pad(codes, (0, group - gs)).reshape(qw.shape[0], -1)
            width = n_groups * gs
        else:  # kernel groups cover the columns, the last one zero-padded if it must be
            kernel_groups = -(-qw.shape[1] // group)
            width = kernel_groups * group
            codes = codes[:, :width]
            sz = sz.repeat_interleave(gs // group, dim=0)[:kernel_groups]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        sz = sz.to(KERNEL_DTYPE).contiguous()
        return cls(packed, sz, group, gs, width, spread, shift)

    @property
    def name(self) -> str:
        how = f"spread g{self.stored_group}->g{self.group}" if self.spread else f"g{self.group}"
        return f"aten._weight_int4pack_mm_for_cpu ({how}, bf16 activations)"

    def matmul(self, x: Tensor) -> Tensor:
        """``x[M, in]`` (stored column order) times the weight, in float32 ``[M, out]``."""
        x = _pad_x(x, self.stored_width)
        if self.spread:
            m = x.shape[0]
            x = x.view(m, -1, self.stored_group)
            x = torch.nn.functional.pad(x, (0, self.group - self.stored_group)).reshape(m, -1)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(KERNEL_DTYPE).contiguous(), self.packed, self.group, self.scales_zeros
        )
        return y.float()

    def grid_values(self, rows: Tensor, cols: Tensor, qw: QuantizedWeight) -> Tensor:
        """What the kernel computes at stored positions ``(rows, cols)`` (for outlier fixes)."""
        flat = rows.long() * qw.shape[1] + cols.long()
        codes = gather_codes(qw.codes, qw.bits, flat).float() + self.shift
        g = cols.long() // self.stored_group
        kernel_group = g if self.spread else cols.long() // self.group
        sz = self.scales_zeros[kernel_group, rows.long()].float()
        return (codes - 8.0) * sz[:, 0] + sz[:, 1]

    def nbytes(self) -> int:
        return _tensor_bytes(self.packed, self.scales_zeros)


@dataclass
class Int8Layout:
    """5- to 8-bit codes as int8 ``q - 2**(bits-1)``, one int8 matmul per stored group."""

    codes: Tensor  # [n_groups, rows, width] int8 (width: group padded to a multiple of 32)
    scales: Tensor  # [n_groups, rows] KERNEL_DTYPE
    offsets: Tensor  # [rows, n_groups] float32: scale * (2**(bits-1) - zero)
    group: int

    @classmethod
    def build(cls, qw: QuantizedWeight) -> Int8Layout:
        rows, gs = qw.shape[0], qw.group_size
        center = 2 ** (qw.bits - 1)  # centred codes keep the bf16 scale's error small
        codes = (_padded_codes(qw).to(torch.int16) - center).to(torch.int8)
        codes = codes.view(rows, qw.n_groups, gs).transpose(0, 1)
        # the kernel misbehaves on odd widths; padded columns meet zero activations
        codes = torch.nn.functional.pad(codes, (0, -gs % 32)).contiguous()
        scale, zero = qw.scale_values(), qw.zero_values()
        offsets = (scale * (center - zero)).t().contiguous()
        return cls(codes, scale.to(KERNEL_DTYPE).contiguous(), offsets, gs)

    @property
    def name(self) -> str:
        return f"aten._weight_int8pack_mm (per group of {self.group}, bf16 activations)"

    def matmul(self, x: Tensor) -> Tensor:
        n_groups, width = self.codes.shape[0], self.codes.shape[2]
        x = _pad_x(x.float(), n_groups * self.group).view(x.shape[0], n_groups, self.group)
        y = x.sum(-1) @ self.offsets.t()
        xk = torch.nn.functional.pad(x, (0, width - self.group)).to(KERNEL_DTYPE)
        for g in range(n_groups):
            part = torch.ops.aten._weight_int8pack_mm(
                xk[:, g].contiguous(), self.codes[g], self.scales[g]
            )
            y += part.float()
        return y

    def grid_values(self, rows: Tensor, cols: Tensor, qw: QuantizedWeight) -> Tensor:
        g = cols.long() // self.group
        q = self.codes[g, rows.long(), cols.long() % self.group].float()
        return q * self.scales[g, rows.long()].float() + self.offsets[rows.long(), g]

    def nbytes(self) -> int:
        return _tensor_bytes(self.codes, self.scales, self.offsets)


@dataclass
class PackedLinear:
    """A runtime layout plus what the kernel does not cover: act-order and outliers."""

    layout: Int4Layout | Int8Layout
    perm: Tensor | None  # stored column j is original column perm[j]
    correction: Tensor | None  # sparse CSR [rows, cols], original column order, float32

    @classmethod
    def build(cls, qw: QuantizedWeight) -> PackedLinear | None:
        """Convert ``qw`` (on CPU); None when no packed layout represents it exactly."""
        if qw.codes.device.type != "cpu" or not packed_ops_available():
            return None
        layout = Int4Layout.build(qw) if qw.bits <= 4 else Int8Layout.build(qw)
        if layout is None:
            return None
        perm = None if qw.perm is None else qw.perm.long()
        return cls(layout, perm, _correction(qw, layout))

    @property
    def name(self) -> str:
        extra = " + CSR outlier correction" if self.correction is not None else ""
        return self.layout.name + extra

    def matmul(self, x: Tensor) -> Tensor:
        """``x[..., in] @ W.T`` in x's dtype (no bias)."""
        lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
        xs = x2 if self.perm is None else x2.index_select(-1, self.perm)
        y = self.layout.matmul(xs)
        if self.correction is not None:
            y += (self.correction @ x2.float().t()).t()
        return y.to(x.dtype).reshape(*lead, y.shape[-1])

    def nbytes(self) -> int:
        """Bytes this layout holds (codes, statistics, outlier correction, permutation)."""
        total = self.layout.nbytes() + _tensor_bytes(self.perm)
        if self.correction is not None:
            c = self.correction
            total += _tensor_bytes(c.crow_indices(), c.col_indices(), c.values())
        return total


def _correction(qw: QuantizedWeight, layout: Int4Layout | Int8Layout) -> Tensor | None:
    """Sparse ``outlier - kernel grid value`` at every outlier (original column order)."""
    if not qw.num_outliers:
        return None
    rows_n, cols_n = qw.shape
    counts = qw.outlier_rowptr.long().diff()
    rows = torch.repeat_interleave(torch.arange(rows_n), counts)
    cols = qw.outlier_cols.long()  # original order
    stored_cols = cols if qw.perm is None else torch.argsort(qw.perm.long())[cols]
    delta = qw.outlier_values.float() - layout.grid_values(rows, stored_cols, qw)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            qw.outlier_rowptr.to(torch.int32),
            cols.to(torch.int32),
            delta,
            size=(rows_n, cols_n),
            check_invariants=True,
        )
