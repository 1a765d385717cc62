"""The host allocator's settings for the two kinds of measurement a cell makes.

glibc serves an allocation at or above its *mmap threshold* with a mapping of its own, handed
back to the system when freed; smaller ones come from the heap, whose free top is handed back
once it exceeds the *trim threshold*. Memory and speed want opposite settings:

- ``memory``: mmap threshold 128 KiB (trim threshold at glibc's default 128 KiB). Freed tensors
  leave the process at once, so the resident high-water mark follows live tensors; that is what
  every phase's ``*_peak_bytes`` measures. The price is a fresh mapping, zero-filled page by
  page, for every large temporary: code that allocates a dequantized weight per matmul decodes
  up to 5x slower.
- ``timing``: mmap threshold 32 MiB, trim threshold 64 MiB: glibc's own ceiling, the state a
  long-running process's dynamic thresholds settle at once it has freed large blocks. Large
  temporaries are reused from the heap, as in a warmed-up serving process.

A cell runs in ``memory`` and :func:`timing_window` switches to ``timing`` around its timed
calls only, so warmups and tracked phases share the heap state a tracked phase needs: glibc
serves a large request from a free heap block before it maps one, so blocks that a timed call
left in the heap would be reused, and kept resident, inside a later tracked phase. Each
workload therefore measures its memory first and times afterwards, and every tracked phase
reports the free heap it started with (:func:`heap_free_bytes`, after the trim): large when
work under the timing settings ran before it in the same process. Load and quantization times
are taken inside their tracked phases, with the memory settings, and say so.
glibc's
dynamic adjustment stops at the first explicit setting; a fresh process that has not freed
large blocks yet can run such code slower than the timed figure.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal

Mode = Literal["memory", "timing"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mode -> (mmap threshold, trim threshold) in bytes
SETTINGS: dict[str, tuple[int, int]] = {
    "memory": (128 * 1024, 128 * 1024),
    "timing": (32 * 1024 * 1024, 64 * 1024 * 1024),
}

_current: Mode | None = None


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):  # not glibc
        return False


def use(mode: Mode) -> bool:
    """Switch the allocator to ``mode``'s thresholds; False where glibc is absent."""
    global _current
    mmap_at, trim_at = SETTINGS[mode]
    ok = _mallopt(_M_MMAP_THRESHOLD, mmap_at) and _mallopt(_M_TRIM_THRESHOLD, trim_at)
    _current = mode if ok else None
    return ok


def current() -> Mode | None:
    """The mode last set here (None before any, or where the allocator is not glibc)."""
    return _current


def describe(mode: Mode) -> str:
    """The settings of ``mode`` as a row's method says them."""
    if _current is None:
        return "allocator defaults (not glibc, or never set)"
    mmap_at, trim_at = SETTINGS[mode]
    return f"glibc mmap threshold {_size(mmap_at)}, trim threshold {_size(trim_at)}"


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


@contextmanager
def _window(mode: Mode) -> Iterator[None]:
    before = _current
    use(mode)
    try:
        yield
    finally:
        use(before or "timing")  # never set before: the settings nearest glibc's own


def memory_window() -> AbstractContextManager[None]:
    """The ``memory`` settings for the body (a tracked phase), the previous ones after it."""
    return _window("memory")


def timing_window() -> AbstractContextManager[None]:
    """The ``timing`` settings for the body (timed calls), the previous ones after it."""
    return _window("timing")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def heap_free_bytes() -> int | None:
    """Bytes in free blocks of glibc's heap (``mallinfo2().fordblks``): what allocations may
    reuse before the heap grows or a block is mapped; None where glibc lacks ``mallinfo2``."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        info = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    info.restype = _MallInfo2
    return int(info().fordblks)
