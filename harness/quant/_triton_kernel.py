"""The Triton kernel behind :func:`harness.quant.triton_linear.fused_linear`.

Kept in its own module so that importing the package never imports triton.
Layout reminders (see ``linear.py``, ``pack.py``, ``group_stats.py``):

* weight code ``(n, k)`` (row ``n``, stored column ``k``) is code ``n * K + k`` of the
  packed stream; code ``i`` starts at bit ``(i % 8) * bits`` of byte run ``i // 8``;
* statistic ``(g, n)`` is entry ``g * N + n`` of its table; a bilevel entry is
  ``scale2 * (code - zero2)`` with the float16 pair of run ``n // stats_group_size``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

if TYPE_CHECKING:  # linear.py imports this module; only the type is needed here
    from harness.quant.linear import QuantizedWeight


@triton.jit
def _code(stream, idx, mask, BITS: tl.constexpr):
    """Unsigned ``BITS``-wide codes at flat positions ``idx`` of a packed byte stream."""
    bit = (idx % 8) * BITS
    byte = (idx // 8) * BITS + bit // 8
    shift = bit % 8
    lo = tl.load(stream + byte, mask=mask, other=0).to(tl.int32)
    if 8 % BITS == 0:
        word = lo  # widths dividing 8 never straddle a byte
    else:
        hi = tl.load(stream + byte + 1, mask=mask & (shift + BITS > 8), other=0).to(tl.int32)
        word = lo | (hi << 8)
    return (word >> shift) & ((1 << BITS) - 1)


@triton.jit
def _stat(data, second, g, n, N, n_runs, run_rows, mask, BITS: tl.constexpr, BILEVEL: tl.constexpr):
    """Float32 statistic ``(g, n)`` decoded from float16, packed codes or bilevel codes."""
    idx = g * N + n
    if BITS >= 16:
        value = tl.load(data + idx, mask=mask, other=0.0).to(tl.float32)
    else:
        value = _code(data, idx, mask, BITS).to(tl.float32)
        if BILEVEL:
            pair = (g * n_runs + n // run_rows) * 2
            s2 = tl.load(second + pair, mask=mask, other=0.0).to(tl.float32)
            z2 = tl.load(second + pair + 1, mask=mask, other=0.0).to(tl.float32)
            value = s2 * (value - z2)
    return value


@triton.jit
def _fused_dequant_matmul(
    x, codes, scale, scale2, zero, zero2, y,
    M, N, K, group_size, n_runs, run_rows,
    stride_xm, stride_ym,
    BITS: tl.constexpr,
    SCALE_BITS: tl.constexpr,
    SCALE_BILEVEL: tl.constexpr,
    ZERO_BITS: tl.constexpr,
    ZERO_BILEVEL: tl.constexpr,
    IEEE: tl.constexpr,
    GROUP_ALIGNED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x_mask = (rm[:, None] < M) & (rk[None, :] < K)
        xt = tl.load(x + rm[:, None] * stride_xm + rk[None, :], mask=x_mask, other=0.0)
        w_mask = (rk[:, None] < K) & (rn[None, :] < N)
        n2 = rn[None, :]
        code = _code(codes, n2.to(tl.int64) * K + rk[:, None], w_mask, BITS).to(tl.float32)
        if GROUP_ALIGNED:  # the tile lies in one group: one row of statistics serves it
            g1 = k0 // group_size
            n_mask = rn < N
            s = _stat(scale, scale2, g1, rn, N, n_runs, run_rows, n_mask, SCALE_BITS, SCALE_BILEVEL)
            z = _stat(zero, zero2, g1, rn, N, n_runs, run_rows, n_mask, ZERO_BITS, ZERO_BILEVEL)
            s, z = s[None, :], z[None, :]
        else:
            g2 = rk[:, None] // group_size
            s = _stat(scale, scale2, g2, n2, N, n_runs, run_rows, w_mask, SCALE_BITS, SCALE_BILEVEL)
            z = _stat(zero, zero2, g2, n2, N, n_runs, run_rows, w_mask, ZERO_BITS, ZERO_BILEVEL)
        wt = tl.where(w_mask, s * (code - z), 0.0).to(xt.dtype)
        if IEEE:
            acc += tl.dot(xt, wt, input_precision="ieee")
        else:
            acc += tl.dot(xt, wt)
    y_mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(y + rm[:, None] * stride_ym + rn[None, :], acc.to(y.dtype.element_ty), mask=y_mask)


_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
BLOCK_N = 64


def launch(x: Tensor, qw: QuantizedWeight) -> Tensor:
    """``x[M, K] @ grid_weight.T`` in stored column order, output in ``x.dtype``."""
    rows, cols = qw.shape
    m = x.shape[0]
    y = torch.empty(m, rows, device=x.device, dtype=x.dtype)
    if m == 0:
        return y  # an empty grid is not a launch
    meta = _constexprs(qw, x.dtype, m, x.is_cuda)
    grid = (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(rows, BLOCK_N))
    _fused_dequant_matmul[grid](
        *_pointers(x, qw, y), *_sizes(qw, m), x.stride(0), y.stride(0), **meta
    )
    return y


def compile_for(qw: QuantizedWeight, dtype: torch.dtype, m: int, arch: int):
    """Compile the kernel :func:`launch` would run, for CUDA compute capability ``arch``.

    Needs no GPU (Triton ships the CUDA compiler), so CPU-only CI checks that the kernel
    really builds for the GPUs it targets, beyond what the interpreter can tell.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(_fused_dequant_matmul.arg_names)
    meta = _constexprs(qw, dtype, m, cuda=True)
    stat = {
        n: "*fp16" if b >= 16 else "*u8"
        for n, b in (("scale", qw.scale_bits), ("zero", qw.zero_bits))
    }
    signature = {n: "i32" for n in names}
    signature.update(
        x=_POINTER[dtype], y=_POINTER[dtype], codes="*u8", scale2="*fp16", zero2="*fp16", **stat
    )
    signature.update({n: "constexpr" for n in meta})
    constexprs = {(names.index(n),): v for n, v in meta.items()}
    source = ASTSource(_fused_dequant_matmul, signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32))


