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

A cell runs in ``timing`` and :func:`memory_window` switches to ``memory`` for a tracked phase
and back after it, so a workload times its calls outside every memory window, never inside one.
glibc's dynamic adjustment stops at the first explicit setting; a fresh process that has not
freed large blocks yet can run such code slower than either figure.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
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
def memory_window() -> Iterator[None]:
    """The ``memory`` settings for the body, ``timing`` after it (even when it raises)."""
    use("memory")
    try:
        yield
    finally:
        use("timing")
