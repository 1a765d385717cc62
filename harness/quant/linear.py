"""Stored format of a quantized weight matrix and the module that computes with it.

``QuantizedWeight`` describes one ``[rows, cols]`` weight (rows = output features):

* ``codes``: ``bits``-wide codes of all weights, packed (``pack.py``), in *stored column
  order* (the act-order permutation, if any, applied);
* ``scale`` / ``zero``: per-row statistics of each group of ``group_size`` stored columns,
  ``[n_groups, rows]`` tables encoded as in ``group_stats.py`` (float16, packed integers, or
  bilevel codes with ``scale2`` / ``zero2`` float16 ``[n_groups, n_runs, 2]`` pairs);
* outliers in CSR form (original column order): float16 values, int16 column indices
  (int32 when ``cols`` > 32767), int32 row pointers; an outlier replaces the grid value;
* ``perm``: stored column ``j`` is original column ``perm[j]``.

Everything is a real tensor so byte counts are measured, not estimated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.quant.group_stats import decode_stat
from harness.quant.pack import pack, unpack

TENSOR_FIELDS = (
    "codes",
    "scale",
    "zero",
    "scale2",
    "zero2",
    "outlier_values",
    "outlier_cols",
    "outlier_rowptr",
    "perm",
)
META_FIELDS = (
    "shape",
    "bits",
    "group_size",
    "scale_bits",
    "zero_bits",
    "stats_group_size",
    "method",
)
_COMPONENTS = {
    "codes": ("codes",),
    "stats": ("scale", "zero"),
    "stats2": ("scale2", "zero2"),
    "outliers": ("outlier_values", "outlier_cols", "outlier_rowptr"),
    "perm": ("perm",),
}


@dataclass
class QuantizedWeight:
    """Quantized weight in its stored form (see module docstring)."""

    shape: tuple[int, int]
    bits: int
    group_size: int
    codes: Tensor
    scale: Tensor
    zero: Tensor
    scale_bits: int = 16
    zero_bits: int = 16
    stats_group_size: int = 0
    scale2: Tensor | None = None
    zero2: Tensor | None = None
    outlier_values: Tensor | None = None
    outlier_cols: Tensor | None = None
    outlier_rowptr: Tensor | None = None
    perm: Tensor | None = None
    method: str = ""

    @classmethod
    def from_codes(cls, codes: Tensor, bits: int, group_size: int, **kwargs) -> QuantizedWeight:
        """Build from unpacked ``codes[rows, cols]`` (stored column order)."""
        shape = (int(codes.shape[0]), int(codes.shape[1]))
        return cls(shape=shape, bits=bits, group_size=group_size, codes=pack(codes, bits), **kwargs)

    @property
    def n_groups(self) -> int:
        return -(-self.shape[1] // self.group_size)

    @property
    def num_outliers(self) -> int:
        return 0 if self.outlier_values is None else int(self.outlier_values.numel())

    @property
    def outlier_fraction(self) -> float:
        return self.num_outliers / (self.shape[0] * self.shape[1])

    def unpacked_codes(self) -> Tensor:
        """``uint8`` codes ``[rows, cols]`` in stored column order."""
        return unpack(self.codes, self.bits, self.shape)

    def scale_values(self) -> Tensor:
        """Float32 scales ``[n_groups, rows]``."""
        return decode_stat(
            self.scale,
            self.scale_bits,
            self.scale2,
            self.n_groups,
            self.shape[0],
            self.stats_group_size,
        )

    def zero_values(self) -> Tensor:
        """Float32 zero points ``[n_groups, rows]``."""
        return decode_stat(
            self.zero,
            self.zero_bits,
            self.zero2,
            self.n_groups,
            self.shape[0],
            self.stats_group_size,
        )

    def g_idx(self) -> Tensor:
        """Group of each *original* column (the GPTQ ``g_idx`` convention)."""
        cols = self.shape[1]
        stored_group = torch.arange(cols, device=self.codes.device) // self.group_size
        if self.perm is None:
            return stored_group
        out = torch.empty_like(stored_group)
        out[self.perm.long()] = stored_group
        return out

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Dense ``[rows, cols]`` weight in original column order."""
        w = self.dequantize_stored(torch.float32)
        if self.perm is not None:
            w = torch.empty_like(w).index_copy_(1, self.perm.long(), w)
        return w.to(dtype)

    def dequantize_stored(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Dense weight in *stored* column order: ``x[..., perm] @ w.T`` is the layer output.

        Skipping the un-permutation of the whole matrix makes the forward pass cheaper.
        """
        rows, cols = self.shape
        groups, gs = self.n_groups, self.group_size
        codes = self.unpacked_codes()
        if groups * gs != cols:
            codes = F.pad(codes, (0, groups * gs - cols))
        # scale * (code - zero), in place: each fresh weight-sized buffer costs a pass
        w = codes.view(rows, groups, gs).float()
        w.sub_(self.zero_values().t().unsqueeze(-1)).mul_(self.scale_values().t().unsqueeze(-1))
        w = w.view(rows, groups * gs)[:, :cols]
        if self.num_outliers:
            counts = self.outlier_rowptr.long().diff()
            row_idx = torch.repeat_interleave(torch.arange(rows, device=w.device), counts)
            col_idx = self.outlier_cols.long()
            if self.perm is not None:
                col_idx = torch.argsort(self.perm.long())[col_idx]
            w[row_idx, col_idx] = self.outlier_values.float()
        return w.to(dtype)

    def stored_bytes(self) -> dict[str, int]:
        """Bytes of each stored component: codes, stats, stats2, outliers, perm."""
        out = {}
        for comp, names in _COMPONENTS.items():
            total = 0
            for name in names:
                t = getattr(self, name)
                if t is not None:
                    total += t.numel() * t.element_size()
            out[comp] = total
        return out

    def tensors(self) -> dict[str, Tensor]:
        """The stored tensors (absent optional parts omitted)."""
        return {n: getattr(self, n) for n in TENSOR_FIELDS if getattr(self, n) is not None}

    def meta(self) -> dict:
        """JSON-able description needed, with :meth:`tensors`, to rebuild the weight."""
        meta = {n: getattr(self, n) for n in META_FIELDS}
        meta["shape"] = list(self.shape)
        return meta

    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """``(tensors, meta)``: a flat tensor dict for safetensors plus a small JSON dict."""
        return {k: v.contiguous() for k, v in self.tensors().items()}, self.meta()

    @classmethod
    def from_state_dict(cls, tensors: dict[str, Tensor], meta: dict) -> QuantizedWeight:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in meta.items() if k in known}
        kwargs["shape"] = tuple(int(s) for s in meta["shape"])
        kwargs.update({k: v for k, v in tensors.items() if k in TENSOR_FIELDS})
        return cls(**kwargs)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, t in self.tensors().items():
            kwargs[name] = t.to(device)
        return QuantizedWeight(**kwargs)


def formula_bits_spqr(
    bits: int,
    beta1: int,
    beta2: int,
    qq_scale_bits: int,
    qq_zero_bits: int,
    outlier_fraction: float,
) -> float:
    """Average bits per weight of SpQR storage as published (claims B.7)."""
    return (
        bits + (qq_scale_bits + qq_zero_bits) / beta1 + 64 / (beta1 * beta2) + 32 * outlier_fraction
    )


def measured_bits(qw: QuantizedWeight) -> float:
    """Average bits per weight actually stored (all components)."""
    return 8 * sum(qw.stored_bytes().values()) / (qw.shape[0] * qw.shape[1])


KERNEL_ENV = "HARNESS_QUANT_KERNEL"
KERNELS = ("auto", "torch", "packed", "triton")


def matmul_kernel(x: Tensor) -> str:
    """Which forward path a :class:`QuantLinear` takes for input ``x``.

    ``auto`` (default): the fused Triton kernel for CUDA inputs when triton is installed, torch's
    packed CPU kernels (``cpu_kernels.py``) for CPU inputs when this torch build has them, else
    dequantize + matmul in torch. ``HARNESS_QUANT_KERNEL=torch|packed|triton`` forces one
    (``triton`` on CPU tensors needs ``TRITON_INTERPRET=1``: a correctness check, slow).
    """
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise ValueError(f"{KERNEL_ENV}={choice!r} is not one of {', '.join(KERNELS)}")
    from harness.quant.cpu_kernels import packed_ops_available
    from harness.quant.triton_linear import triton_available

    if choice == "triton":
        if not triton_available():
            raise ValueError(f"{KERNEL_ENV}=triton but triton is not installed")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"{KERNEL_ENV}=triton on a {x.device.type} tensor needs a CUDA device, "
                "or TRITON_INTERPRET=1 (set before triton is imported) to interpret it"
            )
    if choice == "packed" and (x.device.type != "cpu" or not packed_ops_available()):
        raise ValueError(
            f"{KERNEL_ENV}=packed needs CPU tensors and a torch build with the packed int4/int8 "
            f"CPU kernels (input on {x.device.type}, torch {torch.__version__})"
        )
    if choice != "auto":
        return choice
    if x.is_cuda:
        return "triton" if triton_available() else "torch"
    return "packed" if x.device.type == "cpu" and packed_ops_available() else "torch"


TORCH_PATH = "torch: dense weight rebuilt per forward, then matmul"
TRITON_PATH = "Triton kernel, dequantization fused into the matmul"


class _RecomputeWeight(torch.autograd.Function):
    """Matmul whose backward rebuilds the weight instead of keeping it.

    Autograd would otherwise save the dense weight each forward rebuilds, so a LoRA on quantized
    layers would hold a dense copy of the model for backward. The weight is frozen (a buffer), so
    only the input gradient is needed.
    """

    @staticmethod
    def forward(ctx, x: Tensor, module: QuantLinear, kernel: str) -> Tensor:
        ctx.module = module
        return module._matmul(x, kernel)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        weight = ctx.module.quantized_weight().dequantize(dtype=grad.dtype)
        return grad @ weight, None, None


class QuantLinear(nn.Module):
    """``nn.Linear`` replacement holding only the quantized format as buffers.

    On CUDA the forward runs a Triton kernel that dequantizes tile by tile inside the
    matmul (``triton_linear.py``); on CPU the codes are converted once into a packed runtime
    layout for torch's int4/int8 CPU kernels (``cpu_kernels.py``); otherwise the dense weight is
    rebuilt on every forward and dropped afterwards. The runtime layout is held next to the
    stored buffers and counted by :meth:`runtime_bytes`. Float16 buffers keep their dtype when
    the module is cast (e.g. ``model.to(torch.bfloat16)``), because recasting stored statistics
    would change them. Backward recomputes the weight (:class:`_RecomputeWeight`).
    """

    def __init__(self, qw: QuantizedWeight, bias: Tensor | None = None) -> None:
        super().__init__()
        self.qmeta = qw.meta()
        self.out_features, self.in_features = qw.shape
        for name in TENSOR_FIELDS:
            self.register_buffer(name, getattr(qw, name))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._packed = None  # PackedLinear, built by prepare_packed()
        self._packed_tried = False

    def quantized_weight(self) -> QuantizedWeight:
        """View of the buffers as a :class:`QuantizedWeight` (no copy)."""
        tensors = {n: getattr(self, n) for n in TENSOR_FIELDS if getattr(self, n) is not None}
        return QuantizedWeight.from_state_dict(tensors, self.qmeta)

    def prepare_packed(self) -> object | None:
        """Convert to the packed CPU layout once (None when no packed layout fits)."""
        if not self._packed_tried:
            from harness.quant.cpu_kernels import PackedLinear

            self._packed = PackedLinear.build(self.quantized_weight())
            self._packed_tried = True
        return self._packed

    def runtime_layout_bytes(self) -> int:
        """Bytes the packed runtime layout holds beside the stored tensors (0 until built)."""
        return 0 if self._packed is None else self._packed.nbytes()

    def kernel_name(self, device: torch.device | str) -> str:
        """The forward path an input on ``device`` takes, named as a cell records it."""
        kernel = matmul_kernel(torch.empty(0, device=device))
        if kernel == "triton":
            return TRITON_PATH
        packed = self.prepare_packed() if kernel == "packed" else None
        return TORCH_PATH if packed is None else packed.name

    def runtime_bytes(self, device: torch.device | str) -> int:
        """Bytes of weights the forward on ``device`` reads: the packed layout when it runs,
        else the stored tensors (rebuilt into a transient dense weight per call on the torch
        path, read directly by the Triton kernel)."""
        kernel = matmul_kernel(torch.empty(0, device=device))
        packed = self.prepare_packed() if kernel == "packed" else None
        if packed is not None:
            return packed.nbytes()
        return sum(t.numel() * t.element_size() for _, t, _, _ in self.footprint_entries())

    def _matmul(self, x: Tensor, kernel: str) -> Tensor:
        """``x @ W.T`` without bias through ``kernel`` (``torch`` or ``packed``)."""
        packed = self.prepare_packed() if kernel == "packed" else None
        if packed is not None:
            return packed.matmul(x)
        qw = self.quantized_weight()
        if qw.perm is not None:
            x = x.index_select(-1, qw.perm.long())
        return F.linear(x, qw.dequantize_stored(dtype=x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        kernel = matmul_kernel(x)
        if kernel == "triton":
            from harness.quant.triton_linear import fused_linear

            return fused_linear(x, self.quantized_weight(), self.bias)
        if torch.is_grad_enabled() and x.requires_grad:
            y = _RecomputeWeight.apply(x, self, kernel)
        else:
            y = self._matmul(x, kernel)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def footprint_entries(self) -> Iterator[tuple[str, Tensor, str, int]]:
        """``(name, tensor, category, logical params)`` of every stored tensor.

        The footprint workload uses this to count the packed bytes really held: the codes
        represent all ``out x in`` weights; statistics, outliers and the permutation are
        quantization state representing none.
        """
        for name in TENSOR_FIELDS:
            t = getattr(self, name)
            if t is None:
                continue
            if name == "codes":
                yield name, t, "quantized_weights", self.out_features * self.in_features
            else:
                yield name, t, "quant_state", 0
        if self.bias is not None:
            yield "bias", self.bias, "biases", self.bias.numel()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> QuantLinear:
        kept = {
            n: b
            for n, b in self._buffers.items()
            if n != "bias" and b is not None and b.is_floating_point()
        }
        device = self.codes.device
        super()._apply(fn, recurse)
        if self.codes.device != device:  # the runtime layout is rebuilt for the new device
            self._packed, self._packed_tried = None, False
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def extra_repr(self) -> str:
        m = self.qmeta
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={m['bits']}, group_size={m['group_size']}, method={m['method']!r}"
        )
