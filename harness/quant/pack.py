"""Bit packing of small unsigned integer codes.

Codes of ``bits`` bits (1..8) are packed as a dense bit stream: every run of 8 codes
occupies exactly ``bits`` bytes, so the stored size is ``ceil(n / 8) * bits`` bytes for
``n`` codes whatever the bit width (3-bit codes do not waste space the way a
"10 codes per int32" layout would). The stream is returned either as ``uint8`` bytes
or reinterpreted as ``int32`` words (zero-padded to a multiple of 4 bytes).

The logical shape is not part of the packed tensor; callers keep it (``PackedCodes``
does so for convenience).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_CODES_PER_RUN = 8


def packed_nbytes(numel: int, bits: int) -> int:
    """Number of bytes the uint8 packing of ``numel`` codes occupies."""
    _check_bits(bits)
    return -(-numel // _CODES_PER_RUN) * bits


def pack(codes: Tensor, bits: int, word_dtype: torch.dtype = torch.uint8) -> Tensor:
    """Pack integer codes in ``[0, 2**bits)`` (any shape) into a 1-D word tensor.

    Raises if a code does not fit: silent truncation would corrupt the weights.
    """
    _check_bits(bits)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits} bits")
    pad = (-flat.numel()) % _CODES_PER_RUN
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    runs = flat.view(-1, _CODES_PER_RUN)
    shifts = torch.arange(_CODES_PER_RUN, device=flat.device, dtype=torch.int64) * bits
    # each run of 8 codes holds at most 64 bits; int64 wrap-around is harmless
    # because bytes are extracted with a mask below
    merged = (runs << shifts).sum(dim=1, keepdim=True)
    byte_shifts = torch.arange(bits, device=flat.device, dtype=torch.int64) * 8
    stream = ((merged >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return _to_words(stream, word_dtype)


def unpack(words: Tensor, bits: int, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Inverse of :func:`pack`: returns ``uint8`` codes with the given logical shape."""
    _check_bits(bits)
    numel = 1
    for size in shape:
        numel *= int(size)
    nbytes = packed_nbytes(numel, bits)
    stream = words.reshape(-1).view(torch.uint8)[:nbytes]
    unpack_fn = _unpack_byte_aligned if 8 % bits == 0 else _unpack_runs
    codes = unpack_fn(stream, bits)
    return codes.reshape(-1)[:numel].to(torch.uint8).reshape(tuple(shape))


def _unpack_byte_aligned(stream: Tensor, bits: int) -> Tensor:
    """Bit widths dividing 8 never straddle bytes: shift and mask in uint8 (cheapest path)."""
    if bits == 8:
        return stream.clone()  # never alias the packed buffer
    shifts = torch.arange(0, 8, bits, device=stream.device, dtype=torch.uint8)
    return (stream.unsqueeze(-1) >> shifts) & (2**bits - 1)


def _unpack_runs(stream: Tensor, bits: int) -> Tensor:
    """General path: rebuild each run of 8 codes as one integer, then slice it."""
    # a run holds 8 * bits bits: int32 suffices up to 3 bits and halves memory traffic
    dtype = torch.int32 if bits <= 3 else torch.int64
    byte_shifts = torch.arange(bits, device=stream.device, dtype=dtype) * 8
    merged = (stream.to(dtype).view(-1, bits) << byte_shifts).sum(dim=1, keepdim=True, dtype=dtype)
    shifts = torch.arange(_CODES_PER_RUN, device=stream.device, dtype=dtype) * bits
    # narrow first (conversion keeps the low byte), then mask a 4-8x smaller tensor
    codes = (merged >> shifts).to(torch.uint8)
    return codes.bitwise_and_(2**bits - 1)


def gather_codes(words: Tensor, bits: int, index: Tensor) -> Tensor:
    """Codes at flat positions ``index`` of a packed stream, without unpacking the rest.

    Code ``i`` starts at bit ``(i % 8) * bits`` of run ``i // 8`` (``bits`` bytes per
    run) and spans at most two bytes; the fused kernel decodes codes the same way.
    """
    _check_bits(bits)
    stream = words.reshape(-1).view(torch.uint8)
    index = index.long()
    bit = (index % _CODES_PER_RUN) * bits
    byte = (index // _CODES_PER_RUN) * bits + bit // 8
    shift = bit % 8
    lo = stream[byte].long()
    # the next byte is needed only when the code straddles; clamp keeps the read in range
    hi = stream[(byte + 1).clamp(max=stream.numel() - 1)].long()
    hi = torch.where(shift + bits > 8, hi, torch.zeros_like(hi))
    return (((hi << 8) | lo) >> shift) & (2**bits - 1)


@dataclass
class PackedCodes:
    """Packed codes together with the metadata needed to unpack them."""

    words: Tensor
    bits: int
    shape: tuple[int, ...]

    @classmethod
    def from_codes(
        cls, codes: Tensor, bits: int, word_dtype: torch.dtype = torch.uint8
    ) -> PackedCodes:
        return cls(pack(codes, bits, word_dtype), bits, tuple(codes.shape))

    def unpack(self) -> Tensor:
        return unpack(self.words, self.bits, self.shape)

    def nbytes(self) -> int:
        return self.words.numel() * self.words.element_size()


def _to_words(stream: Tensor, word_dtype: torch.dtype) -> Tensor:
    if word_dtype == torch.uint8:
        return stream.clone()  # never alias the packed buffer
    if word_dtype != torch.int32:
        raise ValueError(f"unsupported word dtype {word_dtype}")
    pad = (-stream.numel()) % 4
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    return stream.view(torch.int32)


def _check_bits(bits: int) -> None:
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