def _constexprs(qw: QuantizedWeight, dtype: torch.dtype, m: int, cuda: bool) -> dict:
    # a K tile inside one group loads its statistics once (GPTQ g128, SpQR beta1 = 16)
    block_k = 16 if qw.group_size % 32 and qw.group_size % 16 == 0 else 32
    return {
        "BITS": qw.bits,
        "SCALE_BITS": qw.scale_bits,
        "SCALE_BILEVEL": qw.scale2 is not None,
        "ZERO_BITS": qw.zero_bits,
        "ZERO_BILEVEL": qw.zero2 is not None,
        "IEEE": _ieee(dtype, cuda),
        "GROUP_ALIGNED": qw.group_size % block_k == 0,
        "BLOCK_M": 16 if m <= 16 else 64,  # one decode step fills a 16-row tile
        "BLOCK_N": BLOCK_N,
        "BLOCK_K": block_k,
    }


def _pointers(x: Tensor, qw: QuantizedWeight, y: Tensor) -> tuple[Tensor, ...]:
    """x, codes, scale, scale2, zero, zero2, y as the kernel reads them."""
    dummy = qw.scale  # stands in for an absent second level (never read)
    return (
        x,
        _bytes(qw.codes),
        _stat_arg(qw.scale, qw.scale_bits),
        _pairs(qw.scale2, dummy),
        _stat_arg(qw.zero, qw.zero_bits),
        _pairs(qw.zero2, dummy),
        y,
    )


def _sizes(qw: QuantizedWeight, m: int) -> tuple[int, ...]:
    """M, N, K, group_size, n_runs, run_rows."""
    rows, cols = qw.shape
    return m, rows, cols, qw.group_size, _n_runs(qw), max(qw.stats_group_size, 1)


def _bytes(t: Tensor) -> Tensor:
    return t.reshape(-1).view(torch.uint8)


def _stat_arg(t: Tensor, bits: int) -> Tensor:
    return t.reshape(-1) if bits >= 16 else _bytes(t)


def _pairs(second: Tensor | None, dummy: Tensor) -> Tensor:
    return dummy if second is None else second.reshape(-1)


def _n_runs(qw: QuantizedWeight) -> int:
    for second in (qw.scale2, qw.zero2):
        if second is not None:
            return int(second.shape[-2])
    return 1


def _ieee(dtype: torch.dtype, cuda: bool) -> bool:
    """Full fp32 products unless torch itself would use TF32 for this float32 matmul."""
    return dtype == torch.float32 and not (cuda and torch.backends.cuda.matmul.allow_tf32)
